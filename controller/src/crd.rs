//! The `NexusRoute` custom resource (`nexus.datapunk.io/v1alpha1`).
//!
//! Shapes are kept structural (no recursion, no untagged enums) so the generated CRD schema is
//! accepted by every apiserver from 1.16 on; "exactly one of" rules are checked by
//! [`crate::validate`] with JSON paths instead.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group and version, for code that spells `apiVersion` (the derive below needs
/// literals; a test keeps the two the same).
pub const GROUP: &str = "nexus.datapunk.io";
pub const VERSION: &str = "v1alpha1";

/// `nexus.datapunk.io/v1alpha1`.
pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// Routes API traffic through the Nexus filters of an Istio ingress gateway or of sidecars.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.datapunk.io",
    version = "v1alpha1",
    kind = "NexusRoute",
    plural = "nexusroutes",
    shortname = "nxr",
    namespaced,
    status = "NexusRouteStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.rules"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Enforced","type":"string","jsonPath":".status.enforced"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NexusRouteSpec {
    /// Which Envoy workloads run the filters.
    pub target: Target,
    /// Hosts this route serves (`Host`/`:authority`, without port). Empty or `*` means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Istio Gateways (`namespace/name`) the VirtualService binds to; for `kind: Gateway`
    /// targets. Sidecar targets bind to `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Evaluated in order; the first matching rule wins.
    pub rules: Vec<Rule>,
    /// Overrides and additions to the seed categories (data_operations → lake 30s,
    /// stream_processing → stream 5s, ai_inference → cortex 10s, model_management → forge 20s).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, CategorySpec>,
    /// Default retry policy (seed: 3 attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Outlier detection for every upstream (seed: 5 consecutive errors, 60s ejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Caps retries to every upstream at a share of its active requests, so retries cannot
    /// multiply the load on an upstream that is already failing (Envoy's `retry_budget`,
    /// Istio's `trafficPolicy.retryBudget`). Unset: Envoy's fixed limit of 3 concurrent
    /// retries per upstream applies (`connectionPool.maxRetries` changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// JWT providers, API keys and the default requirement of rules that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// What Envoy does when a Nexus filter cannot load: `FailClosed` (default) or `FailOpen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// Category for requests no rule matches; without it they get 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_category: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// `Gateway` (an ingress gateway, patch context GATEWAY) or `Sidecar` (SIDECAR_INBOUND).
    pub kind: TargetKind,
    /// Labels of the workloads (Istio `workloadSelector.labels`), in `namespace`.
    pub selector: BTreeMap<String, String>,
    /// Where the workloads run, and so where their EnvoyFilter goes: Istio applies an
    /// EnvoyFilter with a `workloadSelector` only to workloads in its own namespace. Gateways:
    /// the gateway's namespace, default `istio-system` (where Istio installs its ingress
    /// gateway); the controller's `--allowed-routes` decides which route namespaces may attach
    /// to it. Sidecars: the route's own namespace (the default, and the only value allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum TargetKind {
    Gateway,
    Sidecar,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    FailClosed,
    FailOpen,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Unique within the route: `[a-z0-9-]+`.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RuleMatch,
    /// A seed category or a key of `categories`.
    pub category: String,
    /// Overrides the category's upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// For gRPC rules: requests under `pathPrefix` without a gRPC content type go here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_fallback: Option<RestFallback>,
    /// REST clients call this rule's gRPC `upstream` (protocol `GRPC`) through Envoy's
    /// gRPC-JSON transcoder, optionally failing over to a REST twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_transcoding: Option<GrpcTranscoding>,
    /// Overrides the category's timeout (`30s`, `500ms`, `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// What a request must present; defaults to `auth.defaultRequirement`, else allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthRequirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Cache this rule's responses in every proxy (and in the shared cache of the Nexus
    /// service), with mesh-wide invalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Request sanitization and PII detection in this rule's bodies (nexus-guard). The block
    /// is the guard filter's own policy type, so its keys are the filter's (`max_scan_bytes`,
    /// `request: {action: block}`); see `filters/config/src/guard.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<nexus_config::guard::GuardPolicy>,
    /// The rule serves GraphQL: nexus-router parses each operation, routes it by operation
    /// name or root field, and refuses it over the depth or cost limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql: Option<GraphqlSpec>,
}

