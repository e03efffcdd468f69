//! `nexus-auth`: who may call what. JWT providers and API keys authenticate; ordered rules
//! decide what each request needs. A request no rule matches is denied unless `on_no_match`
//! says `allow`.
//!
//! ```json
//! {
//!   "providers": {
//!     "corp": {
//!       "issuer": "https://id.example.com",
//!       "audiences": ["nexus"],
//!       "jwks": {"remote": {"cluster": "outbound|443||id.example.com", "uri": "https://id.example.com/jwks.json"}},
//!       "token_sources": ["bearer", {"cookie": {"name": "session"}}],
//!       "claims_to_headers": [{"claim": "sub", "header": "x-nexus-subject"}]
//!     }
//!   },
//!   "api_keys": {"header": "x-api-key",
//!                "keys": [{"sha256": "9f86d0…", "client_id": "billing", "scopes": ["lake:read"]}]},
//!   "rules": [
//!     {"name": "public-health", "match": {"path": {"exact": "/health"}}, "requirement": "allow"},
//!     {"name": "lake", "match": {"path": {"prefix": "/lake/"}},
//!      "requirement": {"any_of": [{"jwt": {"providers": ["corp"], "scopes": ["lake:read"]}},
//!                                 {"api_key": {"scopes": ["lake:read"]}}]}}
//!   ]
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::router::RequestMatch;
use crate::{ConfigError, Validate};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Provider name → how to verify its JWTs. Names are what rules refer to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, JwtProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    /// Evaluated in order; the first rule whose match holds decides.
    #[serde(default)]
    pub rules: Vec<AuthRule>,
    /// What a request no rule matches gets (deny: 403).
    #[serde(default)]
    pub on_no_match: NoMatchAction,
    /// The cache of verified tokens shared by every worker.
    #[serde(default)]
    pub token_cache: TokenCache,
    /// What the filter tells the upstream (and later filters) about the caller.
    #[serde(default)]
    pub identity: IdentityOut,
    /// Least time between two JWKS fetches of one provider triggered by requests (a token
    /// naming an unknown `kid`, or no keys yet), in milliseconds: bounds what unknown-`kid`
    /// tokens can make the filter fetch.
    #[serde(default = "default_refetch_interval")]
    pub jwks_refetch_min_interval_ms: u64,
    /// Sign-in sessions, looked up in the sessions service (required by `session` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Sessions>,
    /// Opaque OAuth2 access tokens, checked by the sessions service (RFC 7662 introspection or
    /// GitHub's token check), which holds the providers' client secrets: this filter never
    /// does (required by `oauth2` rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
    /// Where each allow of an identified caller and each deny is recorded (one audit record
    /// each, with the auth method and client, never the credential); none: not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditSink>,
}

fn default_refetch_interval() -> u64 {
    10_000
}

/// Where a request's session cookie is checked: the sessions service the controller binary
/// hosts (`GET /sessions/v1/lookup` on its HTTP port), with a bounded per-proxy cache.
///
/// A session the service cannot confirm (it or Redis is down, it does not answer in time) is
/// refused with 503 `sessions_unavailable`: an unconfirmed session never passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    /// The cookie carrying the opaque session id.
    #[serde(default = "default_session_cookie")]
    pub cookie: String,
    /// Envoy cluster of the sessions service.
    pub cluster: String,
    /// `:authority` of lookups.
    #[serde(default = "default_sessions_authority")]
    pub authority: String,
    /// Lookup timeout in milliseconds.
    #[serde(default = "default_session_timeout")]
    pub timeout_ms: u64,
    /// Sessions this proxy keeps (a direct-mapped table in shared data: a session landing in
    /// an occupied slot evicts the one there).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u32,
    /// Longest time this proxy trusts a session without asking the service again, in
    /// seconds: the bound on how long a revoked session can still pass here.
    #[serde(default = "default_session_cache_ttl")]
    pub cache_ttl_s: u64,
    /// Where a browser (`Accept` naming `text/html`) without a valid session is redirected
    /// (302, with `rd=<the request path>`); API clients get 401 JSON. None: 401 for everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_in_path: Option<String>,
    /// Headers a session may set for the upstream (its identity's claims mapped at sign-in);
    /// removed from every incoming request first, so a client cannot forge them. A session's
    /// other headers are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// gRPC cluster of the cache-coherency service, whose event stream carries revocations
    /// (`nexus_config::session::revocation_key`): a revoked session leaves this proxy's table
    /// as soon as the event arrives. While the stream is not live the table is not trusted
    /// (every request asks the service); when it is live again the table is emptied. None:
    /// revocations reach this proxy only through `cache_ttl_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocations_cluster: Option<String>,
}

