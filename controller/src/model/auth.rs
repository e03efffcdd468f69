//! The route's authentication: JWT providers and API keys become the auth filter's
//! [`AuthConfig`]; providers of opaque tokens become the filter's `introspection` and the
//! sessions service's [`ProviderSettings`] (with the client secret, which the filter never
//! gets); [`RouteAuth`] then gives each rule its requirement (see `requirements.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nexus_config::auth::{self, AuthConfig};
use nexus_config::Validate;

use nexus_sessions_service::introspect::{Kind, ProviderSettings};
use nexus_sessions_service::signin::OidcSettings;

use crate::crd::{ApiKeysSpec, AuthSpec, ProviderSpec, SessionsSpec, TokenLocation};

use super::problem::Ctx;
use super::secrets::{self, SecretLookup};
use super::sign_in;

/// JWKS refresh period when `jwksRefreshSeconds` is not given.
const DEFAULT_JWKS_REFRESH_S: u64 = 600;
const JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;
const CLOCK_SKEW_S: u64 = 60;
const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// An [`AuthConfig`] with the defaults the filter applies when parsing (serde defaults, which
/// may differ from `Default`).
pub fn auth_defaults() -> AuthConfig {
    serde_json::from_str("{}").unwrap_or_default()
}

/// Istio's outbound cluster for a URI: `outbound|443||id.example.com`.
pub fn istio_cluster_for(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (authority, default_port),
    };
    if host.is_empty() {
        return None;
    }
    Some(format!("outbound|{port}||{host}"))
}

/// Provider names are per route; in the merged auth config they are `<route>.<provider>`.
pub(super) fn provider_key(route: &str, provider: &str) -> String {
    format!("{route}.{provider}")
}

/// An opaque-token provider's name in the filter and the sessions service:
/// `<namespace>.<route>.<provider>` (the service is shared by every namespace's routes).
pub fn introspection_key(namespace: &str, route: &str, provider: &str) -> String {
    format!("{namespace}.{route}.{provider}")
}

/// A route's auth config so far (rules are added as they compile), and what rule requirements
/// are checked against.
pub(super) struct RouteAuth {
    pub(super) config: AuthConfig,
    pub(super) route: String,
    /// JWT provider names as the route spells them (unprefixed).
    pub(super) providers: BTreeSet<String>,
    pub(super) namespace: String,
    /// Opaque-token provider names as the route spells them.
    pub(super) opaque: BTreeSet<String>,
    /// What the sessions service needs to check them, by [`introspection_key`].
    pub(super) introspection: BTreeMap<String, ProviderSettings>,
    pub(super) has_keys: bool,
    pub(super) has_sessions: bool,
    /// The provider browsers sign in with, for the sessions service (client secret included).
    pub(super) sign_in: Option<OidcSettings>,
    /// The requirement of rules that set none: `defaultRequirement`, else allow.
    pub(super) default: auth::Requirement,
}

