//! An [`AuthConfig`] compiled into an [`Auth`]: providers by index, API keys as raw hashes,
//! rule matchers compiled, and the list of claims the token cache must keep.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use nexus_config::auth::{self, AuthConfig, Jwks, JwtProvider, Requirement, TokenSource};
use nexus_config::{ConfigError, ConfigErrors};
use nexus_filter_core::matcher::CompiledMatch;
use ring::digest;

use crate::jwks::KeySet;
use crate::remote_jwks::{Remote, WorkerKeys};
use crate::session::SessionStore;
use crate::verify::RingVerifier;
use crate::{Auth, LocalCache, HEADER_AUTH_METHOD, HEADER_CLIENT_ID};

/// A rule's requirement, with providers as indexes into [`Auth::providers`].
pub(crate) enum Req {
    Allow,
    Jwt {
        providers: Vec<usize>,
        claims: Vec<(String, String)>,
        scopes: Vec<String>,
    },
    ApiKey {
        scopes: Vec<String>,
    },
    Session {
        scopes: Vec<String>,
    },
    /// An opaque token of one of these [`Auth::introspected`] providers.
    OAuth2 {
        providers: Vec<usize>,
        scopes: Vec<String>,
    },
    AnyOf(Vec<Req>),
}

impl Req {
    /// Whether a session would meet this requirement (a browser is then sent to sign in).
    pub(crate) fn accepts_session(&self) -> bool {
        match self {
            Req::Session { .. } => true,
            Req::AnyOf(list) => list.iter().any(Req::accepts_session),
            _ => false,
        }
    }
}

pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) matcher: CompiledMatch,
    pub(crate) req: Req,
}

pub(crate) struct Provider {
    pub(crate) name: String,
    /// `jwt:<name>`, the identity's method, made once.
    pub(crate) method: String,
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) sources: Vec<TokenSource>,
    pub(crate) skew_s: u64,
    pub(crate) claims_to_headers: Vec<(String, String)>,
    pub(crate) forward: bool,
    pub(crate) remote: Option<Remote>,
}

pub(crate) struct ApiKey {
    /// The SHA-256 of the key.
    pub(crate) hash: [u8; 32],
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
}

impl Auth {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let config: AuthConfig = nexus_config::parse(bytes)?;
        let digest = digest::digest(&digest::SHA256, bytes);
        let prefix = format!("nexus-auth.{}.", hex(&digest.as_ref()[..6]));
        Self::new(&config, &prefix)
    }

    pub fn new(config: &AuthConfig, prefix: &str) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut providers = Vec::new();
        let mut keys = Vec::new();
        let mut owned_headers = vec![HEADER_CLIENT_ID.to_string(), HEADER_AUTH_METHOD.to_string()];
        let mut needed: Vec<String> = vec![
            config.identity.client_id_claim.clone(),
            "scope".into(),
            "scp".into(),
        ];
        for (name, p) in &config.providers {
            let (provider, set) = provider(name, p, &mut errors);
            for (claim, header) in &provider.claims_to_headers {
                needed.push(claim.clone());
                owned_headers.push(header.clone());
            }
            keys.push(WorkerKeys {
                set,
                ..Default::default()
            });
            providers.push(provider);
        }
        if let Some(h) = &config.identity.payload_header {
            owned_headers.push(h.clone());
        }
        let sessions = config
            .sessions
            .as_ref()
            .map(|s| SessionStore::new(s, prefix));
        if let Some(s) = &sessions {
            owned_headers.extend(s.headers.iter().cloned());
        }
        let introspected = config
            .introspection
            .as_ref()
            .map(|i| crate::oauth2::compile(i, prefix))
            .unwrap_or_default();
        for p in &introspected {
            owned_headers.extend(p.headers.iter().cloned());
        }
        let rules = rules(config, &mut needed, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        needed.sort();
        needed.dedup();
        if config.identity.payload_header.is_some() {
            needed.clear();
        }
        Ok(Self {
            providers,
            api_key_header: config
                .api_keys
                .as_ref()
                .map(|k| k.header.clone())
                .unwrap_or_default(),
            api_keys: config.api_keys.as_ref().map(api_keys).unwrap_or_default(),
            rules,
            on_no_match: config.on_no_match,
            cache_entries: config.token_cache.max_entries,
            cache_ttl_s: config.token_cache.ttl_s,
            identity: config.identity.clone(),
            refetch_min_s: config.jwks_refetch_min_interval_ms.div_ceil(1000),
            prefix: prefix.to_string(),
            needed_claims: needed,
            owned_headers,
            verifier: Box::new(RingVerifier),
            keys: RefCell::new(keys),
            pending: RefCell::new(BTreeMap::new()),
            local: RefCell::new(LocalCache::default()),
            sessions,
            introspected,
            audit: config.audit.clone(),
        })
    }
}