impl Sessions {
    /// The defaults, looking sessions up through `cluster`.
    pub fn with_cluster(cluster: &str) -> Self {
        Self {
            cookie: default_session_cookie(),
            cluster: cluster.to_string(),
            authority: default_sessions_authority(),
            timeout_ms: default_session_timeout(),
            cache_entries: default_cache_entries(),
            cache_ttl_s: default_session_cache_ttl(),
            sign_in_path: None,
            headers: Vec::new(),
            revocations_cluster: None,
        }
    }
}

/// Where opaque tokens are checked: the sessions service (`POST
/// /sessions/v1/introspect/<provider>`, see `nexus_config::session`), which asks the
/// provider; answers are kept in a bounded table per proxy.
///
/// A token the service cannot confirm (it is down, the provider times out, answers 5xx or
/// garbage) is refused with 503 `introspection_unavailable`: an unconfirmed token never
/// passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// Envoy cluster of the sessions service.
    pub cluster: String,
    /// `:authority` of the calls.
    #[serde(default = "default_sessions_authority")]
    pub authority: String,
    /// Call timeout in milliseconds; longer than the service's own call to the provider.
    #[serde(default = "default_introspection_timeout")]
    pub timeout_ms: u64,
    /// Answers this proxy keeps, per provider (a direct-mapped table in shared data).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u32,
    /// Provider name → where its tokens are; names are what `oauth2` rules refer to and what
    /// the service knows the provider by.
    pub providers: BTreeMap<String, IntrospectedProvider>,
}

/// One provider of opaque tokens, as the filter sees it (its endpoint and secret are the
/// service's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectedProvider {
    /// Where to look for the token, in order; defaults to the `Authorization: Bearer` header.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSource>,
    /// Longest this proxy trusts an active token without asking again, in seconds (never past
    /// the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl_s: u64,
    /// How long an inactive token is remembered as such, in seconds.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl_s: u64,
    /// Headers this provider's identities may set (claims mapped by the service); removed from
    /// every incoming request first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Pass the token on to the upstream (default false: its header is removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward: bool,
}

impl IntrospectedProvider {
    /// A bearer-token provider with the defaults.
    pub fn bearer() -> Self {
        Self {
            token_sources: default_token_sources(),
            cache_ttl_s: default_introspection_ttl(),
            negative_cache_ttl_s: default_negative_ttl(),
            headers: Vec::new(),
            forward: false,
        }
    }
}

fn default_introspection_timeout() -> u64 {
    3_000
}

fn default_introspection_ttl() -> u64 {
    60
}

fn default_negative_ttl() -> u64 {
    5
}

fn default_session_cookie() -> String {
    "nexus-session".to_string()
}

fn default_sessions_authority() -> String {
    "nexus-sessions".to_string()
}

fn default_session_timeout() -> u64 {
    500
}

fn default_session_cache_ttl() -> u64 {
    5
}

/// Verified tokens, keyed by the SHA-256 of the token, kept until the token's `exp` or `ttl_s`,
/// whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCache {
    /// Slots (a direct-mapped table: a new token evicts the one in its slot). 0 disables it.
    #[serde(default = "default_cache_entries")]
    pub max_entries: u32,
    /// Longest time a verified token is trusted without verifying it again, in seconds.
    #[serde(default = "default_cache_ttl")]
    pub ttl_s: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            ttl_s: default_cache_ttl(),
        }
    }
}