/// Compiles `spec.auth`: providers, then API keys, then the default requirement.
pub(super) fn compile(
    cx: &mut Ctx,
    spec: Option<&AuthSpec>,
    route: &str,
    secrets: &dyn SecretLookup,
) -> RouteAuth {
    let spec = spec.cloned().unwrap_or_default();
    let mut config = auth_defaults();
    let mut names = BTreeSet::new();
    let mut providers = BTreeSet::new();
    let mut opaque = Opaque::default();
    let mut sign_in = None;
    for (i, given) in spec.providers.iter().enumerate() {
        let preset = given.preset.map(|preset| preset.apply(given));
        let p = preset.as_ref().unwrap_or(given);
        let at = format!("$.spec.auth.providers[{i}]");
        if p.name.is_empty() || !names.insert(p.name.clone()) {
            cx.bad(
                format!("{at}.name"),
                format!("provider name {:?} is empty or not unique", p.name),
            );
        }
        if let Some(s) = &p.sign_in {
            let cookie = spec.sessions.as_ref().and_then(|s| s.cookie.clone());
            let cookie = cookie.unwrap_or_else(|| auth::Sessions::with_cluster("").cookie);
            let settings = sign_in::compile(cx, p, s, &cookie, &at, secrets);
            if sign_in.replace(settings).is_some() {
                cx.bad(
                    format!("{at}.signIn"),
                    "only one provider of a route signs in",
                );
            }
            if p.jwks_uri.is_none() && p.jwks.is_none() {
                continue; // Not also a JWT provider: its keys serve the sign-in alone.
            }
        }
        if p.introspection.is_some() || p.github.is_some() {
            let key = introspection_key(cx.ns, route, &p.name);
            opaque.add(cx, p, key, &at, secrets);
        } else {
            providers.insert(p.name.clone());
            let provider = provider(cx, p, &at);
            config
                .providers
                .insert(provider_key(route, &p.name), provider);
        }
    }
    config.introspection = opaque.filter;
    if let Some(keys) = &spec.api_keys {
        config.api_keys = Some(api_keys(cx, keys, secrets));
    }
    if let Some(s) = &spec.sessions {
        config.sessions = Some(sessions(cx, s, sign_in.as_ref()));
    } else if sign_in.is_some() {
        cx.bad(
            "$.spec.auth.sessions",
            "a provider with signIn needs sessions (the cookie it sets)",
        );
    }
    let mut out = RouteAuth {
        config,
        route: route.to_string(),
        providers,
        namespace: cx.ns.to_string(),
        opaque: opaque.names,
        introspection: opaque.service,
        has_keys: spec.api_keys.is_some(),
        has_sessions: spec.sessions.is_some(),
        default: auth::Requirement::Allow,
        sign_in,
    };
    if let Some(r) = &spec.default_requirement {
        out.default = out.requirement(cx, r, "$.spec.auth.defaultRequirement");
    }
    out
}

/// The route's opaque-token providers: what the filter gets, and what the service gets.
#[derive(Default)]
struct Opaque {
    names: BTreeSet<String>,
    filter: Option<auth::Introspection>,
    service: BTreeMap<String, ProviderSettings>,
}

impl Opaque {
    fn add(
        &mut self,
        cx: &mut Ctx,
        p: &ProviderSpec,
        key: String,
        at: &str,
        secrets: &dyn SecretLookup,
    ) {
        self.names.insert(p.name.clone());
        let jwt_fields = !p.issuer.is_empty() || p.jwks_uri.is_some() || p.jwks.is_some();
        if jwt_fields || (p.introspection.is_some() && p.github.is_some()) {
            cx.bad(
                at,
                "give issuer with jwksUri or jwks (a JWT provider), or exactly one of introspection, github",
            );
        }
        let mut filter_side = auth::IntrospectedProvider::bearer();
        filter_side.token_sources = token_sources(cx, p.token_location.as_ref(), at);
        filter_side.forward = p.forward;
        filter_side.headers = p
            .claims_to_headers
            .values()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut service = match (&p.introspection, &p.github) {
            (Some(i), _) => {
                let secret = secrets::secret_value(
                    cx,
                    secrets,
                    &i.client_secret_ref,
                    &format!("{at}.introspection.clientSecretRef"),
                );
                let mut s = ProviderSettings::rfc7662(&i.endpoint, &i.client_id, &secret);
                if let Some(c) = &i.client_id_claim {
                    s.client_id_claim = c.clone();
                }
                if !(i.endpoint.starts_with("https://") || i.endpoint.starts_with("http://")) {
                    cx.bad(
                        format!("{at}.introspection.endpoint"),
                        format!("{:?} is not an http(s) URI", i.endpoint),
                    );
                }
                s
            }
            (None, Some(g)) => {
                let secret = secrets::secret_value(
                    cx,
                    secrets,
                    &g.client_secret_ref,
                    &format!("{at}.github.clientSecretRef"),
                );
                let mut s = ProviderSettings::github(&g.client_id, &secret);
                let api = g.api_url.clone();
                s.kind = Kind::Github {
                    api: api
                        .unwrap_or_else(|| nexus_sessions_service::introspect::GITHUB_API.into()),
                    memberships: g.memberships,
                };
                s
            }
            (None, None) => return,
        };
        if let Some(t) = p.cache_seconds {
            filter_side.cache_ttl_s = t;
            service.cache_ttl = Duration::from_secs(t);
        }
        if let Some(t) = p.negative_cache_seconds {
            filter_side.negative_cache_ttl_s = t;
            service.negative_ttl = Duration::from_secs(t);
        }
        service.claims_to_headers = p
            .claims_to_headers
            .iter()
            .map(|(claim, header)| (claim.clone(), header.to_ascii_lowercase()))
            .collect();
        let filter = self.filter.get_or_insert_with(|| auth::Introspection {
            cluster: SESSIONS_CLUSTER_PLACEHOLDER.to_string(),
            authority: auth::Sessions::with_cluster("").authority,
            timeout_ms: 3_000,
            cache_entries: 4096,
            providers: BTreeMap::new(),
        });
        filter.providers.insert(key.clone(), filter_side);
        self.service.insert(key, service);
    }
}