/// A provider, and its keys when they are inline.
fn provider(
    name: &str,
    p: &JwtProvider,
    errors: &mut Vec<ConfigError>,
) -> (Provider, Option<Rc<KeySet>>) {
    let at = format!("$.providers.{name}");
    let (remote, set) = match &p.jwks {
        Jwks::Inline(doc) => match KeySet::parse(doc.as_bytes()) {
            Ok(set) => (None, Some(Rc::new(set))),
            Err(e) => {
                errors.push(ConfigError::new(format!("{at}.jwks.inline"), e));
                (None, None)
            }
        },
        Jwks::Remote(r) => (Some(remote(r, &at, errors)), None),
    };
    let provider = Provider {
        name: name.to_string(),
        method: format!("jwt:{name}"),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        sources: p.token_sources.clone(),
        forward: p.forward,
        skew_s: p.clock_skew_s,
        claims_to_headers: p
            .claims_to_headers
            .iter()
            .map(|c| (c.claim.clone(), c.header.clone()))
            .collect(),
        remote,
    };
    (provider, set)
}

/// Where to fetch a remote JWKS: the URI split into the `:authority` and `:path` of the callout.
fn remote(r: &auth::RemoteJwks, at: &str, errors: &mut Vec<ConfigError>) -> Remote {
    let rest = r
        .uri
        .strip_prefix("https://")
        .or_else(|| r.uri.strip_prefix("http://"))
        .unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        errors.push(ConfigError::new(
            format!("{at}.jwks.remote.uri"),
            "has no host",
        ));
    }
    Remote {
        cluster: r.cluster.clone(),
        authority: authority.to_string(),
        path: path.to_string(),
        refresh_s: r.refresh_period_s,
        timeout_ms: r.timeout_ms,
    }
}

fn api_keys(k: &auth::ApiKeys) -> Vec<ApiKey> {
    k.keys
        .iter()
        .map(|key| {
            let mut hash = [0u8; 32];
            if let Some(bytes) = unhex(&key.sha256) {
                if bytes.len() == 32 {
                    hash.copy_from_slice(&bytes);
                }
            }
            ApiKey {
                hash,
                client_id: key.client_id.clone(),
                scopes: key.scopes.clone(),
            }
        })
        .collect()
}

/// The rules with their matchers compiled; the claims their requirements name go to `needed`.
fn rules(
    config: &AuthConfig,
    needed: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Rule> {
    let names = Names {
        jwt: config.providers.keys().collect(),
        oauth2: config
            .introspection
            .iter()
            .flat_map(|i| i.providers.keys())
            .collect(),
    };
    let mut rules = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let at = format!("$.rules[{i}]");
        let req = compile_req(&rule.requirement, &names, needed);
        match CompiledMatch::compile(&rule.matcher, &format!("{at}.match")) {
            Ok(matcher) => rules.push(Rule {
                name: rule.name.clone(),
                matcher,
                req,
            }),
            Err(mut e) => errors.append(&mut e),
        }
    }
    rules
}

/// Provider names in [`Auth::providers`] and [`Auth::introspected`] order.
struct Names<'a> {
    jwt: Vec<&'a String>,
    oauth2: Vec<&'a String>,
}

/// The indexes of `wanted` in `names`; none wanted accepts every one.
fn indexes(names: &[&String], wanted: &[String]) -> Vec<usize> {
    if wanted.is_empty() {
        return (0..names.len()).collect();
    }
    wanted
        .iter()
        .filter_map(|p| names.iter().position(|n| *n == p))
        .collect()
}

fn compile_req(r: &Requirement, names: &Names, needed: &mut Vec<String>) -> Req {
    match r {
        Requirement::Allow => Req::Allow,
        Requirement::ApiKey(k) => Req::ApiKey {
            scopes: k.scopes.clone(),
        },
        Requirement::Session(s) => Req::Session {
            scopes: s.scopes.clone(),
        },
        Requirement::Oauth2(o) => Req::OAuth2 {
            providers: indexes(&names.oauth2, &o.providers),
            scopes: o.scopes.clone(),
        },
        Requirement::Jwt(j) => {
            let providers = indexes(&names.jwt, &j.providers);
            needed.extend(j.required_claims.keys().cloned());
            Req::Jwt {
                providers,
                claims: j
                    .required_claims
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                scopes: j.scopes.clone(),
            }
        }
        Requirement::AnyOf(list) => {
            Req::AnyOf(list.iter().map(|r| compile_req(r, names, needed)).collect())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