fn default_cache_entries() -> u32 {
    4096
}

fn default_cache_ttl() -> u64 {
    300
}

/// Identity headers and properties set on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityOut {
    /// The JWT claim that names the client (`x-nexus-client-id`); API keys use their `client_id`.
    #[serde(default = "default_client_id_claim")]
    pub client_id_claim: String,
    /// If set, the whole verified JWT payload, base64url, goes upstream in this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    /// Set `x-nexus-client-id` and `x-nexus-auth-method` on authenticated requests (default
    /// true). Off, later filters and upstreams do not learn who called from headers (the
    /// rate-limit filter's `client_id` key then sees every caller as anonymous); the request
    /// costs two header writes less. Such headers sent by a client are removed either way.
    #[serde(default = "crate::yes")]
    pub headers: bool,
    /// Publish the identity as Envoy filter state, `wasm.nexus.client_id` and
    /// `wasm.nexus.auth_method`, for access logs and later filters (default true).
    #[serde(default = "crate::yes")]
    pub filter_state: bool,
}

impl Default for IdentityOut {
    fn default() -> Self {
        Self {
            client_id_claim: default_client_id_claim(),
            payload_header: None,
            headers: true,
            filter_state: true,
        }
    }
}

fn default_client_id_claim() -> String {
    "sub".to_string()
}

/// How to find and verify one issuer's JWTs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these; empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    /// Where to look for the token, in order; defaults to the `Authorization: Bearer` header.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSource>,
    /// Tolerated clock difference for `exp` / `nbf`, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    /// Copy verified claims into request headers for the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Pass the verified token on to the upstream. Off by default, as in Envoy's `jwt_authn`:
    /// the header (or query parameter) it came in is removed, so upstreams never see bearer
    /// credentials they could replay. A token in a cookie is always passed on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward: bool,
}

fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Bearer]
}

fn default_clock_skew() -> u64 {
    60
}

/// The JSON Web Key Set that verifies a provider's signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Jwks {
    /// A JWKS document (`{"keys":[...]}`) as a string.
    Inline(String),
    /// Fetched through an Envoy cluster and refreshed periodically.
    Remote(RemoteJwks),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    /// Envoy cluster the filter dispatches the fetch to (`outbound|443||id.example.com`).
    pub cluster: String,
    /// `http://` or `https://` URI of the JWKS document.
    pub uri: String,
    /// Seconds between refreshes.
    #[serde(default = "default_refresh")]
    pub refresh_period_s: u64,
    /// Fetch timeout in milliseconds.
    #[serde(default = "default_fetch_timeout")]
    pub timeout_ms: u64,
}

fn default_refresh() -> u64 {
    600
}

fn default_fetch_timeout() -> u64 {
    5_000
}

/// Where a token may be found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A request header, with an optional value prefix to strip (`Token `).
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// A query parameter.
    Query { param: String },
    /// A cookie.
    Cookie { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Top-level claim name; string, number and boolean claims are copied.
    pub claim: String,
    /// Lower-case header name; any incoming header of that name is replaced.
    pub header: String,
}

/// Static API keys. Only hashes are configured: the filter hashes the presented key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    /// Request header carrying the key.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

fn default_api_key_header() -> String {
    "x-api-key".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Identifies the caller (`x-nexus-client-id`, rate limits per client).
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// Shown in logs and denial bodies.
    pub name: String,
    /// Same matcher as the router's rules; an empty match matches every request.
    #[serde(rename = "match", default)]
    pub matcher: RequestMatch,
    pub requirement: Requirement,
}