/// A GraphQL rule (see `filters/config/src/router_graphql.rs` for the cost count).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraphqlSpec {
    /// Root field → the upstream that owns it. An operation whose root fields span two
    /// owners is refused (400) unless `defaultUpstream` is given.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, Upstream>,
    /// Operation name → upstream; checked before `fields`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub operations: std::collections::BTreeMap<String, Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_upstream: Option<Upstream>,
    /// Default 65536; larger bodies get a 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<u64>,
    /// Persisted queries (APQ) each proxy worker remembers; default 1000, 0 turns APQ off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted_queries: Option<u32>,
}

/// A rule's response caching. Responses marked `private` or `no-store`, with `Set-Cookie`,
/// or to requests carrying credentials are never shared: use `keyBy: Client` to cache
/// authenticated reads per client.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// How long a response is served from cache (`30s`, `5m`); a response's own
    /// `max-age`/`s-maxage` can only lower it.
    pub ttl: String,
    /// Cacheable methods (default `GET`, `HEAD`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers whose values select different cached responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary: Vec<String>,
    /// `Shared` (default: one copy for every anonymous caller) or `Client` (one per
    /// authenticated client id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<CacheKeyBy>,
    /// Honour `Cache-Control` of requests and responses (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respect_cache_control: Option<bool>,
    /// Larger responses pass uncached (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<u64>,
    /// Hot paths fetched through the gateway when the route is applied and then periodically,
    /// so the first caller finds them cached: anonymous requests (for `Shared` rules), with
    /// the `Host` a local client sends (`nexus up`; the controller does not warm yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CacheKeyBy {
    Shared,
    Client,
}

/// Every condition given must hold.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSpec>,
    /// Upper-case HTTP methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderSpec>,
    /// Fully qualified gRPC service (`datapunk.lake.v1.Lake`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<String>,
}

/// Exactly one of `prefix`, `exact`, `regex`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PathSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// At most one of `present`, `exact`, `prefix`, `regex`; none means present.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct HeaderSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A Kubernetes Service port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// Service name (`[a-z0-9-]+`); also the `x-nexus-upstream` value.
    pub service: String,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub port: u16,
    /// `HTTP` (default), `HTTP2` or `GRPC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum Protocol {
    HTTP,
    HTTP2,
    GRPC,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestFallback {
    /// REST requests (no gRPC content type) under this prefix go to `upstream`.
    pub path_prefix: String,
    pub upstream: Upstream,
}

