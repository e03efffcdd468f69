//! Pure validation and compilation of NexusRoutes: no API server, no I/O.
//!
//! [`compile`] checks one route (with the Secrets it references) and resolves it into the
//! pieces every rendered object is made of; [`conflicts`] finds routes that claim a host and
//! path an older route already claims; [`group_key`] decides which routes share one
//! EnvoyFilter (same namespace, target kind and workload selector).

use std::collections::{BTreeMap, BTreeSet};

use nexus_config::auth::{self, AuthConfig};
use nexus_config::router::{self, HeaderMatch, PathMatch, RequestMatch, RetryPolicy};
use nexus_config::{ConfigError, Validate};
use serde::Deserialize;

use crate::crd::*;

/// Seed upstream port for the seed categories.
pub const SEED_PORT: u16 = 8080;
/// Seed circuit breaker: 5 consecutive errors eject for 60 s.
pub const SEED_CONSECUTIVE_ERRORS: u32 = 5;
pub const SEED_EJECTION_MS: u64 = 60_000;
pub const SEED_RETRIES: u32 = 3;
pub const DEFAULT_RETRY_ON: &str = "5xx,reset,connect-failure,refused-stream";

/// Why a route is not accepted, or its references are not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidSpec,
    Conflict,
    SecretNotFound,
    InvalidSecret,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Conflict => "Conflict",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
        }
    }
    /// `Accepted` problems vs `ResolvedRefs` problems.
    pub fn is_ref(self) -> bool {
        matches!(self, Reason::SecretNotFound | Reason::InvalidSecret)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// An upstream Service port, with the token the router sends in `x-nexus-upstream`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedUpstream {
    pub token: String,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl PartialOrd for Protocol {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Protocol {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// One router rule of a compiled route, fully resolved (no category inheritance left).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    /// `<route>.<rule>` (`.rest` appended for a REST fallback): unique in a group.
    pub name: String,
    pub router: router::RouteRule,
    pub upstream: ResolvedUpstream,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    pub per_try_timeout_ms: Option<u64>,
    /// The rule's caching, if any (also for its REST fallback).
    pub cache: Option<RuleCache>,
}

/// A rule's cache policy, and the paths to keep warm.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCache {
    pub policy: nexus_config::cache::CachePolicy,
    pub warm: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRoute {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created: String,
    pub group: GroupKey,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub rules: Vec<CompiledRule>,
    /// Upstream of `defaultCategory`, if set.
    pub default_upstream: Option<(String, ResolvedUpstream, u64)>,
    pub auth: AuthConfig,
    pub rate_limits: Vec<nexus_config::ratelimit::Descriptor>,
    pub outlier: Outlier,
    pub pool: ConnectionPool,
    pub fail_open: bool,
    /// Number of CRD rules.
    pub rule_count: u32,
}

impl CompiledRoute {
    /// Every upstream the route sends to: each rule's, then the default category's.
    pub fn upstreams(&self) -> impl Iterator<Item = &ResolvedUpstream> {
        self.rules
            .iter()
            .map(|rule| &rule.upstream)
            .chain(self.default_upstream.iter().map(|(_, u, _)| u))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_errors: u32,
    pub base_ejection_ms: u64,
    pub interval_ms: u64,
    pub max_ejection_percent: u32,
}

/// Routes with equal keys share one EnvoyFilter and rate-limit domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub namespace: String,
    pub kind: TargetKind,
    pub selector: BTreeMap<String, String>,
}

impl GroupKey {
    /// `nexus-gateway-1a2b3c4d`: stable across restarts and versions.
    pub fn name(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (k, v) in &self.selector {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let kind = match self.kind {
            TargetKind::Gateway => "gateway",
            TargetKind::Sidecar => "sidecar",
        };
        format!("nexus-{kind}-{hex}")
    }
}

pub fn group_key(route: &NexusRoute) -> GroupKey {
    GroupKey {
        namespace: route.metadata.namespace.clone().unwrap_or_default(),
        kind: route.spec.target.kind,
        selector: route.spec.target.selector.clone(),
    }
}

/// API-key entries of a Secret (data key → value bytes), as the controller read them.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Looks up a Secret by namespace and name.
pub trait SecretLookup: Sync {
    fn get(&self, namespace: &str, name: &str) -> Option<SecretData>;
}

impl SecretLookup for BTreeMap<(String, String), SecretData> {
    fn get(&self, namespace: &str, name: &str) -> Option<SecretData> {
        BTreeMap::get(self, &(namespace.to_string(), name.to_string())).cloned()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretEntry {
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Parses `30s`, `500ms`, `1m`, `2h`, `1.5s` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    let ms = (v * mult).round();
    if !(1.0..=86_400_000.0).contains(&ms) {
        return None;
    }
    Some(ms as u64)
}

/// Istio/protobuf duration text: `30s`, `0.500s`.
pub fn duration_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `rules[0].match.grpc_service` (nexus-config naming) → `rules[0].match.grpcService`.
fn camel_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut upper = false;
    for c in p.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

struct Ctx<'a> {
    problems: Vec<Problem>,
    ns: &'a str,
}

impl Ctx<'_> {
    fn bad(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            reason: Reason::InvalidSpec,
            path: path.into(),
            message: message.into(),
        });
    }
    fn take_config_errors(&mut self, errors: Vec<ConfigError>) {
        for e in errors {
            self.bad(camel_path(&e.path), e.message);
        }
    }
    fn duration(&mut self, v: &Option<String>, path: &str) -> Option<u64> {
        let s = v.as_ref()?;
        let ms = parse_duration_ms(s);
        if ms.is_none() {
            self.bad(
                path,
                format!("{s:?} is not a duration (like 500ms, 30s, 1m; at most 24h)"),
            );
        }
        ms
    }
    fn upstream(&mut self, u: &Upstream, path: &str) -> ResolvedUpstream {
        if !is_dns_label(&u.service) {
            self.bad(
                format!("{path}.service"),
                format!("{:?} is not a Service name (a DNS label)", u.service),
            );
        }
        if let Some(ns) = &u.namespace {
            if !is_dns_label(ns) {
                self.bad(
                    format!("{path}.namespace"),
                    format!("{ns:?} is not a namespace name"),
                );
            }
        }
        if u.port == 0 {
            self.bad(format!("{path}.port"), "port must be 1..=65535");
        }
        let ns = u.namespace.as_deref().unwrap_or(self.ns);
        ResolvedUpstream {
            token: u.service.clone(),
            host: format!("{}.{ns}.svc.cluster.local", u.service),
            port: u.port,
            protocol: u.protocol.unwrap_or(Protocol::HTTP),
        }
    }
    fn retries(&mut self, r: &Retries, path: &str) -> (RetryPolicy, Option<u64>) {
        let policy = RetryPolicy {
            max_retries: r.attempts,
            retry_on: r
                .retry_on
                .clone()
                .unwrap_or_else(|| DEFAULT_RETRY_ON.to_string()),
        };
        let mut errors = Vec::new();
        policy.validate(path, &mut errors);
        for e in &mut errors {
            e.path = e.path.replace(".max_retries", ".attempts");
        }
        self.take_config_errors(errors);
        let per_try = self.duration(&r.per_try_timeout, &format!("{path}.perTryTimeout"));
        (policy, per_try)
    }
    fn cache(&mut self, c: &CacheSpec, path: &str) -> Option<RuleCache> {
        let ttl_ms = self.duration(&Some(c.ttl.clone()), &format!("{path}.ttl"))?;
        if ttl_ms < 1000 {
            self.bad(format!("{path}.ttl"), "must be at least 1s");
            return None;
        }
        let defaults: nexus_config::cache::CachePolicy =
            serde_json::from_value(serde_json::json!({ "ttl": 1 })).ok()?;
        let policy = nexus_config::cache::CachePolicy {
            ttl: ttl_ms / 1000,
            methods: if c.methods.is_empty() {
                defaults.methods.clone()
            } else {
                c.methods.clone()
            },
            vary: c.vary.iter().map(|h| h.to_ascii_lowercase()).collect(),
            key_by: match c.key_by {
                Some(CacheKeyBy::Client) => nexus_config::cache::KeyBy::Client,
                _ => nexus_config::cache::KeyBy::Shared,
            },
            respect_cache_control: c.respect_cache_control.unwrap_or(true),
            max_object_bytes: c.max_object_bytes.unwrap_or(defaults.max_object_bytes),
            tags_header: defaults.tags_header,
        };
        let mut errors = Vec::new();
        policy.validate(path, &mut errors);
        self.take_config_errors(errors);
        for (i, w) in c.warm.iter().enumerate() {
            if !w.starts_with('/') {
                self.bad(
                    format!("{path}.warm[{i}]"),
                    format!("{w:?} is not a path (it must start with /)"),
                );
            }
        }
        Some(RuleCache {
            policy,
            warm: c.warm.clone(),
        })
    }
}

struct Category {
    upstream: Option<ResolvedUpstream>,
    timeout_ms: u64,
    retry: Option<(RetryPolicy, Option<u64>)>,
}

/// Validates one route and resolves it. Every problem found is returned (not just the first),
/// each with the JSON path into the NexusRoute (`$.spec.rules[1].match.path.regex`).
pub fn compile(
    route: &NexusRoute,
    secrets: &dyn SecretLookup,
) -> Result<CompiledRoute, Vec<Problem>> {
    let ns = route.metadata.namespace.clone().unwrap_or_default();
    let name = route.metadata.name.clone().unwrap_or_default();
    let spec = &route.spec;
    let mut cx = Ctx {
        problems: Vec::new(),
        ns: &ns,
    };

    if spec.target.selector.is_empty() {
        cx.bad(
            "$.spec.target.selector",
            "must select workloads by at least one label",
        );
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let ok = host == "*"
            || (!host.is_empty()
                && host.trim_start_matches("*.").bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                }));
        if !ok {
            cx.bad(
                format!("$.spec.hosts[{i}]"),
                format!("{host:?} is not a lower-case host name"),
            );
        }
    }
    if spec.target.kind == TargetKind::Gateway && spec.gateways.is_empty() {
        cx.bad(
            "$.spec.gateways",
            "a Gateway target needs the Istio Gateway(s) its VirtualService binds to",
        );
    }
    if spec.rules.is_empty() {
        cx.bad("$.spec.rules", "must have at least one rule");
    }

    // Defaults, then categories.
    let default_retry = match &spec.retries {
        Some(r) => cx.retries(r, "$.spec.retries"),
        None => (
            RetryPolicy {
                max_retries: SEED_RETRIES,
                retry_on: DEFAULT_RETRY_ON.to_string(),
            },
            None,
        ),
    };
    let mut categories: BTreeMap<String, Category> = router::SEED_CATEGORIES
        .iter()
        .map(|(c, up, t)| {
            (
                (*c).to_string(),
                Category {
                    upstream: Some(ResolvedUpstream {
                        token: (*up).to_string(),
                        host: format!("{up}.{ns}.svc.cluster.local"),
                        port: SEED_PORT,
                        protocol: Protocol::HTTP,
                    }),
                    timeout_ms: *t,
                    retry: None,
                },
            )
        })
        .collect();
    for (cname, c) in &spec.categories {
        let at = format!("$.spec.categories.{cname}");
        if cname.is_empty()
            || !cname
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            cx.bad(&at, "category names are [a-z0-9_-]+");
        }
        let upstream = c
            .upstream
            .as_ref()
            .map(|u| cx.upstream(u, &format!("{at}.upstream")));
        let timeout = cx.duration(&c.timeout, &format!("{at}.timeout"));
        let retry = c
            .retries
            .as_ref()
            .map(|r| cx.retries(r, &format!("{at}.retries")));
        let entry = categories.entry(cname.clone()).or_insert(Category {
            upstream: None,
            timeout_ms: 30_000,
            retry: None,
        });
        if let Some(u) = upstream {
            entry.upstream = Some(u);
        }
        if let Some(t) = timeout {
            entry.timeout_ms = t;
        }
        if retry.is_some() {
            entry.retry = retry;
        }
        if entry.upstream.is_none() {
            cx.bad(format!("{at}.upstream"), "a new category needs an upstream");
        }
    }

    // Auth.
    let auth_spec = spec.auth.clone().unwrap_or_default();
    let mut auth_cfg = auth_defaults();
    let mut provider_names = BTreeSet::new();
    for (i, p) in auth_spec.providers.iter().enumerate() {
        let at = format!("$.spec.auth.providers[{i}]");
        if p.name.is_empty() || !provider_names.insert(p.name.clone()) {
            cx.bad(
                format!("{at}.name"),
                format!("provider name {:?} is empty or not unique", p.name),
            );
        }
        let jwks = match (&p.jwks_uri, &p.jwks) {
            (Some(uri), None) => match istio_cluster_for(uri) {
                Some(cluster) => auth::Jwks::Remote(auth::RemoteJwks {
                    cluster,
                    uri: uri.clone(),
                    refresh_period_s: p.jwks_refresh_seconds.unwrap_or(600),
                    timeout_ms: 5_000,
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
                cx.bad(&at, "give exactly one of jwksUri, jwks");
                auth::Jwks::Inline(String::new())
            }
        };
        let token_sources = match &p.token_location {
            None => vec![auth::TokenSource::Bearer],
            Some(t) => {
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
        };
        let provider = auth::JwtProvider {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            jwks,
            token_sources,
            forward: p.forward,
            clock_skew_s: 60,
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
        provider.validate(&at, &mut errors);
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
        auth_cfg
            .providers
            .insert(provider_key(&name, &p.name), provider);
    }
    if let Some(keys) = &auth_spec.api_keys {
        let at = "$.spec.auth.apiKeys";
        let header = keys
            .header
            .clone()
            .unwrap_or_else(|| "x-api-key".to_string());
        let mut list = Vec::new();
        if keys.secret_ref.name.is_empty() {
            cx.bad(format!("{at}.secretRef.name"), "must not be empty");
        } else {
            match secrets.get(&ns, &keys.secret_ref.name) {
                None => cx.problems.push(Problem {
                    reason: Reason::SecretNotFound,
                    path: format!("{at}.secretRef"),
                    message: format!("Secret {ns}/{} not found", keys.secret_ref.name),
                }),
                Some(data) => {
                    for (k, v) in &data {
                        let ok_hash = k.len() == 64
                            && k.bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                        let entry: Option<SecretEntry> = serde_json::from_slice(v).ok();
                        match (ok_hash, entry) {
                            (true, Some(e)) if !e.client_id.is_empty() => list.push(auth::ApiKey {
                                sha256: k.clone(),
                                client_id: e.client_id,
                                scopes: e.scopes,
                            }),
                            _ => cx.problems.push(Problem {
                                reason: Reason::InvalidSecret,
                                path: format!("{at}.secretRef"),
                                message: format!(
                                    "Secret {ns}/{} key {k:?}: keys must be the lower-case hex SHA-256 of an API key and values JSON {{\"clientId\": ..., \"scopes\": [...]}}",
                                    keys.secret_ref.name
                                ),
                            }),
                        }
                    }
                }
            }
        }
        let api_keys = auth::ApiKeys { header, keys: list };
        let mut errors = Vec::new();
        api_keys.validate(at, &mut errors);
        errors.retain(|e| e.path.ends_with(".header"));
        cx.take_config_errors(errors);
        auth_cfg.api_keys = Some(api_keys);
    }
    let default_req = auth_spec.default_requirement.clone();
    if let Some(r) = &default_req {
        requirement(
            &mut cx,
            r,
            "$.spec.auth.defaultRequirement",
            &name,
            &provider_names,
            auth_spec.api_keys.is_some(),
        );
    }

    // Rules.
    let mut rules = Vec::new();
    let mut rule_names = BTreeSet::new();
    let mut tokens: BTreeMap<String, (ResolvedUpstream, String)> = BTreeMap::new();
    let mut descriptors = Vec::new();
    let host_match = host_header(&spec.hosts);
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("$.spec.rules[{i}]");
        if !is_dns_label(&r.name) {
            cx.bad(
                format!("{at}.name"),
                format!("{:?} is not [a-z0-9-]+", r.name),
            );
        } else if !rule_names.insert(r.name.clone()) {
            cx.bad(
                format!("{at}.name"),
                format!("duplicate rule name {:?}", r.name),
            );
        }
        let matcher = request_match(&mut cx, &r.matcher, &format!("{at}.match"), &host_match);
        let Some(cat) = categories.get(&r.category) else {
            let known: Vec<&str> = categories.keys().map(String::as_str).collect();
            cx.bad(
                format!("{at}.category"),
                format!(
                    "unknown category {:?} (known: {})",
                    r.category,
                    known.join(", ")
                ),
            );
            continue;
        };
        let upstream = match &r.upstream {
            Some(u) => Some(cx.upstream(u, &format!("{at}.upstream"))),
            None => cat.upstream.clone(),
        };
        let Some(upstream) = upstream else { continue };
        let timeout_ms = cx
            .duration(&r.timeout, &format!("{at}.timeout"))
            .unwrap_or(cat.timeout_ms);
        let (retry, per_try) = match &r.retries {
            Some(rt) => cx.retries(rt, &format!("{at}.retries")),
            None => cat.retry.clone().unwrap_or_else(|| default_retry.clone()),
        };
        let full_name = format!("{name}.{}", r.name);
        let cache = r
            .cache
            .as_ref()
            .and_then(|c| cx.cache(c, &format!("{at}.cache")));
        let mut upstreams = vec![(upstream.clone(), format!("{at}.upstream"))];
        let mut compiled = vec![CompiledRule {
            name: full_name.clone(),
            router: router::RouteRule {
                name: full_name.clone(),
                matcher: matcher.clone(),
                category: r.category.clone(),
                upstream: Some(upstream.token.clone()),
                timeout_ms: Some(timeout_ms),
                retry: Some(retry.clone()),
            },
            upstream,
            timeout_ms,
            retry: retry.clone(),
            per_try_timeout_ms: per_try,
            cache: cache.clone(),
        }];
        if let Some(fb) = &r.rest_fallback {
            let fat = format!("{at}.restFallback");
            if r.matcher.grpc_service.is_none() {
                cx.bad(&fat, "restFallback needs match.grpcService");
            }
            if !fb.path_prefix.starts_with('/') {
                cx.bad(format!("{fat}.pathPrefix"), "must start with '/'");
            }
            let fup = cx.upstream(&fb.upstream, &format!("{fat}.upstream"));
            let mut fm = RequestMatch {
                path: Some(PathMatch::Prefix(fb.path_prefix.clone())),
                methods: matcher.methods.clone(),
                headers: matcher.headers.clone(),
                grpc_service: None,
                grpc_method: None,
            };
            fm.headers.dedup();
            upstreams.push((fup.clone(), format!("{fat}.upstream")));
            compiled.push(CompiledRule {
                name: format!("{full_name}.rest"),
                router: router::RouteRule {
                    name: format!("{full_name}.rest"),
                    matcher: fm,
                    category: r.category.clone(),
                    upstream: Some(fup.token.clone()),
                    timeout_ms: Some(timeout_ms),
                    retry: Some(retry.clone()),
                },
                upstream: fup,
                timeout_ms,
                retry: retry.clone(),
                per_try_timeout_ms: per_try,
                cache: cache.clone(),
            });
        }
        for (u, p) in upstreams {
            match tokens.get(&u.token) {
                Some((prev, prev_path))
                    if prev.host != u.host
                        || prev.port != u.port
                        || prev.protocol != u.protocol =>
                {
                    cx.bad(
                        p,
                        format!(
                            "upstream service {:?} is already {}:{} at {prev_path}; one service name, one port per route",
                            u.token, prev.host, prev.port
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    tokens.insert(u.token.clone(), (u, p));
                }
            }
        }
        // Auth requirement of this rule (and its REST fallback).
        let requirement_cfg = match &r.auth {
            Some(req) => requirement(
                &mut cx,
                req,
                &format!("{at}.auth"),
                &name,
                &provider_names,
                auth_spec.api_keys.is_some(),
            ),
            None => match &default_req {
                Some(d) => requirement(
                    &mut Ctx {
                        problems: Vec::new(),
                        ns: &ns,
                    },
                    d,
                    "",
                    &name,
                    &provider_names,
                    auth_spec.api_keys.is_some(),
                ),
                None => auth::Requirement::Allow,
            },
        };
        for c in &compiled {
            auth_cfg.rules.push(auth::AuthRule {
                name: c.name.clone(),
                matcher: c.router.matcher.clone(),
                requirement: requirement_cfg.clone(),
            });
        }
        // Rate limits.
        if let Some(d) = rate_limit_descriptor(&mut cx, &r.rate_limits, &at, &full_name) {
            descriptors.push(d);
            if compiled.len() > 1 {
                if let Some(d) = rate_limit_descriptor(
                    &mut Ctx {
                        problems: Vec::new(),
                        ns: &ns,
                    },
                    &r.rate_limits,
                    &at,
                    &format!("{full_name}.rest"),
                ) {
                    descriptors.push(d);
                }
            }
        }
        rules.extend(compiled);
    }

    let default_upstream = match &spec.default_category {
        None => None,
        Some(c) => match categories.get(c) {
            Some(Category {
                upstream: Some(u),
                timeout_ms,
                ..
            }) => Some((c.clone(), u.clone(), *timeout_ms)),
            _ => {
                cx.bad("$.spec.defaultCategory", format!("unknown category {c:?}"));
                None
            }
        },
    };

    let outlier = match &spec.circuit_breaker {
        None => Outlier {
            consecutive_errors: SEED_CONSECUTIVE_ERRORS,
            base_ejection_ms: SEED_EJECTION_MS,
            interval_ms: 10_000,
            max_ejection_percent: 100,
        },
        Some(cb) => {
            let at = "$.spec.circuitBreaker";
            if cb.consecutive_errors == 0 {
                cx.bad(format!("{at}.consecutiveErrors"), "must be at least 1");
            }
            let base = cx
                .duration(
                    &Some(cb.base_ejection_time.clone()),
                    &format!("{at}.baseEjectionTime"),
                )
                .unwrap_or(SEED_EJECTION_MS);
            let interval = cx
                .duration(&cb.interval, &format!("{at}.interval"))
                .unwrap_or(10_000);
            let pct = cb.max_ejection_percent.unwrap_or(100);
            if pct > 100 {
                cx.bad(format!("{at}.maxEjectionPercent"), "must be 0..=100");
            }
            Outlier {
                consecutive_errors: cb.consecutive_errors,
                base_ejection_ms: base,
                interval_ms: interval,
                max_ejection_percent: pct,
            }
        }
    };
    let pool = spec.connection_pool.clone().unwrap_or_default();
    if let Some(t) = &pool.connect_timeout {
        cx.duration(&Some(t.clone()), "$.spec.connectionPool.connectTimeout");
    }

    // Whatever the CRD-level checks missed, the filters' own validation catches.
    if cx.problems.is_empty() {
        let mut errors = Vec::new();
        auth_cfg.validate("$.spec.auth", &mut errors);
        cx.take_config_errors(errors);
    }

    if !cx.problems.is_empty() {
        return Err(cx.problems);
    }
    Ok(CompiledRoute {
        namespace: ns.clone(),
        name,
        uid: route.metadata.uid.clone().unwrap_or_default(),
        created: created(route),
        group: group_key(route),
        hosts: spec.hosts.clone(),
        gateways: spec.gateways.clone(),
        rules,
        default_upstream,
        auth: auth_cfg,
        rate_limits: descriptors,
        outlier,
        pool,
        fail_open: spec.failure_policy == Some(FailurePolicy::FailOpen),
        rule_count: spec.rules.len() as u32,
    })
}

/// An [`AuthConfig`] with the defaults the filter applies when parsing (serde defaults, which
/// may differ from `Default`).
pub fn auth_defaults() -> AuthConfig {
    serde_json::from_str("{}").unwrap_or_default()
}

/// Creation time (RFC 3339) used to order routes; missing (offline) sorts first.
pub fn created(route: &NexusRoute) -> String {
    route
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// Provider names are per route; in the merged auth config they are `<route>.<provider>`.
fn provider_key(route: &str, provider: &str) -> String {
    format!("{route}.{provider}")
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

/// An anchored `:authority` regex for the route's hosts, or none for any host.
fn host_header(hosts: &[String]) -> Option<HeaderMatch> {
    if hosts.is_empty() || hosts.iter().any(|h| h == "*") {
        return None;
    }
    let alts: Vec<String> = hosts
        .iter()
        .map(|h| match h.strip_prefix("*.") {
            Some(rest) => format!("[^.]+\\.{}", rest.replace('.', "\\.")),
            None => h.replace('.', "\\."),
        })
        .collect();
    Some(HeaderMatch {
        name: ":authority".to_string(),
        regex: Some(format!("^({})(:[0-9]+)?$", alts.join("|"))),
        ..HeaderMatch::default()
    })
}

fn request_match(
    cx: &mut Ctx,
    m: &RuleMatch,
    at: &str,
    host: &Option<HeaderMatch>,
) -> RequestMatch {
    let path = match &m.path {
        None => None,
        Some(p) => {
            let given = [p.prefix.is_some(), p.exact.is_some(), p.regex.is_some()]
                .iter()
                .filter(|g| **g)
                .count();
            if given != 1 {
                cx.bad(
                    format!("{at}.path"),
                    "give exactly one of prefix, exact, regex",
                );
            }
            if let Some(v) = &p.prefix {
                Some(PathMatch::Prefix(v.clone()))
            } else if let Some(v) = &p.exact {
                Some(PathMatch::Exact(v.clone()))
            } else {
                p.regex.as_ref().map(|v| PathMatch::Regex(v.clone()))
            }
        }
    };
    let mut rm = RequestMatch {
        path,
        methods: m.methods.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                present: h.present,
                exact: h.exact.clone(),
                prefix: h.prefix.clone(),
                regex: h.regex.clone(),
            })
            .collect(),
        grpc_service: m.grpc_service.clone(),
        grpc_method: m.grpc_method.clone(),
    };
    let mut errors = Vec::new();
    rm.validate(at, &mut errors);
    cx.take_config_errors(errors);
    if let Some(h) = host {
        rm.headers.push(h.clone());
    }
    rm
}

fn simple(
    cx: &mut Ctx,
    jwt: &Option<JwtRequirementSpec>,
    key: &Option<ApiKeyRequirementSpec>,
    at: &str,
    route: &str,
    providers: &BTreeSet<String>,
    has_keys: bool,
) -> Option<auth::Requirement> {
    match (jwt, key) {
        (Some(j), None) => {
            if providers.is_empty() {
                cx.bad(
                    format!("{at}.jwt"),
                    "no JWT providers in spec.auth.providers",
                );
            }
            for (k, p) in j.providers.iter().enumerate() {
                if !providers.contains(p) {
                    let known: Vec<&str> = providers.iter().map(String::as_str).collect();
                    cx.bad(
                        format!("{at}.jwt.providers[{k}]"),
                        format!("unknown provider {p:?} (known: {})", known.join(", ")),
                    );
                }
            }
            let list = if j.providers.is_empty() {
                providers.iter().map(|p| provider_key(route, p)).collect()
            } else {
                j.providers.iter().map(|p| provider_key(route, p)).collect()
            };
            Some(auth::Requirement::Jwt(auth::JwtRequirement {
                providers: list,
                required_claims: j.required_claims.clone(),
                scopes: j.scopes.clone(),
            }))
        }
        (None, Some(k)) => {
            if !has_keys {
                cx.bad(
                    format!("{at}.apiKey"),
                    "no spec.auth.apiKeys to check keys against",
                );
            }
            Some(auth::Requirement::ApiKey(auth::ApiKeyRequirement {
                scopes: k.scopes.clone(),
            }))
        }
        _ => None,
    }
}

fn requirement(
    cx: &mut Ctx,
    r: &AuthRequirement,
    at: &str,
    route: &str,
    providers: &BTreeSet<String>,
    has_keys: bool,
) -> auth::Requirement {
    let given = [
        r.allow.is_some(),
        r.jwt.is_some(),
        r.api_key.is_some(),
        !r.any_of.is_empty(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        cx.bad(at, "give exactly one of allow, jwt, apiKey, anyOf");
        return auth::Requirement::AnyOf(Vec::new());
    }
    if let Some(allow) = r.allow {
        if !allow {
            cx.bad(
                format!("{at}.allow"),
                "allow: false is not a requirement; omit it",
            );
        }
        return auth::Requirement::Allow;
    }
    if !r.any_of.is_empty() {
        let mut list = Vec::new();
        for (k, s) in r.any_of.iter().enumerate() {
            let here = format!("{at}.anyOf[{k}]");
            match simple(cx, &s.jwt, &s.api_key, &here, route, providers, has_keys) {
                Some(req) => list.push(req),
                None => cx.bad(here, "give exactly one of jwt, apiKey"),
            }
        }
        return auth::Requirement::AnyOf(list);
    }
    simple(cx, &r.jwt, &r.api_key, at, route, providers, has_keys)
        .unwrap_or(auth::Requirement::Allow)
}

fn rate_limit_descriptor(
    cx: &mut Ctx,
    limits: &[RateLimitSpec],
    at: &str,
    rule: &str,
) -> Option<nexus_config::ratelimit::Descriptor> {
    use nexus_config::ratelimit::{
        Descriptor, RateLimit, Unit, CLIENT_KEY, HEADER_KEY_PREFIX, ROUTE_KEY,
    };
    if limits.is_empty() {
        return None;
    }
    let mut top = Descriptor {
        key: ROUTE_KEY.to_string(),
        value: Some(rule.to_string()),
        rate_limit: None,
        descriptors: Vec::new(),
        shadow_mode: false,
        ..Default::default()
    };
    let mut seen = BTreeSet::new();
    for (k, l) in limits.iter().enumerate() {
        let here = format!("{at}.rateLimits[{k}]");
        if l.requests == 0 {
            cx.bad(format!("{here}.requests"), "must be at least 1");
        }
        let limit = RateLimit {
            unlimited: false,
            unit: Some(match l.per {
                RateUnit::Second => Unit::Second,
                RateUnit::Minute => Unit::Minute,
                RateUnit::Hour => Unit::Hour,
            }),
            requests_per_unit: l.requests,
            ..Default::default()
        };
        let key = match l.by {
            RateLimitBy::Route => None,
            RateLimitBy::Client => Some(CLIENT_KEY.to_string()),
            RateLimitBy::Header => match &l.header {
                Some(h) if !h.is_empty() => {
                    Some(format!("{HEADER_KEY_PREFIX}{}", h.to_ascii_lowercase()))
                }
                _ => {
                    cx.bad(format!("{here}.header"), "by: Header needs header");
                    continue;
                }
            },
        };
        if l.by != RateLimitBy::Header && l.header.is_some() {
            cx.bad(format!("{here}.header"), "header is only for by: Header");
        }
        if !seen.insert(key.clone()) {
            cx.bad(
                &here,
                "one limit per rule for each of Route, Client and each header",
            );
            continue;
        }
        match key {
            None => {
                top.rate_limit = Some(limit);
                top.shadow_mode = l.shadow;
            }
            Some(key) => top.descriptors.push(Descriptor {
                key,
                value: None,
                rate_limit: Some(limit),
                descriptors: Vec::new(),
                shadow_mode: l.shadow,
                ..Default::default()
            }),
        }
    }
    Some(top)
}

/// A claim on a host and path; two routes making the same claim conflict.
fn claims(route: &NexusRoute) -> Vec<(String, String, usize)> {
    let hosts: Vec<String> = if route.spec.hosts.is_empty() {
        vec!["*".to_string()]
    } else {
        route.spec.hosts.clone()
    };
    let mut out = Vec::new();
    for (i, r) in route.spec.rules.iter().enumerate() {
        let Some(p) = &r.matcher.path else { continue };
        let path = if let Some(v) = &p.prefix {
            format!("prefix:{v}")
        } else if let Some(v) = &p.exact {
            format!("exact:{v}")
        } else if let Some(v) = &p.regex {
            format!("regex:{v}")
        } else {
            continue;
        };
        // Methods, headers and gRPC services narrow the claim.
        let narrow = format!(
            "{path} methods={:?} headers={:?} grpc={:?}/{:?}",
            r.matcher.methods, r.matcher.headers, r.matcher.grpc_service, r.matcher.grpc_method
        );
        for h in &hosts {
            out.push((h.clone(), narrow.clone(), i));
        }
    }
    out
}

/// Sort key: older first; equal times by namespace/name.
pub fn age_key(route: &NexusRoute) -> (String, String, String) {
    (
        created(route),
        route.metadata.namespace.clone().unwrap_or_default(),
        route.metadata.name.clone().unwrap_or_default(),
    )
}

/// For every route that claims a host and path an older route (on the same target kind)
/// already claims, a `Conflict` problem. Deleted routes are ignored.
pub fn conflicts(routes: &[&NexusRoute]) -> BTreeMap<(String, String), Problem> {
    let mut sorted: Vec<&&NexusRoute> = routes
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    sorted.sort_by_key(|r| age_key(r));
    let mut owner: BTreeMap<(TargetKind, String, String), (String, usize)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in sorted {
        let id = (
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone().unwrap_or_default(),
        );
        let mut lost = None;
        let mut mine = Vec::new();
        for (host, path, i) in claims(r) {
            let key = (r.spec.target.kind, host.clone(), path.clone());
            if let Some((winner, _)) = owner.get(&key) {
                if lost.is_none() {
                    lost = Some(Problem {
                        reason: Reason::Conflict,
                        path: format!("$.spec.rules[{i}].match.path"),
                        message: format!(
                            "host {host:?} with this path is already claimed by the older NexusRoute {winner}"
                        ),
                    });
                }
            } else {
                mine.push((key, i));
            }
        }
        match lost {
            Some(p) => {
                out.insert(id, p);
            }
            None => {
                for (key, i) in mine {
                    owner
                        .entry(key)
                        .or_insert((format!("{}/{}", id.0, id.1), i));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("1.5s"), Some(1_500));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("soon"), None);
        assert_eq!(parse_duration_ms("0s"), None);
        assert_eq!(parse_duration_ms("25h"), None);
        assert_eq!(duration_text(30_000), "30s");
        assert_eq!(duration_text(1_500), "1.500s");
    }

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

    #[test]
    fn host_header_is_anchored() {
        let h = host_header(&["api.example.com".into(), "*.example.org".into()]).unwrap();
        let re = regex::Regex::new(h.regex.as_deref().unwrap()).unwrap();
        assert!(re.is_match("api.example.com"));
        assert!(re.is_match("api.example.com:8443"));
        assert!(re.is_match("a.example.org"));
        assert!(!re.is_match("evil-api.example.com"));
        assert!(!re.is_match("api.example.com.evil"));
        assert!(host_header(&["*".into()]).is_none());
    }

    #[test]
    fn group_names_are_stable_and_selector_sensitive() {
        let g = |kind, labels: &[(&str, &str)]| GroupKey {
            namespace: "ns".into(),
            kind,
            selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let a = g(TargetKind::Gateway, &[("istio", "ingressgateway")]);
        assert_eq!(
            a.name(),
            g(TargetKind::Gateway, &[("istio", "ingressgateway")]).name()
        );
        assert!(a.name().starts_with("nexus-gateway-"));
        assert_ne!(
            a.name(),
            g(TargetKind::Gateway, &[("istio", "other")]).name()
        );
        assert!(g(TargetKind::Sidecar, &[("app", "x")])
            .name()
            .starts_with("nexus-sidecar-"));
    }
}