/// What a request must present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Requirement {
    /// A valid JWT.
    Jwt(JwtRequirement),
    /// A configured API key.
    ApiKey(ApiKeyRequirement),
    /// A sign-in session (the `sessions` cookie), confirmed by the sessions service.
    Session(SessionRequirement),
    /// An opaque OAuth2 access token of an `introspection` provider, confirmed by the
    /// sessions service.
    Oauth2(OAuth2Requirement),
    /// Any one of these (not empty).
    AnyOf(Vec<Requirement>),
    /// Nothing: the request passes unauthenticated.
    Allow,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirement {
    /// Names of `providers` accepted; empty accepts every configured provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Claim name → exact string value the token must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_claims: BTreeMap<String, String>,
    /// Every scope listed must be in the token's `scope` (space separated) or `scp` (array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequirement {
    /// Every scope listed must be among the session's scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Requirement {
    /// Names of `introspection.providers` accepted; empty accepts every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Every scope listed must be among the token's (`scope`, space separated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRequirement {
    /// Every scope listed must be granted to the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoMatchAction {
    #[default]
    Deny,
    Allow,
}

impl Validate for AuthConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(a) = &self.audit {
            a.validate(&format!("{path}.audit"), errors);
            a.refuse_unsupported(&format!("{path}.audit"), "nexus-auth", errors);
        }
        for (name, provider) in &self.providers {
            let at = format!("{path}.providers.{name}");
            if name.is_empty() {
                errors.push(ConfigError::new(&at, "provider names must not be empty"));
            }
            provider.validate(&at, errors);
        }
        if let Some(keys) = &self.api_keys {
            keys.validate(&format!("{path}.api_keys"), errors);
        }
        if let Some(sessions) = &self.sessions {
            sessions.validate(&format!("{path}.sessions"), errors);
        }
        if let Some(i) = &self.introspection {
            i.validate(&format!("{path}.introspection"), errors);
        }
        if self.identity.client_id_claim.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.identity.client_id_claim"),
                "must not be empty",
            ));
        }
        if let Some(h) = &self.identity.payload_header {
            check_header(h, &format!("{path}.identity.payload_header"), errors);
        }
        if self.token_cache.max_entries > 1 << 20 {
            errors.push(ConfigError::new(
                format!("{path}.token_cache.max_entries"),
                "at most 1048576",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{path}.rules[{i}]");
            if rule.name.is_empty() {
                errors.push(ConfigError::new(format!("{at}.name"), "must not be empty"));
            } else if !names.insert(rule.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate rule name {:?}", rule.name),
                ));
            }
            rule.matcher.validate(&format!("{at}.match"), errors);
            self.check_requirement(&rule.requirement, &format!("{at}.requirement"), errors);
        }
    }
}

impl AuthConfig {
    fn check_requirement(&self, req: &Requirement, at: &str, errors: &mut Vec<ConfigError>) {
        match req {
            Requirement::Allow => {}
            Requirement::Jwt(jwt) => {
                if self.providers.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.jwt"),
                        "a jwt requirement needs at least one provider in providers",
                    ));
                }
                for (j, p) in jwt.providers.iter().enumerate() {
                    if !self.providers.contains_key(p) {
                        let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                        errors.push(ConfigError::new(
                            format!("{at}.jwt.providers[{j}]"),
                            format!("unknown provider {p:?} (known: {})", known.join(", ")),
                        ));
                    }
                }
                for claim in jwt.required_claims.keys() {
                    if claim.is_empty() {
                        errors.push(ConfigError::new(
                            format!("{at}.jwt.required_claims"),
                            "claim names must not be empty",
                        ));
                    }
                }
            }
            Requirement::ApiKey(_) => {
                if self.api_keys.is_none() {
                    errors.push(ConfigError::new(
                        format!("{at}.api_key"),
                        "an api_key requirement needs api_keys",
                    ));
                }
            }
            Requirement::Session(_) => {
                if self.sessions.is_none() {
                    errors.push(ConfigError::new(
                        format!("{at}.session"),
                        "a session requirement needs sessions",
                    ));
                }
            }
            Requirement::Oauth2(o) => self.check_oauth2(o, &format!("{at}.oauth2"), errors),
            Requirement::AnyOf(list) => {
                if list.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.any_of"),
                        "must not be empty",
                    ));
                }
                for (j, r) in list.iter().enumerate() {
                    self.check_requirement(r, &format!("{at}.any_of[{j}]"), errors);
                }
            }
        }
    }
}