/// gRPC primary, REST fallback: the rule's requests are REST (JSON), transcoded to its gRPC
/// upstream by the `google.api.http` bindings of `services`; with `restFailover`, a request the
/// gRPC upstream cannot take (connect failure, `UNAVAILABLE`, host ejected) goes, as the client
/// sent it, to the REST upstream. `x-nexus-served-by` names the upstream that answered.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcTranscoding {
    /// Fully qualified gRPC services (`datapunk.lake.v1.Lake`) of the descriptor set Nexus
    /// builds from `proto/`.
    pub services: Vec<String>,
    /// The REST upstream serving the same operations at the same paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_failover: Option<Upstream>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CategorySpec {
    /// Required for new categories; seed categories default to `<seed>:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    pub attempts: u32,
    /// Envoy retry conditions, comma separated (default `5xx,reset,connect-failure,refused-stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Retry POST, PATCH and other non-idempotent requests on every condition too (only
    /// safe when the upstream deduplicates, e.g. by idempotency key). Default: they are
    /// retried only when the upstream cannot have seen them (connect failure, refused
    /// stream, reset before the request was sent).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub consecutive_errors: u32,
    /// `60s`.
    pub base_ejection_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Retries outstanding at once to one upstream (Envoy's `max_retries`, default 3);
    /// ignored by Envoy when a `retryBudget` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed at once, as a percentage of the upstream's active and pending
    /// requests (`20` = one retry per five requests in flight). `(0, 100]`.
    pub percent: f64,
    /// Retries always allowed at once, however few requests are active (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// JWT providers (`issuer` and `jwksUri` or `jwks`) and providers of opaque OAuth2
    /// tokens (`introspection` or `github`), checked by the sessions service with the client
    /// secret it reads from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysSpec>,
    /// Requirement of rules that set no `auth`; without it such rules allow everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_requirement: Option<AuthRequirement>,
    /// Sign-in sessions: a session cookie checked against the sessions service every Nexus
    /// controller replica hosts (sessions in Redis, absolute ttl 86400 s by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionsSpec {
    /// Cookie carrying the opaque session id (default `nexus-session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Longest time a proxy trusts a session without asking the sessions service again, in
    /// seconds (default 5): the bound on a revocation missed by a proxy's event stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_seconds: Option<u64>,
    /// Where a browser (`Accept: text/html`) without a valid session is redirected (302);
    /// API clients get 401 JSON. Unset: 401 for everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_in_path: Option<String>,
    /// Request headers a session may set (claims mapped at sign-in); clients cannot send them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

/// A JWT provider (`issuer` with `jwksUri` or `jwks`), or a provider of opaque OAuth2 tokens
/// (exactly one of `introspection`, `github`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Referred to by `jwt.providers` and `oauth2.providers` of requirements.
    pub name: String,
    /// A well-known provider's settings, filled in where the provider leaves them out:
    /// `google` is issuer `https://accounts.google.com` with keys from
    /// `https://www.googleapis.com/oauth2/v3/certs` (what Google's discovery names), so its ID
    /// tokens are verified as any JWT and, with `signIn`, browsers sign in with Google.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ProviderPreset>,
    /// The `iss` of a JWT provider's tokens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Exactly one of `jwksUri`, `jwks` (inline JWKS JSON), for a JWT provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Opaque tokens checked by RFC 7662 token introspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionSpec>,
    /// Opaque GitHub tokens checked with GitHub's token API (`POST
    /// /applications/{clientId}/token`); the identity is the user's `login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubSpec>,
    /// Browser sign-in with this OpenID provider (`issuer`, keys and endpoints found by
    /// discovery): needs `auth.sessions`; at most one provider of a route signs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_in: Option<SignInSpec>,
    /// Opaque tokens: seconds a proxy trusts an active token without asking again (default
    /// 60; never past the token's expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_seconds: Option<u64>,
    /// Opaque tokens: seconds an inactive token is remembered as such (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_cache_seconds: Option<u64>,
    /// Seconds between JWKS refreshes (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh_seconds: Option<u64>,
    /// Where the token is; defaults to `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_location: Option<TokenLocation>,
    /// Claim → request header for the upstream. Opaque tokens' claims are the introspection
    /// answer's (`sub`, `client_id`, `username`, ...), GitHub's `login`, `user_id` and
    /// `app_client_id`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Pass the verified token on to the upstream (default false: the header or query
    /// parameter it came in is removed, as Envoy's `jwt_authn` does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderPreset {
    Google,
}

impl ProviderPreset {
    /// `(issuer, jwksUri)` of the preset.
    pub fn endpoints(self) -> (&'static str, &'static str) {
        match self {
            ProviderPreset::Google => (
                "https://accounts.google.com",
                "https://www.googleapis.com/oauth2/v3/certs",
            ),
        }
    }

    /// `p` with what the preset fills in where `p` leaves it out.
    pub fn apply(self, p: &ProviderSpec) -> ProviderSpec {
        let (issuer, jwks_uri) = self.endpoints();
        let mut out = p.clone();
        if out.issuer.is_empty() {
            out.issuer = issuer.to_string();
        }
        if out.jwks_uri.is_none() && out.jwks.is_none() {
            out.jwks_uri = Some(jwks_uri.to_string());
        }
        out
    }
}

