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

mod cache;
pub mod ecdsa;
pub mod ed25519;
pub mod jwks;
pub mod rsa;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod token;
pub mod verify;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use nexus_config::auth::{AuthConfig, IdentityOut, Jwks, NoMatchAction, Requirement, TokenSource};
use nexus_config::{ConfigError, ConfigErrors};
use nexus_filter_core::fasthash::{self, FxBuild};
use nexus_filter_core::{
    Callouts, Clock, HeaderList, HeaderMap, Level, LocalResponse, Log, Metrics, SharedData,
};
use ring::digest;
use serde_json::{Map, Value};

use jwks::KeySet;
use nexus_filter_core::matcher::{CompiledMatch, RequestView};
use verify::{Alg, RingVerifier, SignatureVerifier};

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
    /// `jwt:<provider>` or `api_key`.
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

/// Why a requirement was not met, ranked: the most informative failure of an `any_of` wins.
#[derive(Debug)]
enum Fail {
    Missing,
    Invalid {
        error: &'static str,
        detail: String,
        bearer: bool,
    },
    Forbidden {
        error: &'static str,
        detail: String,
        bearer: bool,
    },
    Unavailable(String),
    Waiting,
}

impl Fail {
    fn rank(&self) -> u8 {
        match self {
            Fail::Missing => 1,
            Fail::Invalid { .. } => 2,
            Fail::Forbidden { .. } => 3,
            Fail::Unavailable(_) => 4,
            Fail::Waiting => 5,
        }
    }
    fn invalid_token(detail: impl Into<String>) -> Self {
        Fail::Invalid {
            error: "invalid_token",
            detail: detail.into(),
            bearer: true,
        }
    }
}

fn worse(a: Option<Fail>, b: Fail) -> Fail {
    match a {
        Some(a) if a.rank() >= b.rank() => a,
        _ => b,
    }
}

enum Req {
    Allow,
    Jwt {
        providers: Vec<usize>,
        claims: Vec<(String, String)>,
        scopes: Vec<String>,
    },
    ApiKey {
        scopes: Vec<String>,
    },
    AnyOf(Vec<Req>),
}

struct Rule {
    name: String,
    matcher: CompiledMatch,
    req: Req,
}

/// The shared record of a provider's last JWKS fetch: `<started_s>`, then `<started_s>:done`
/// once answered or given up.
struct Attempt {
    started_s: u64,
    done: bool,
}

impl Attempt {
    fn parse(v: &[u8]) -> Self {
        let text = std::str::from_utf8(v).unwrap_or_default();
        let (started, done) = match text.split_once(':') {
            Some((s, _)) => (s, true),
            None => (text, false),
        };
        Self {
            started_s: started.parse().unwrap_or(0),
            done,
        }
    }
}

struct Remote {
    cluster: String,
    authority: String,
    path: String,
    refresh_s: u64,
    timeout_ms: u64,
}

struct Provider {
    name: String,
    /// `jwt:<name>`, the identity's method, made once.
    method: String,
    issuer: String,
    audiences: Vec<String>,
    sources: Vec<TokenSource>,
    skew_s: u64,
    claims_to_headers: Vec<(String, String)>,
    forward: bool,
    remote: Option<Remote>,
}

struct ApiKey {
    hash: [u8; 32],
    client_id: String,
    scopes: Vec<String>,
}

/// One worker's view of a provider's keys.
#[derive(Default, Clone)]
struct WorkerKeys {
    set: Option<Rc<KeySet>>,
    /// CAS token of the shared-data copy `set` was parsed from.
    version: Option<u32>,
    fetched_at_s: u64,
}