impl AuthConfig {
    fn check_oauth2(&self, o: &OAuth2Requirement, at: &str, errors: &mut Vec<ConfigError>) {
        let Some(i) = &self.introspection else {
            errors.push(ConfigError::new(
                at,
                "an oauth2 requirement needs introspection",
            ));
            return;
        };
        for (j, p) in o.providers.iter().enumerate() {
            if !i.providers.contains_key(p) {
                let known: Vec<&str> = i.providers.keys().map(String::as_str).collect();
                errors.push(ConfigError::new(
                    format!("{at}.providers[{j}]"),
                    format!("unknown provider {p:?} (known: {})", known.join(", ")),
                ));
            }
        }
    }
}

/// The sessions service's call settings, shared by sessions and opaque-token lookups: a
/// cluster and authority, a timeout, and a bounded answer cache.
fn check_service_call(
    at: &str,
    (cluster, authority): (&str, &str),
    timeout_ms: u64,
    cache_entries: u32,
    errors: &mut Vec<ConfigError>,
) {
    for (field, value) in [("cluster", cluster), ("authority", authority)] {
        if value.is_empty() {
            errors.push(ConfigError::new(
                format!("{at}.{field}"),
                "must not be empty",
            ));
        }
    }
    if timeout_ms == 0 {
        errors.push(ConfigError::new(
            format!("{at}.timeout_ms"),
            "must be at least 1",
        ));
    }
    if !(1..=1 << 20).contains(&cache_entries) {
        errors.push(ConfigError::new(
            format!("{at}.cache_entries"),
            "from 1 to 1048576",
        ));
    }
}

impl Validate for Introspection {
    fn validate(&self, at: &str, errors: &mut Vec<ConfigError>) {
        let service = (self.cluster.as_str(), self.authority.as_str());
        check_service_call(at, service, self.timeout_ms, self.cache_entries, errors);
        if self.providers.is_empty() {
            errors.push(ConfigError::new(
                format!("{at}.providers"),
                "must not be empty",
            ));
        }
        for (name, p) in &self.providers {
            let here = format!("{at}.providers.{name}");
            if !provider_name(name) {
                errors.push(ConfigError::new(
                    &here,
                    format!("{name:?} is not a provider name (letters, digits, - _ . only)"),
                ));
            }
            check_token_sources(&p.token_sources, &format!("{here}.token_sources"), errors);
            for (i, h) in p.headers.iter().enumerate() {
                check_header(h, &format!("{here}.headers[{i}]"), errors);
            }
        }
    }
}

/// Provider names travel in the service's path: keep them to unreserved URI characters.
fn provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_token_sources(sources: &[TokenSource], at: &str, errors: &mut Vec<ConfigError>) {
    if sources.is_empty() {
        errors.push(ConfigError::new(at, "must not be empty"));
    }
    for (i, source) in sources.iter().enumerate() {
        let here = format!("{at}[{i}]");
        match source {
            TokenSource::Bearer => {}
            TokenSource::Header { name, .. } => {
                check_header(name, &format!("{here}.header.name"), errors)
            }
            TokenSource::Query { param } if param.is_empty() => {
                errors.push(ConfigError::new(
                    format!("{here}.query.param"),
                    "must not be empty",
                ));
            }
            TokenSource::Cookie { name } if name.is_empty() => {
                errors.push(ConfigError::new(
                    format!("{here}.cookie.name"),
                    "must not be empty",
                ));
            }
            _ => {}
        }
    }
}