/// An RFC 7662 introspection endpoint and the client credentials it takes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectionSpec {
    /// `https://id.example.com/oauth2/introspect`.
    pub endpoint: String,
    pub client_id: String,
    /// The client secret: a key of a Secret in the route's namespace (read by the sessions
    /// service, never rendered).
    pub client_secret_ref: SecretKeyRef,
    /// The answer's claim naming the client (`x-nexus-client-id`); default `sub`, then
    /// `client_id` for a token without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_claim: Option<String>,
}

/// The OAuth client a provider signs browsers in with (authorization code, PKCE, `state`,
/// `nonce`), run by the sessions service, which alone reads the secret. Google:
/// `issuer: https://accounts.google.com`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignInSpec {
    pub client_id: String,
    /// The client secret: a key of a Secret in the route's namespace.
    pub client_secret_ref: SecretKeyRef,
    /// The callback as browsers reach it, registered at the provider
    /// (`https://portal.example.com/_nexus/callback`; the path must be `/_nexus/callback`).
    pub redirect_uri: String,
    /// Default `openid email profile`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The ID-token claim naming the client (`x-nexus-client-id`); default `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_claim: Option<String>,
}

/// A GitHub OAuth App or GitHub App whose user tokens are checked.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubSpec {
    pub client_id: String,
    /// The app's client secret: a key of a Secret in the route's namespace.
    pub client_secret_ref: SecretKeyRef,
    /// GitHub's REST API root (default `https://api.github.com`; GitHub Enterprise Server:
    /// `https://HOST/api/v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Also read the user's organizations and teams (tokens need `read:org`): scopes
    /// `org:<login>` and `team:<org>/<team-slug>` (so `oauth2.scopes` admits members alone),
    /// claims `orgs` and `teams` for `claimsToHeaders`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memberships: bool,
}

/// One key of a Secret in the route's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// At most one of `header`, `query`, `cookie`; none means the `Authorization: Bearer` header.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Value prefix stripped from `header` (`Token `).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// API keys from a Secret in the route's namespace: each data key is the lower-case hex
/// SHA-256 of an API key, its value JSON `{"clientId": "...", "scopes": ["..."]}`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysSpec {
    pub secret_ref: SecretRef,
    /// Header carrying the key (default `x-api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretRef {
    pub name: String,
}

/// Exactly one of `allow`, `jwt`, `apiKey`, `session`, `oauth2`, `anyOf`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthRequirement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtRequirementSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyRequirementSpec>,
    /// A sign-in session (`spec.auth.sessions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRequirementSpec>,
    /// An opaque OAuth2 token of an `introspection` or `github` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2RequirementSpec>,
    /// Any one of these (each exactly one of `jwt`, `apiKey`, `session`, `oauth2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<SimpleRequirement>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimpleRequirement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtRequirementSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyRequirementSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRequirementSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2RequirementSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2RequirementSpec {
    /// Names from `auth.providers` (`introspection` or `github` ones); empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Every scope listed must be among the token's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequirementSpec {
    /// Every scope listed must be among the session's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtRequirementSpec {
    /// Names from `auth.providers`; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_claims: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRequirementSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// `Client` (per authenticated client id), `Route` (all callers together) or `Header`.
    pub by: RateLimitBy,
    /// Header whose value is counted separately, for `by: Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub requests: u32,
    pub per: RateUnit,
    /// Count, never reject.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// What this limit does while the rate-limit service cannot answer: `localFallback`
    /// (the default: each proxy enforces the limit alone), `open` (admit, counted in
    /// `nexus_ratelimit_degraded{mode="fail_open"}`) or `closed` (answer 500
    /// `rate_limit_unavailable`, as Envoy's ratelimit filter does with `failure_mode_deny`).
    /// A request is refused when any of its limits fails closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<LimitFailureMode>,
    /// `Strict` (the default: every request asks the rate-limit service) or `Leased`: each
    /// proxy admits requests from quota it leased from the limit's window budget, renewed in
    /// the background, so a request makes no network call. Across all proxies a window admits
    /// at most `requests` from leases; while a proxy's lease is empty and its renewal has not
    /// answered, `failureMode` decides (see the README's rate-limit section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LimitMode>,
    /// Lease sizes and timings for `mode: Leased` (defaults otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LimitMode {
    Strict,
    Leased,
}