/// A configured filter, shared by every request on a worker.
pub struct Auth {
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
    keys: RefCell<Vec<WorkerKeys>>,
    /// Callout token → provider, for fetches this worker has in flight.
    /// Callout token → (provider, deadline in unix seconds). Envoy answers every callout by its
    /// timeout, except one cancelled with the stream that made it: the deadline covers that.
    pending: RefCell<BTreeMap<u32, (usize, u64)>>,
    /// This worker's copy of recently verified tokens, keyed by the token itself: a reused
    /// token costs a hash-map lookup, not a SHA-256, a shared-data copy and a JSON parse.
    local: RefCell<LocalCache>,
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
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let config: AuthConfig = nexus_config::parse(bytes)?;
        let digest = digest::digest(&digest::SHA256, bytes);
        let prefix = format!("nexus-auth.{}.", hex(&digest.as_ref()[..6]));
        Self::new(&config, &prefix)
    }

    pub fn new(config: &AuthConfig, prefix: &str) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let names: Vec<&String> = config.providers.keys().collect();
        let mut providers = Vec::new();
        let mut keys = Vec::new();
        let mut owned_headers = vec![HEADER_CLIENT_ID.to_string(), HEADER_AUTH_METHOD.to_string()];
        let mut needed: Vec<String> = vec![
            config.identity.client_id_claim.clone(),
            "scope".into(),
            "scp".into(),
        ];
        for (name, p) in &config.providers {
            let at = format!("$.providers.{name}");
            let (remote, set) = match &p.jwks {
                Jwks::Inline(doc) => match KeySet::parse(doc.as_bytes()) {
                    Ok(set) => (None, Some(Rc::new(set))),
                    Err(e) => {
                        errors.push(ConfigError::new(format!("{at}.jwks.inline"), e));
                        (None, None)
                    }
                },
                Jwks::Remote(r) => {
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
                    let remote = Remote {
                        cluster: r.cluster.clone(),
                        authority: authority.to_string(),
                        path: path.to_string(),
                        refresh_s: r.refresh_period_s,
                        timeout_ms: r.timeout_ms,
                    };
                    (Some(remote), None)
                }
            };
            for c in &p.claims_to_headers {
                needed.push(c.claim.clone());
                owned_headers.push(c.header.clone());
            }
            keys.push(WorkerKeys {
                set,
                ..Default::default()
            });
            providers.push(Provider {
                name: name.clone(),
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
            });
        }
        if let Some(h) = &config.identity.payload_header {
            owned_headers.push(h.clone());
        }
        let mut api_keys = Vec::new();
        if let Some(k) = &config.api_keys {
            for key in &k.keys {
                let mut hash = [0u8; 32];
                if let Some(bytes) = unhex(&key.sha256) {
                    if bytes.len() == 32 {
                        hash.copy_from_slice(&bytes);
                    }
                }
                api_keys.push(ApiKey {
                    hash,
                    client_id: key.client_id.clone(),
                    scopes: key.scopes.clone(),
                });
            }
        }
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let at = format!("$.rules[{i}]");
            let req = compile_req(&rule.requirement, &names, &mut needed);
            match CompiledMatch::compile(&rule.matcher, &format!("{at}.match")) {
                Ok(matcher) => rules.push(Rule {
                    name: rule.name.clone(),
                    matcher,
                    req,
                }),
                Err(mut e) => errors.append(&mut e),
            }
        }
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
            api_keys,
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
        })
    }

    /// Replaces the signature verifier (the default is [`RingVerifier`]).
    pub fn with_verifier(mut self, verifier: Box<dyn SignatureVerifier>) -> Self {
        self.verifier = verifier;
        self
    }

    /// Whether the adapter should publish an authenticated caller's identity as filter state
    /// ([`PROPERTY_CLIENT_ID`], [`PROPERTY_AUTH_METHOD`]).
    pub fn publishes_filter_state(&self) -> bool {
        self.identity.filter_state
    }

    /// Whether any provider fetches its keys (the adapter then asks for ticks).
    pub fn has_remote_jwks(&self) -> bool {
        self.providers.iter().any(|p| p.remote.is_some())
    }

    /// Decides one request. `may_fetch`: whether an unknown `kid` or missing keys may start a
    /// JWKS fetch (false when re-deciding a request that already waited for one).
    pub fn on_request_headers(
        &self,
        headers: &mut impl HeaderMap,
        env: &Env,
        may_fetch: bool,
    ) -> Outcome {
        let mut pairs = headers.pairs();
        let before = pairs.len();
        pairs.retain(|k, _| !self.owned_headers.iter().any(|h| h == k));
        if pairs.len() != before {
            for h in &self.owned_headers {
                headers.remove(h);
            }
            env.metrics.increment(
                "nexus_auth.spoofed_headers_removed",
                i64::try_from(before - pairs.len()).unwrap_or(1),
            );
        }
        let view = RequestView::new(&pairs, "");
        let Some(rule) = self.rules.iter().find(|r| r.matcher.matches(&view)) else {
            return match self.on_no_match {
                NoMatchAction::Allow => {
                    env.metrics.increment("nexus_auth.allowed.no_rule", 1);
                    Outcome::Continue(None)
                }
                NoMatchAction::Deny => {
                    env.metrics.increment("nexus_auth.denied.no_rule", 1);
                    let detail =
                        format!("no auth rule matches {} {}", view.method, view.path_only());
                    Outcome::Respond(LocalResponse::json_error(403, "access_denied", &detail))
                }
            };
        };
        let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
        let mut ctx = Check {
            auth: self,
            pairs: &pairs,
            env,
            now_s,
            may_fetch,
        };
        match ctx.check(&rule.req) {
            Ok(None) => {
                env.metrics.increment("nexus_auth.allowed.anonymous", 1);
                Outcome::Continue(None)
            }
            Ok(Some(granted)) => {
                let metric = if granted.identity.method == "api_key" {
                    "nexus_auth.allowed.api_key"
                } else {
                    "nexus_auth.allowed.jwt"
                };
                env.metrics.increment(metric, 1);
                for s in &granted.strip {
                    match s {
                        Strip::Header(name) => headers.remove(name),
                        Strip::Path(path) => headers.set(":path", path),
                    }
                }
                if self.identity.headers {
                    headers.set(HEADER_CLIENT_ID, &granted.identity.client_id);
                    headers.set(HEADER_AUTH_METHOD, &granted.identity.method);
                }
                for (name, value) in &granted.headers {
                    headers.set(name, value);
                }
                Outcome::Continue(Some(granted.identity))
            }
            Err(fail) => self.deny(fail, &rule.name, env),
        }
    }

    fn deny(&self, fail: Fail, rule: &str, env: &Env) -> Outcome {
        let resp = match fail {
            Fail::Waiting => return Outcome::Pause,
            Fail::Missing => {
                env.metrics
                    .increment("nexus_auth.denied.missing_credentials", 1);
                LocalResponse::json_error(
                    401,
                    "missing_credentials",
                    &format!("rule {rule} requires credentials and the request carries none"),
                )
                .with_header("www-authenticate", "Bearer realm=\"nexus\"")
            }
            Fail::Invalid {
                error,
                detail,
                bearer,
            } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                let r = LocalResponse::json_error(401, error, &detail);
                if bearer {
                    r.with_header(
                        "www-authenticate",
                        &bearer_challenge("invalid_token", &detail),
                    )
                } else {
                    r.with_header(
                        "www-authenticate",
                        &format!("ApiKey header=\"{}\"", self.api_key_header),
                    )
                }
            }
            Fail::Forbidden {
                error,
                detail,
                bearer,
            } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                let r = LocalResponse::json_error(403, error, &detail);
                if bearer {
                    r.with_header(
                        "www-authenticate",
                        &bearer_challenge("insufficient_scope", &detail),
                    )
                } else {
                    r
                }
            }
            Fail::Unavailable(detail) => {
                env.metrics
                    .increment("nexus_auth.denied.jwks_unavailable", 1);
                LocalResponse::json_error(503, "jwks_unavailable", &detail)
            }
        };
        Outcome::Respond(resp)
    }

    /// Periodic work: pick up keys other workers fetched, refresh keys that are due.
    ///
    /// Returns true if a fetch was given up (never answered by its deadline, e.g. cancelled with
    /// the request that made it) or keys arrived from another worker's fetch: the adapter should
    /// then re-decide the requests waiting.
    pub fn on_tick(&self, env: &Env) -> bool {
        let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
        let mut given_up = Vec::new();
        self.pending.borrow_mut().retain(|_, (i, deadline)| {
            let keep = *deadline > now_s;
            if !keep {
                given_up.push(*i);
            }
            keep
        });
        for &i in &given_up {
            self.finish_attempt(i, env);
        }
        let expired = given_up.len();
        let mut synced = false;
        if expired > 0 {
            env.metrics.increment(
                "nexus_auth.jwks.refresh_failed",
                i64::try_from(expired).unwrap_or(1),
            );
            env.log.log(
                Level::Warn,
                "nexus-auth: a JWKS fetch was never answered; giving up on it",
            );
        }
        for (i, p) in self.providers.iter().enumerate() {
            let Some(remote) = &p.remote else { continue };
            let version = self.keys.borrow()[i].version;
            self.sync(i, env);
            synced |= self.keys.borrow()[i].version != version;
            let (has, fetched_at) = {
                let keys = self.keys.borrow();
                (keys[i].set.is_some(), keys[i].fetched_at_s)
            };
            let due = !has || now_s.saturating_sub(fetched_at) >= remote.refresh_s;
            if due {
                let retry = remote.refresh_s.min(self.refetch_min_s.max(1));
                self.try_fetch(i, env, now_s, retry);
            }
        }
        expired > 0 || synced
    }

    /// Feeds the answer of an HTTP callout (`status` None: failed or timed out). Returns false
    /// if the token is not one of this worker's JWKS fetches.
    pub fn on_http_call_response(
        &self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        env: &Env,
    ) -> bool {
        let Some((i, _)) = self.pending.borrow_mut().remove(&token) else {
            return false;
        };
        self.finish_attempt(i, env);
        let p = &self.providers[i];
        let result = match status {
            Some(200) => KeySet::parse(body),
            Some(s) => Err(format!("status {s}")),
            None => Err("no response (connection failure or timeout)".to_string()),
        };
        match result {
            Ok(set) => {
                let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
                let mut doc = format!("{now_s}\n").into_bytes();
                doc.extend_from_slice(body);
                let key = format!("{}jwks.{}", self.prefix, p.name);
                let _ = env.shared.set(&key, &doc, None);
                let version = env.shared.get(&key).map(|(_, cas)| cas);
                self.keys.borrow_mut()[i] = WorkerKeys {
                    set: Some(Rc::new(set)),
                    version,
                    fetched_at_s: now_s,
                };
                env.metrics.increment("nexus_auth.jwks.refreshed", 1);
            }
            Err(e) => {
                env.metrics.increment("nexus_auth.jwks.refresh_failed", 1);
                let stale = if self.keys.borrow()[i].set.is_some() {
                    "serving the keys already held"
                } else {
                    "no keys held"
                };
                env.log.log(
                    Level::Warn,
                    &format!("nexus-auth: JWKS fetch for {} failed: {e}; {stale}", p.name),
                );
            }
        }
        true
    }

    /// Re-reads the shared copy of a remote provider's keys if another worker changed it.
    fn sync(&self, i: usize, env: &Env) {
        if self.providers[i].remote.is_none() {
            return;
        }
        let key = format!("{}jwks.{}", self.prefix, self.providers[i].name);
        let Some((bytes, cas)) = env.shared.get(&key) else {
            return;
        };
        if self.keys.borrow()[i].version == Some(cas) {
            return;
        }
        let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
            return;
        };
        let fetched_at_s = std::str::from_utf8(&bytes[..nl])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Ok(set) = KeySet::parse(&bytes[nl + 1..]) {
            self.keys.borrow_mut()[i] = WorkerKeys {
                set: Some(Rc::new(set)),
                version: Some(cas),
                fetched_at_s,
            };
        }
    }

    /// Keeps a verified token in this worker's cache (bounded: when full, it starts over).
    fn remember(
        &self,
        token: &str,
        provider: usize,
        expires_s: u64,
        claims: &Rc<Map<String, Value>>,
    ) {
        let mut local = self.local.borrow_mut();
        if local.len() >= self.cache_entries as usize {
            local.clear();
        }
        local.insert(
            local_key(token),
            LocalEntry {
                token: token.as_bytes().into(),
                provider,
                expires_s,
                claims: claims.clone(),
            },
        );
    }

    fn in_flight(&self, i: usize) -> bool {
        self.pending.borrow().values().any(|(p, _)| *p == i)
    }

    fn attempt_key(&self, i: usize) -> String {
        format!("{}jwks-attempt.{}", self.prefix, self.providers[i].name)
    }

    /// Whether another worker has a fetch for provider `i` on the wire (started, not answered,
    /// not past its timeout). A request that needs those keys waits for them rather than
    /// failing: they reach this worker through shared data on its next tick.
    fn fetching_elsewhere(&self, i: usize, env: &Env, now_s: u64) -> bool {
        let Some(remote) = &self.providers[i].remote else {
            return false;
        };
        let Some((v, _)) = env.shared.get(&self.attempt_key(i)) else {
            return false;
        };
        let a = Attempt::parse(&v);
        !a.done && now_s <= a.started_s + remote.timeout_ms.div_ceil(1000) + 1
    }

    /// Marks the shared attempt record answered (or given up), so no worker waits on it.
    fn finish_attempt(&self, i: usize, env: &Env) {
        let key = self.attempt_key(i);
        if let Some((v, cas)) = env.shared.get(&key) {
            let a = Attempt::parse(&v);
            if !a.done {
                // Best effort: a lost race means another worker restarted the record.
                let _ = env
                    .shared
                    .set(&key, format!("{}:done", a.started_s).as_bytes(), Some(cas));
            }
        }
    }

    /// Starts a fetch unless one is in flight here or one started anywhere within
    /// `min_interval_s` (one record in shared data, claimed with compare-and-swap).
    fn try_fetch(&self, i: usize, env: &Env, now_s: u64, min_interval_s: u64) -> bool {
        let p = &self.providers[i];
        let Some(remote) = &p.remote else {
            return false;
        };
        if self.in_flight(i) {
            return false;
        }
        let key = self.attempt_key(i);
        let cas = match env.shared.get(&key) {
            Some((v, cas)) => {
                let last = Attempt::parse(&v).started_s;
                if now_s < last.saturating_add(min_interval_s) {
                    return false;
                }
                Some(cas)
            }
            None => None,
        };
        if env
            .shared
            .set(&key, now_s.to_string().as_bytes(), cas)
            .is_err()
        {
            return false;
        }
        let headers = [
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", "nexus-auth"),
        ];
        match env
            .callouts
            .dispatch_http_call(&remote.cluster, &headers, b"", remote.timeout_ms)
        {
            Ok(token) => {
                let deadline = now_s + remote.timeout_ms.div_ceil(1000) + 2;
                self.pending.borrow_mut().insert(token, (i, deadline));
                env.metrics.increment("nexus_auth.jwks.fetches", 1);
                true
            }
            Err(_) => {
                self.finish_attempt(i, env);
                env.metrics.increment("nexus_auth.jwks.refresh_failed", 1);
                env.log.log(
                    Level::Warn,
                    &format!(
                        "nexus-auth: cannot dispatch the JWKS fetch for {} to cluster {}",
                        p.name, remote.cluster
                    ),
                );
                false
            }
        }
    }
}