impl Validate for JwtProvider {
    fn validate(&self, at: &str, errors: &mut Vec<ConfigError>) {
        if self.issuer.is_empty() {
            errors.push(ConfigError::new(
                format!("{at}.issuer"),
                "must not be empty",
            ));
        }
        match &self.jwks {
            Jwks::Inline(doc) => {
                let ok = serde_json::from_str::<serde_json::Value>(doc)
                    .ok()
                    .and_then(|v| v.get("keys").map(serde_json::Value::is_array))
                    .unwrap_or(false);
                if !ok {
                    errors.push(ConfigError::new(
                        format!("{at}.jwks.inline"),
                        "must be a JWKS JSON document with a \"keys\" array",
                    ));
                }
            }
            Jwks::Remote(remote) => {
                if remote.cluster.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.jwks.remote.cluster"),
                        "must not be empty",
                    ));
                }
                if !(remote.uri.starts_with("https://") || remote.uri.starts_with("http://")) {
                    errors.push(ConfigError::new(
                        format!("{at}.jwks.remote.uri"),
                        format!("{:?} is not an http(s) URI", remote.uri),
                    ));
                }
                if remote.refresh_period_s == 0 {
                    errors.push(ConfigError::new(
                        format!("{at}.jwks.remote.refresh_period_s"),
                        "must be at least 1",
                    ));
                }
                if remote.timeout_ms == 0 {
                    errors.push(ConfigError::new(
                        format!("{at}.jwks.remote.timeout_ms"),
                        "must be at least 1",
                    ));
                }
            }
        }
        check_token_sources(&self.token_sources, &format!("{at}.token_sources"), errors);
        for (i, c) in self.claims_to_headers.iter().enumerate() {
            let here = format!("{at}.claims_to_headers[{i}]");
            if c.claim.is_empty() {
                errors.push(ConfigError::new(
                    format!("{here}.claim"),
                    "must not be empty",
                ));
            }
            check_header(&c.header, &format!("{here}.header"), errors);
        }
    }
}

impl Validate for ApiKeys {
    fn validate(&self, at: &str, errors: &mut Vec<ConfigError>) {
        check_header(&self.header, &format!("{at}.header"), errors);
        let mut seen = BTreeSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let here = format!("{at}.keys[{i}]");
            if key.sha256.len() != 64
                || !key
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                errors.push(ConfigError::new(
                    format!("{here}.sha256"),
                    "must be 64 lower-case hex digits (the SHA-256 of the key)",
                ));
            } else if !seen.insert(key.sha256.as_str()) {
                errors.push(ConfigError::new(
                    format!("{here}.sha256"),
                    "duplicate key hash",
                ));
            }
            if key.client_id.is_empty() {
                errors.push(ConfigError::new(
                    format!("{here}.client_id"),
                    "must not be empty",
                ));
            }
        }
    }
}

impl Validate for Sessions {
    fn validate(&self, at: &str, errors: &mut Vec<ConfigError>) {
        // RFC 6265 cookie-name: a token (no separators, no controls).
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if self.cookie.is_empty() || !self.cookie.bytes().all(token) {
            errors.push(ConfigError::new(
                format!("{at}.cookie"),
                format!("{:?} is not a cookie name", self.cookie),
            ));
        }
        if self.revocations_cluster.as_deref() == Some("") {
            errors.push(ConfigError::new(
                format!("{at}.revocations_cluster"),
                "must not be empty",
            ));
        }
        let service = (self.cluster.as_str(), self.authority.as_str());
        check_service_call(at, service, self.timeout_ms, self.cache_entries, errors);
        for (i, h) in self.headers.iter().enumerate() {
            check_header(h, &format!("{at}.headers[{i}]"), errors);
        }
        if let Some(p) = &self.sign_in_path {
            if !p.starts_with('/') || p.contains(['?', '#']) {
                errors.push(ConfigError::new(
                    format!("{at}.sign_in_path"),
                    format!("{p:?} is not a path (starts with /, no query)"),
                ));
            }
        }
    }
}