/// One JWT provider, checked by the auth filter's own validation (paths in CRD spelling).
fn provider(cx: &mut Ctx, p: &ProviderSpec, at: &str) -> auth::JwtProvider {
    let provider = auth::JwtProvider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks: jwks(cx, p, at),
        token_sources: token_sources(cx, p.token_location.as_ref(), at),
        forward: p.forward,
        clock_skew_s: CLOCK_SKEW_S,
        claims_to_headers: p
            .claims_to_headers
            .iter()
            .map(|(claim, header)| auth::ClaimToHeader {
                claim: claim.clone(),
                header: header.clone(),
            })
            .collect(),
    };
    let mut errors = Vec::new();
    provider.validate(at, &mut errors);
    for e in &mut errors {
        e.path = e
            .path
            .replace(".jwks.inline", ".jwks")
            .replace(".jwks.remote.uri", ".jwksUri")
            .replace(".claims_to_headers", ".claimsToHeaders")
            .replace(".token_sources", ".tokenLocation");
    }
    // Skip the placeholder error for a missing/unusable JWKS (already reported).
    errors.retain(|e| {
        !(e.path.ends_with(".jwks")
            && matches!(&provider.jwks, auth::Jwks::Inline(d) if d.is_empty()))
    });
    cx.take_config_errors(errors);
    provider
}

/// `jwksUri` (fetched through Istio's outbound cluster for its host) or inline `jwks`; an
/// empty inline document stands in for a reported problem.
fn jwks(cx: &mut Ctx, p: &ProviderSpec, at: &str) -> auth::Jwks {
    match (&p.jwks_uri, &p.jwks) {
        (Some(uri), None) => match istio_cluster_for(uri) {
            Some(cluster) => auth::Jwks::Remote(auth::RemoteJwks {
                cluster,
                uri: uri.clone(),
                refresh_period_s: p.jwks_refresh_seconds.unwrap_or(DEFAULT_JWKS_REFRESH_S),
                timeout_ms: JWKS_FETCH_TIMEOUT_MS,
            }),
            None => {
                cx.bad(
                    format!("{at}.jwksUri"),
                    format!("{uri:?} is not an http(s) URI with a host"),
                );
                auth::Jwks::Inline(String::new())
            }
        },
        (None, Some(doc)) => auth::Jwks::Inline(doc.clone()),
        _ => {
            cx.bad(at, "give exactly one of jwksUri, jwks");
            auth::Jwks::Inline(String::new())
        }
    }
}

