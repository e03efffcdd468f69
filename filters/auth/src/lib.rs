//! The nexus-auth filter, host-agnostic.
//!
//! For each request: strip identity headers a client may have sent, find the first rule that
//! matches, and check its requirement — a JWT from configured providers, an API key, any of
//! several, or nothing. Success sets `x-nexus-client-id`, `x-nexus-auth-method` and configured
//! claim headers and hands the identity to the adapter (which sets Envoy properties); failure is
//! a decided JSON response: 401, 403, or 503 when keys cannot be had.
//!
//! JWTs: a verified token's claims are cached in shared data under the SHA-256 of the token, so
//! a reused token costs a hash and a lookup, not a signature check. Remote JWKS are kept in
//! shared data too (one copy for every worker), refreshed on ticks, and fetched at once when a
//! token names an unknown `kid` (rate-limited); the request waits for that fetch
//! ([`Outcome::Pause`]). A failed refresh keeps serving the keys already held.
//!
//! Where each part lives: `compile` (config → [`Auth`]), `check` (one request's decision),
//! `verified` (a token's claims: cached, or verified with the provider's keys), `remote_jwks`
//! (fetching and sharing remote keys), `deny` (why a request failed, as a response).

pub mod audit;
mod cache;
mod check;
mod compile;
mod deny;
#[cfg(any(test, feature = "testkit"))]
pub mod differential;
pub mod ecdsa;
pub mod ed25519;
pub mod jwks;
mod lookup;
mod oauth2;
mod remote_jwks;
pub mod request_line;
pub mod rsa;
mod session;
mod session_feed;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod token;
mod verified;
pub mod verify;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use nexus_config::auth::{IdentityOut, NoMatchAction};
use nexus_filter_core::fasthash::{self, FxBuild};
use nexus_filter_core::{Callouts, Clock, LocalResponse, Log, Metrics, SharedData};
use serde_json::{Map, Value};

pub use session_feed::FeedAction;

use compile::{ApiKey, Provider, Rule};
use remote_jwks::WorkerKeys;
use verify::SignatureVerifier;

/// What auth tells later filters: see `nexus_config::contract`.
pub use nexus_config::contract::{
    AUTH_METHOD as HEADER_AUTH_METHOD, CLIENT_ID as HEADER_CLIENT_ID, PROPERTY_AUTH_METHOD,
    PROPERTY_CLIENT_ID,
};

/// Everything the filter needs from its host, borrowed for one callback.
pub struct Env<'a> {
    pub clock: &'a dyn Clock,
    pub metrics: &'a dyn Metrics,
    pub shared: &'a dyn SharedData,
    pub log: &'a dyn Log,
    pub callouts: &'a dyn Callouts,
}

/// Who the caller is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    /// `jwt:<provider>`, `oauth2:<provider>`, `api_key` or `session`.
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward; with the caller's identity when the rule required one.
    Continue(Option<Identity>),
    Respond(LocalResponse),
    /// The request waits for a JWKS fetch on this worker: after the next
    /// [`Auth::on_http_call_response`], call [`Auth::on_request_headers`] again.
    Pause,
}

/// A configured filter, shared by every request on a worker.
pub struct Auth {
    /// Indexed by position: rules and caches refer to providers by index.
    providers: Vec<Provider>,
    api_key_header: String,
    api_keys: Vec<ApiKey>,
    rules: Vec<Rule>,
    on_no_match: NoMatchAction,
    cache_entries: u32,
    cache_ttl_s: u64,
    identity: IdentityOut,
    refetch_min_s: u64,
    /// Shared-data key prefix, unique to this configuration.
    prefix: String,
    /// Claims kept in the token cache (all of them when the payload is forwarded).
    needed_claims: Vec<String>,
    /// Headers this filter sets, removed from every incoming request first.
    owned_headers: Vec<String>,
    verifier: Box<dyn SignatureVerifier>,
    /// This worker's keys of each provider (same index).
    keys: RefCell<Vec<WorkerKeys>>,
    /// Callout token → (provider, deadline in unix seconds), for the JWKS fetches this worker
    /// has in flight. Envoy answers every callout by its timeout, except one cancelled with the
    /// stream that made it: the deadline covers that.
    pending: RefCell<BTreeMap<u32, (usize, u64)>>,
    /// This worker's copy of recently verified tokens, keyed by the token itself: a reused
    /// token costs a hash-map lookup, not a SHA-256, a shared-data copy and a JSON parse.
    local: RefCell<LocalCache>,
    /// Sign-in sessions, when configured.
    sessions: Option<session::SessionStore>,
    /// Providers of opaque OAuth2 tokens (checked by the sessions service), by index.
    introspected: Vec<oauth2::Introspected>,
    /// Where the adapter sends audit records, if anywhere.
    audit: Option<nexus_config::audit::AuditSink>,
}

/// Keyed by [`local_key`]; the entry keeps the token, compared in full on every hit, so a
/// colliding token is a miss (and replaces the entry), never a wrong answer.
type LocalCache = HashMap<u64, LocalEntry, FxBuild>;

/// The per-worker cache's key: a hash of the token's last 64 bytes (the end of its signature,
/// which differs between any two tokens an issuer signs) and of its length. Hashing all of a
/// 700-byte RS256 token would cost the hit path a third of its work; tokens crafted to share a
/// tail only collide, costing the verification any unknown token costs.
fn local_key(token: &str) -> u64 {
    let b = token.as_bytes();
    fasthash::hash(&b[b.len().saturating_sub(64)..]).wrapping_add(b.len() as u64)
}

struct LocalEntry {
    token: Box<[u8]>,
    provider: usize,
    expires_s: u64,
    claims: Rc<Map<String, Value>>,
}

impl Auth {
    /// Replaces the signature verifier (the default is [`verify::RingVerifier`]).
    pub fn with_verifier(mut self, verifier: Box<dyn SignatureVerifier>) -> Self {
        self.verifier = verifier;
        self
    }

    /// Whether the adapter should publish an authenticated caller's identity as filter state
    /// ([`PROPERTY_CLIENT_ID`], [`PROPERTY_AUTH_METHOD`]).
    pub fn publishes_filter_state(&self) -> bool {
        self.identity.filter_state
    }

    /// The audit sink the adapter sends [`audit::record`]s to, if configured.
    pub fn audit_sink(&self) -> Option<&nexus_config::audit::AuditSink> {
        self.audit.as_ref()
    }

    /// Whether any provider fetches its keys (the adapter then asks for ticks).
    pub fn has_remote_jwks(&self) -> bool {
        self.providers.iter().any(|p| p.remote.is_some())
    }

    /// Whether the adapter should ask for ticks: remote keys to refresh, or session lookups or
    /// introspections whose deadlines must be watched.
    pub fn needs_ticks(&self) -> bool {
        self.has_remote_jwks() || self.sessions.is_some() || !self.introspected.is_empty()
    }
}

#[cfg(test)]
mod tests;