/// How a `Leased` limit takes quota.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    /// One lease, in percent of `requests` (1–100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_percent: Option<u32>,
    /// Renew when a proxy's lease is down to this percent of a lease (0–99, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_below_percent: Option<u32>,
    /// Give unused quota back after this long without a request (`500ms`, `2s`; default 2 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_return: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LimitFailureMode {
    Open,
    Closed,
    LocalFallback,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RateLimitBy {
    Client,
    Route,
    Header,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NexusRouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of rules programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<u32>,
    /// The EnvoyFilter (in this namespace) this route's filters were last rendered into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_filter: Option<String>,
    /// Proxies running this route's current configuration, of those its selector matches
    /// (`2/3`); the `Enforced` condition names the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A metav1.Condition.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// The CRD YAML as checked into `charts/nexus/crds/nexusroutes.yaml`.
///
/// `null` is dropped from `enum` lists (schemars lists it for optional enums; with it, a
/// v1.20 apiserver rejects the CRD: the value does not survive its internal round trip), and
/// so is `additionalProperties: false` (the guard block's types deny unknown fields, which a
/// structural schema cannot say: the apiserver prunes unknown fields instead, and `nexus up`
/// and `nexus validate` refuse them).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(NexusRoute::crd()).unwrap_or_default();
    strip_null_enums(&mut crd);
    strip_closed_objects(&mut crd);
    let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
    format!(
        "# Generated by `nexus crd`; do not edit.\n---\n{}",
        quote_yaml11_booleans(&yaml)
    )
}

/// serde_yaml writes YAML 1.2, where `off` is a string; the apiserver, helm and kubectl read
/// YAML 1.1, where `off`, `on`, `yes`, `no`, `y` and `n` are booleans. Such scalars (the guard's
/// `action: off`) are quoted so every reader sees the string.
fn quote_yaml11_booleans(yaml: &str) -> String {
    const WORDS: [&str; 6] = ["off", "on", "yes", "no", "y", "n"];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let split = line.rfind(": ").map(|i| i + 2).or_else(|| {
            line.trim_start()
                .starts_with("- ")
                .then(|| line.find("- ").unwrap_or(0) + 2)
        });
        match split {
            Some(at) if WORDS.iter().any(|w| line[at..].eq_ignore_ascii_case(w)) => {
                out.push_str(&line[..at]);
                out.push_str(&format!("'{}'", &line[at..]));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn strip_null_enums(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "enum" {
                    if let serde_json::Value::Array(items) = child {
                        items.retain(|i| !i.is_null());
                    }
                } else {
                    strip_null_enums(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_null_enums),
        _ => {}
    }
}

fn strip_closed_objects(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(strip_closed_objects);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_closed_objects),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_booleans_are_quoted_and_other_lines_kept() {
        let yaml = "a: off\nenum:\n- off\n- detect\ndescription: switches it off\nb: 'x'\n";
        assert_eq!(
            quote_yaml11_booleans(yaml),
            "a: 'off'\nenum:\n- 'off'\n- detect\ndescription: switches it off\nb: 'x'\n"
        );
        assert!(crd_yaml().contains("default: 'off'"));
    }

    #[test]
    fn group_and_version_constants_match_the_derive() {
        use kube::Resource;
        assert_eq!(NexusRoute::group(&()), GROUP);
        assert_eq!(NexusRoute::version(&()), VERSION);
    }
}