/// Where the token is: `Authorization: Bearer` unless `tokenLocation` names one place.
fn token_sources(cx: &mut Ctx, t: Option<&TokenLocation>, at: &str) -> Vec<auth::TokenSource> {
    let Some(t) = t else {
        return vec![auth::TokenSource::Bearer];
    };
    let given = [t.header.is_some(), t.query.is_some(), t.cookie.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given > 1 {
        cx.bad(
            format!("{at}.tokenLocation"),
            "give at most one of header, query, cookie",
        );
    }
    if let Some(h) = &t.header {
        vec![auth::TokenSource::Header {
            name: h.to_ascii_lowercase(),
            prefix: t.prefix.clone(),
        }]
    } else if let Some(q) = &t.query {
        vec![auth::TokenSource::Query { param: q.clone() }]
    } else if let Some(c) = &t.cookie {
        vec![auth::TokenSource::Cookie { name: c.clone() }]
    } else {
        vec![auth::TokenSource::Bearer]
    }
}

/// `spec.auth.apiKeys`: the header, and the keys of the referenced Secret.
fn api_keys(cx: &mut Ctx, keys: &ApiKeysSpec, secrets: &dyn SecretLookup) -> auth::ApiKeys {
    let at = "$.spec.auth.apiKeys";
    let header = keys
        .header
        .clone()
        .unwrap_or_else(|| DEFAULT_API_KEY_HEADER.to_string());
    let list = if keys.secret_ref.name.is_empty() {
        cx.bad(format!("{at}.secretRef.name"), "must not be empty");
        Vec::new()
    } else {
        secrets::api_keys(cx, secrets, &keys.secret_ref.name, at)
    };
    let api_keys = auth::ApiKeys { header, keys: list };
    let mut errors = Vec::new();
    api_keys.validate(at, &mut errors);
    // The keys were checked entry by entry as the Secret was read: only the header is left.
    errors.retain(|e| e.path.ends_with(".header"));
    cx.take_config_errors(errors);
    api_keys
}

/// The cluster every rendering replaces with the sessions service's (see
/// `render::ServiceClusters`).
pub const SESSIONS_CLUSTER_PLACEHOLDER: &str = "nexus-sessions";

/// `spec.auth.sessions`, checked by the filter's own validation (paths in CRD spelling).
/// `spec.auth.sessions`; with sign-in on, browsers go to its start unless `signInPath` says
/// otherwise, and the headers its claims set are the session's (clients cannot send them).
fn sessions(cx: &mut Ctx, s: &SessionsSpec, sign_in: Option<&OidcSettings>) -> auth::Sessions {
    let mut out = auth::Sessions::with_cluster(SESSIONS_CLUSTER_PLACEHOLDER);
    if let Some(c) = &s.cookie {
        out.cookie = c.clone();
    }
    if let Some(t) = s.cache_seconds {
        out.cache_ttl_s = t;
    }
    out.sign_in_path = s.sign_in_path.clone();
    out.headers = s.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    if let Some(settings) = sign_in {
        out.sign_in_path
            .get_or_insert_with(|| sign_in::DEFAULT_SIGN_IN_PATH.to_string());
        for h in settings.claims_to_headers.values() {
            if !out.headers.contains(h) {
                out.headers.push(h.clone());
            }
        }
    }
    let at = "$.spec.auth.sessions";
    let mut errors = Vec::new();
    out.validate(at, &mut errors);
    for e in &mut errors {
        e.path = e
            .path
            .replace(".cache_ttl_s", ".cacheSeconds")
            .replace(".sign_in_path", ".signInPath");
    }
    cx.take_config_errors(errors);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_clusters_for_jwks_uris() {
        assert_eq!(
            istio_cluster_for("https://id.example.com/jwks.json").as_deref(),
            Some("outbound|443||id.example.com")
        );
        assert_eq!(
            istio_cluster_for("http://keys.auth:8080/k").as_deref(),
            Some("outbound|8080||keys.auth")
        );
        assert_eq!(istio_cluster_for("ftp://x"), None);
    }
}