/// Header names here are lower case (they are compared lower-cased).
fn check_header(name: &str, at: &str, errors: &mut Vec<ConfigError>) {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        errors.push(ConfigError::new(
            at,
            format!("{name:?} is not a lower-case header name"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn documented_shape_parses() {
        let json = format!(
            r#"{{"providers":{{"corp":{{"issuer":"https://id.example.com","audiences":["nexus"],
                "jwks":{{"remote":{{"cluster":"outbound|443||id.example.com","uri":"https://id.example.com/jwks.json"}}}},
                "token_sources":["bearer",{{"cookie":{{"name":"session"}}}},{{"header":{{"name":"x-token"}}}}],
                "claims_to_headers":[{{"claim":"sub","header":"x-nexus-subject"}}]}}}},
              "api_keys":{{"keys":[{{"sha256":"{HASH}","client_id":"billing","scopes":["lake:read"]}}]}},
              "rules":[{{"name":"health","match":{{"path":{{"exact":"/health"}}}},"requirement":"allow"}},
                {{"name":"lake","match":{{"path":{{"prefix":"/lake/"}}}},"requirement":{{"any_of":[
                  {{"jwt":{{"providers":["corp"],"scopes":["lake:read"],"required_claims":{{"tenant":"a"}}}}}},
                  {{"api_key":{{"scopes":["lake:read"]}}}}]}}}}]}}"#
        );
        let cfg: AuthConfig = parse(json.as_bytes()).unwrap();
        assert_eq!(cfg.on_no_match, NoMatchAction::Deny);
        assert_eq!(cfg.providers["corp"].clock_skew_s, 60);
        assert_eq!(cfg.api_keys.as_ref().unwrap().header, "x-api-key");
        let back = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(parse::<AuthConfig>(&back).unwrap(), cfg);
    }

    #[test]
    fn problems_carry_paths() {
        let err = parse::<AuthConfig>(
            br#"{"providers":{"corp":{"issuer":"","jwks":{"inline":"{}"}}},
                 "api_keys":{"keys":[{"sha256":"XYZ","client_id":""}]},
                 "rules":[{"name":"a","requirement":{"jwt":{"providers":["nope"]}}},
                          {"name":"b","requirement":{"any_of":[]}}]}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.providers.corp.issuer",
                "$.providers.corp.jwks.inline",
                "$.api_keys.keys[0].sha256",
                "$.api_keys.keys[0].client_id",
                "$.rules[0].requirement.jwt.providers[0]",
                "$.rules[1].requirement.any_of",
            ]
        );
        assert!(err.to_string().contains("unknown provider \"nope\""));
    }

    #[test]
    fn sessions_parse_with_defaults() {
        let cfg: AuthConfig = parse(
            br#"{"sessions":{"cluster":"nexus_sessions","sign_in_path":"/_nexus/sign-in"},
                 "rules":[{"name":"app","requirement":{"session":{"scopes":["app"]}}}]}"#,
        )
        .unwrap();
        let s = cfg.sessions.as_ref().unwrap();
        assert_eq!(
            (
                s.cookie.as_str(),
                s.timeout_ms,
                s.cache_ttl_s,
                s.cache_entries
            ),
            ("nexus-session", 500, 5, 4096)
        );
        let back = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(parse::<AuthConfig>(&back).unwrap(), cfg);
    }

    #[test]
    fn bad_sessions_are_refused_with_paths() {
        let err = parse::<AuthConfig>(
            br#"{"sessions":{"cookie":"a b","cluster":"","timeout_ms":0,"sign_in_path":"x?y"},
                 "rules":[{"name":"a","requirement":{"session":{}}}]}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.sessions.cookie",
                "$.sessions.cluster",
                "$.sessions.timeout_ms",
                "$.sessions.sign_in_path",
            ]
        );
        let err = parse::<AuthConfig>(br#"{"rules":[{"name":"a","requirement":{"session":{}}}]}"#)
            .unwrap_err();
        assert_eq!(err.0[0].path, "$.rules[0].requirement.session");
        assert_eq!(err.0[0].message, "a session requirement needs sessions");
    }
}
