//! The sessions contract between the auth filter and the sessions service (hosted by the
//! controller binary): how a proxy looks a session up, what it gets back, and how a revocation
//! reaches every proxy.
//!
//! `GET /sessions/v1/lookup` with the session id in the [`LOOKUP_HEADER`] header (never in
//! the path: paths end up in access logs). Answers:
//!
//! - 200 with a [`SessionIdentity`]: the session is live;
//! - 404 `{"error":"unknown_session",...}`: no such session, expired or revoked;
//! - 503 `{"error":"unavailable",...}`: the store (Redis) cannot be read.
//!
//! Revoking a session publishes a cache-coherency invalidation (the event stream every proxy
//! already follows) naming the key [`revocation_key`] of the session: the SHA-256 of its id,
//! never the id itself.
//!
//! Opaque OAuth2 tokens are checked through the same service: `GET`
//! [`INTROSPECT_PATH_PREFIX`]`<provider>` with the token in the [`TOKEN_HEADER`] header (the
//! service holds the provider's endpoint and client secret, the filter never does). Answers:
//!
//! - 200 with a [`SessionIdentity`]: the token is active (`expires_at_s` is its `exp`, or the
//!   time the service stops vouching for it);
//! - 404 `{"error":"inactive_token",...}`: the provider says the token is not active;
//! - 503 `{"error":"introspection_unavailable","detail":...}`: the provider or the service
//!   could not say (timeout, 5xx, garbage, unknown provider), the detail says which.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Path of the lookup on the controller's HTTP port.
pub const LOOKUP_PATH: &str = "/sessions/v1/lookup";

/// Request header carrying the session id of a lookup.
pub const LOOKUP_HEADER: &str = "x-nexus-session-id";

/// Path prefix of token introspection; the provider's name follows.
pub const INTROSPECT_PATH_PREFIX: &str = "/sessions/v1/introspect/";

/// Request header carrying the token of an introspection.
pub const TOKEN_HEADER: &str = "x-nexus-token";

/// Prefix of the invalidation key that revokes a session in every proxy's cache.
pub const REVOCATION_PREFIX: &str = "nexus-session:";

/// The invalidation key revoking a session: [`REVOCATION_PREFIX`] and the lower-case hex
/// SHA-256 of the session id.
pub fn revocation_key(id_sha256_hex: &str) -> String {
    format!("{REVOCATION_PREFIX}{id_sha256_hex}")
}

/// Who a session belongs to, as the auth filter would derive it from a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionIdentity {
    /// `x-nexus-client-id` of requests made with this session.
    pub client_id: String,
    /// Scopes granted (a rule's `session.scopes` must be among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Request headers set for the upstream (claims mapped to headers at sign-in).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Unix seconds after which the session is no longer valid.
    pub expires_at_s: u64,
}