struct Granted {
    identity: Identity,
    headers: Vec<(String, String)>,
    /// Where the credential came from, to remove it before the upstream sees it.
    strip: Vec<Strip>,
}

enum Strip {
    Header(String),
    /// The request path without the token's query parameter.
    Path(String),
}

/// One request's evaluation.
struct Check<'a> {
    auth: &'a Auth,
    pairs: &'a HeaderList,
    env: &'a Env<'a>,
    now_s: u64,
    may_fetch: bool,
}

impl Check<'_> {
    fn check(&mut self, req: &Req) -> Result<Option<Granted>, Fail> {
        match req {
            Req::Allow => Ok(None),
            Req::ApiKey { scopes } => self.api_key(scopes).map(Some),
            Req::Jwt {
                providers,
                claims,
                scopes,
            } => self.jwt(providers, claims, scopes).map(Some),
            Req::AnyOf(list) => {
                let mut worst = None;
                for r in list {
                    match self.check(r) {
                        Ok(g) => return Ok(g),
                        Err(f) => worst = Some(worse(worst, f)),
                    }
                }
                Err(worst.unwrap_or(Fail::Missing))
            }
        }
    }

    fn api_key(&self, scopes: &[String]) -> Result<Granted, Fail> {
        let a = self.auth;
        let Some(presented) = self.pairs.get(&a.api_key_header) else {
            return Err(Fail::Missing);
        };
        let hash = digest::digest(&digest::SHA256, presented.trim().as_bytes());
        // Compare against every key, without early exit, so timing says nothing about which.
        let mut found = None;
        for (i, key) in a.api_keys.iter().enumerate() {
            let diff = key
                .hash
                .iter()
                .zip(hash.as_ref())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y));
            if diff == 0 {
                found = Some(i);
            }
        }
        let Some(key) = found.map(|i| &a.api_keys[i]) else {
            return Err(Fail::Invalid {
                error: "invalid_api_key",
                detail: format!("the {} header carries no known key", a.api_key_header),
                bearer: false,
            });
        };
        if let Some(missing) = scopes.iter().find(|s| !key.scopes.contains(s)) {
            return Err(Fail::Forbidden {
                error: "insufficient_scope",
                detail: format!("API key of {} lacks scope {missing}", key.client_id),
                bearer: false,
            });
        }
        Ok(Granted {
            identity: Identity {
                client_id: key.client_id.clone(),
                method: "api_key".to_string(),
            },
            headers: Vec::new(),
            strip: Vec::new(),
        })
    }

    fn jwt(
        &mut self,
        providers: &[usize],
        claims: &[(String, String)],
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        let find = |p: usize| {
            self.auth.providers[p]
                .sources
                .iter()
                .enumerate()
                .find_map(|(i, s)| token::extract(s, self.pairs).map(|t| (t, i)))
        };
        // The common rule names one provider: no grouping, nothing allocated.
        if let [p] = providers {
            let (t, source) = find(*p).ok_or(Fail::Missing)?;
            return self.grant(t, &[*p], &[source], claims, scopes);
        }
        // (token, providers that found it there, the source each found it in)
        let mut tokens: Vec<(&str, Vec<usize>, Vec<usize>)> = Vec::new();
        for &p in providers {
            if let Some((t, source)) = find(p) {
                match tokens.iter_mut().find(|(seen, _, _)| *seen == t) {
                    Some((_, ps, ss)) => {
                        ps.push(p);
                        ss.push(source);
                    }
                    None => tokens.push((t, vec![p], vec![source])),
                }
            }
        }
        let mut worst = None;
        for (t, candidates, sources) in &tokens {
            match self.grant(t, candidates, sources, claims, scopes) {
                Ok(granted) => return Ok(granted),
                Err(f) => worst = Some(worse(worst, f)),
            }
        }
        Err(worst.unwrap_or(Fail::Missing))
    }

    /// Verifies `token` for one of `candidates` (each found it in `sources[i]`), then checks
    /// the rule's claims and scopes.
    fn grant(
        &mut self,
        token: &str,
        candidates: &[usize],
        sources: &[usize],
        claims: &[(String, String)],
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        let (p, c) = self.verified_claims(token, candidates)?;
        let mut granted = self.authorize(p, &c, claims, scopes)?;
        let provider = &self.auth.providers[p];
        if !provider.forward {
            // The source this provider found the token in (found above, not again).
            granted.strip = candidates
                .iter()
                .position(|c| *c == p)
                .and_then(|i| sources.get(i))
                .and_then(|&i| provider.sources.get(i))
                .and_then(|s| token::strip(s, self.pairs))
                .into_iter()
                .collect();
        }
        Ok(granted)
    }

    fn authorize(
        &self,
        p: usize,
        c: &Map<String, Value>,
        required: &[(String, String)],
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        for (name, want) in required {
            if claim_string(c.get(name)).as_deref() != Some(want.as_str()) {
                return Err(Fail::Forbidden {
                    error: "claim_mismatch",
                    detail: format!("claim {name} must be {want:?}"),
                    bearer: true,
                });
            }
        }
        for s in scopes {
            let in_scope = c
                .get("scope")
                .and_then(Value::as_str)
                .is_some_and(|v| v.split(' ').any(|x| x == s));
            let in_scp = match c.get("scp") {
                Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(s)),
                Some(Value::String(v)) => v.split(' ').any(|x| x == s),
                _ => false,
            };
            if !in_scope && !in_scp {
                return Err(Fail::Forbidden {
                    error: "insufficient_scope",
                    detail: format!("token lacks scope {s}"),
                    bearer: true,
                });
            }
        }
        let provider = &self.auth.providers[p];
        let client_id = claim_string(c.get(&self.auth.identity.client_id_claim))
            .unwrap_or_else(|| provider.issuer.clone());
        let mut headers = Vec::new();
        for (claim, header) in &provider.claims_to_headers {
            if let Some(v) = claim_string(c.get(claim)) {
                headers.push((header.clone(), v));
            }
        }
        if let Some(h) = &self.auth.identity.payload_header {
            use base64::Engine;
            let json = Value::Object(c.clone()).to_string();
            headers.push((
                h.clone(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json),
            ));
        }
        Ok(Granted {
            identity: Identity {
                client_id,
                method: provider.method.clone(),
            },
            headers,
            strip: Vec::new(),
        })
    }

    /// The claims of a token valid for one of `candidates`: from the cache, or verified.
    fn verified_claims(
        &mut self,
        token: &str,
        candidates: &[usize],
    ) -> Result<(usize, Rc<Map<String, Value>>), Fail> {
        let a = self.auth;
        let env = self.env;
        if a.cache_entries > 0 {
            let local = a.local.borrow();
            let hit = local
                .get(&local_key(token))
                .filter(|e| fasthash::eq(&e.token, token.as_bytes()));
            if let Some(e) = hit {
                if self.now_s < e.expires_s && candidates.contains(&e.provider) {
                    env.metrics.increment("nexus_auth.token_cache.hit", 1);
                    return Ok((e.provider, e.claims.clone()));
                }
            }
        }
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        if a.cache_entries > 0 {
            if let Some(e) = cache::get(env.shared, &a.prefix, a.cache_entries, &hash, self.now_s) {
                let p = usize::from(e.provider);
                if candidates.contains(&p) {
                    if let Ok(Value::Object(c)) = serde_json::from_slice(&e.claims) {
                        env.metrics.increment("nexus_auth.token_cache.hit", 1);
                        let c = Rc::new(c);
                        a.remember(token, p, e.expires_s, &c);
                        return Ok((p, c));
                    }
                }
            }
            env.metrics.increment("nexus_auth.token_cache.miss", 1);
        }
        let jws = token::Jws::parse(token).map_err(Fail::invalid_token)?;
        token::check_critical(&jws.header).map_err(Fail::invalid_token)?;
        let alg_name = jws
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| Fail::invalid_token("the header has no alg"))?;
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(Fail::invalid_token("alg none is not accepted"));
        }
        let alg = Alg::parse(alg_name)
            .ok_or_else(|| Fail::invalid_token(format!("unsupported alg {alg_name}")))?;
        let iss = jws
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| Fail::invalid_token("the token has no iss"))?;
        let Some(p) = candidates
            .iter()
            .copied()
            .find(|p| a.providers[*p].issuer == iss)
        else {
            return Err(Fail::invalid_token(format!(
                "issuer {iss} is not accepted here"
            )));
        };
        let kid = jws.header.get("kid").and_then(Value::as_str);
        let set = self.keys(p, kid)?;
        let named: Vec<&jwks::Jwk> = set
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .collect();
        let usable: Vec<&jwks::Jwk> = named
            .iter()
            .copied()
            .filter(|k| alg.fits(&k.material) && k.alg.as_deref().is_none_or(|x| x == alg_name))
            .collect();
        if usable.is_empty() {
            return Err(Fail::invalid_token(format!(
                "no key{} can verify {alg_name} (algorithm mismatch)",
                kid.map(|k| format!(" with kid {k}")).unwrap_or_default()
            )));
        }
        let message = jws.signing_input.as_bytes();
        if !usable
            .iter()
            .any(|k| a.verifier.verify(alg, &k.material, message, &jws.signature))
        {
            return Err(Fail::invalid_token("signature verification failed"));
        }
        let provider = &a.providers[p];
        let skew = provider.skew_s;
        let exp = jws
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| Fail::invalid_token("the token has no numeric exp"))?;
        if self.now_s > exp.saturating_add(skew) {
            return Err(Fail::invalid_token("the token has expired"));
        }
        if let Some(nbf) = jws.claims.get("nbf") {
            let nbf = nbf
                .as_u64()
                .ok_or_else(|| Fail::invalid_token("nbf is not a number"))?;
            if self.now_s.saturating_add(skew) < nbf {
                return Err(Fail::invalid_token("the token is not valid yet (nbf)"));
            }
        }
        if !provider.audiences.is_empty() {
            let ok = match jws.claims.get("aud") {
                Some(Value::String(s)) => provider.audiences.contains(s),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|s| provider.audiences.iter().any(|x| x == s)),
                _ => false,
            };
            if !ok {
                return Err(Fail::invalid_token("audience not accepted"));
            }
        }
        let kept: Map<String, Value> = if a.needed_claims.is_empty() {
            jws.claims.clone()
        } else {
            a.needed_claims
                .iter()
                .filter_map(|n| jws.claims.get(n).map(|v| (n.clone(), v.clone())))
                .collect()
        };
        let kept = Rc::new(kept);
        if a.cache_entries > 0 {
            let expires_s = exp
                .saturating_add(skew)
                .min(self.now_s.saturating_add(a.cache_ttl_s));
            a.remember(token, p, expires_s, &kept);
            cache::put(
                env.shared,
                &a.prefix,
                a.cache_entries,
                &hash,
                &cache::Entry {
                    provider: u16::try_from(p).unwrap_or(u16::MAX),
                    expires_s,
                    claims: Value::Object((*kept).clone()).to_string().into_bytes(),
                },
            );
        }
        Ok((p, kept))
    }

    /// A provider's keys, knowing `kid`: from this worker, from shared data, or by starting a
    /// fetch (the request then waits).
    fn keys(&mut self, p: usize, kid: Option<&str>) -> Result<Rc<KeySet>, Fail> {
        let a = self.auth;
        let has_kid =
            |set: &KeySet| kid.is_none_or(|k| set.keys.iter().any(|j| j.kid.as_deref() == Some(k)));
        let local = a.keys.borrow()[p].set.clone();
        if let Some(set) = &local {
            if has_kid(set) {
                return Ok(set.clone());
            }
        }
        if a.providers[p].remote.is_none() {
            return Err(Fail::invalid_token(format!(
                "unknown kid {}",
                kid.unwrap_or_default()
            )));
        }
        a.sync(p, self.env);
        let synced = a.keys.borrow()[p].set.clone();
        if let Some(set) = &synced {
            if has_kid(set) {
                return Ok(set.clone());
            }
        }
        if a.in_flight(p)
            || (self.may_fetch && a.try_fetch(p, self.env, self.now_s, a.refetch_min_s))
            || a.fetching_elsewhere(p, self.env, self.now_s)
        {
            return Err(Fail::Waiting);
        }
        match synced {
            Some(_) => Err(Fail::invalid_token(format!(
                "unknown kid {}",
                kid.unwrap_or_default()
            ))),
            None => Err(Fail::Unavailable(format!(
                "no signing keys for provider {} (JWKS fetch failed)",
                a.providers[p].name
            ))),
        }
    }
}

fn compile_req(r: &Requirement, names: &[&String], needed: &mut Vec<String>) -> Req {
    match r {
        Requirement::Allow => Req::Allow,
        Requirement::ApiKey(k) => Req::ApiKey {
            scopes: k.scopes.clone(),
        },
        Requirement::Jwt(j) => {
            let providers = if j.providers.is_empty() {
                (0..names.len()).collect()
            } else {
                j.providers
                    .iter()
                    .filter_map(|p| names.iter().position(|n| *n == p))
                    .collect()
            };
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

fn claim_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;

/// RFC 6750 challenge; quotes and backslashes in the detail would break the quoted-string.
fn bearer_challenge(error: &str, detail: &str) -> String {
    format!(
        "Bearer error=\"{error}\", error_description=\"{}\"",
        detail.replace(['"', '\\'], "'")
    )
}
