//! Identities the filter asks the sessions service for, kept in a bounded table in shared
//! data (`cache`, under a prefix of their own) so every worker of the proxy shares them: the
//! machinery of sign-in sessions (`session.rs`) and introspected OAuth2 tokens (`oauth2.rs`).
//!
//! The credential's SHA-256 keys the table and the lookups in flight; the credential itself
//! only travels in the call. An answer is one of: live (the identity, until
//! `min(now + ttl, expires_at_s)`), unknown (remembered `negative_ttl_s`: a random credential
//! never becomes valid), or unavailable (remembered one second, so an outage is not a storm).
//! A request whose credential is being looked up waits ([`Fail::Waiting`]) and is re-decided
//! when the answer arrives.
//!
//! [`Fail::Waiting`]: crate::deny::Fail::Waiting

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use nexus_config::session::SessionIdentity;
use nexus_filter_core::Level;

use crate::cache::{self, Entry};
use crate::Env;

pub(crate) const LIVE: u16 = 0;
pub(crate) const UNKNOWN: u16 = 1;
pub(crate) const UNAVAILABLE: u16 = 2;

/// Answers larger than this are garbage (an identity is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// A lookup on the wire.
struct Lookup {
    /// SHA-256 of the credential.
    hash: [u8; 32],
    /// Unix seconds after which it is given up.
    deadline_s: u64,
    /// [`Lookups::revocations`] when it was sent.
    revocations: u64,
}

/// Where the lookups go and how long their answers are kept.
pub(crate) struct Settings {
    pub(crate) cluster: String,
    pub(crate) authority: String,
    pub(crate) timeout_ms: u64,
    pub(crate) entries: u32,
    /// Longest a live answer is trusted, in seconds.
    pub(crate) ttl_s: u64,
    /// How long an unknown answer is remembered, in seconds.
    pub(crate) negative_ttl_s: u64,
    /// Shared-data prefix of the table.
    pub(crate) prefix: String,
    /// Metric prefix (`nexus_auth.session`) and log label (`session lookup`).
    pub(crate) metric: &'static str,
    pub(crate) label: &'static str,
    /// Whether the `detail` of the service's refusal is passed on (introspection: it names
    /// what the provider did).
    pub(crate) relay_detail: bool,
}

/// One kind of lookup: its settings and this worker's lookups in flight.
pub(crate) struct Lookups {
    pub(crate) settings: Settings,
    /// This worker's lookups in flight, by callout token.
    pending: RefCell<BTreeMap<u32, Lookup>>,
    /// Revocation events this worker has applied. An answer to a lookup sent before the
    /// latest one may predate that revocation: it decides its own requests but is not kept.
    pub(crate) revocations: Cell<u64>,
    /// The answer of the last callout, for the requests re-decided right after it (its slot
    /// may already hold another credential).
    last_answer: RefCell<Option<([u8; 32], Entry)>>,
}

impl Lookups {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            pending: RefCell::new(BTreeMap::new()),
            revocations: Cell::new(0),
            last_answer: RefCell::new(None),
        }
    }

    /// The answer for `hash`: for a request re-decided after a callout (`redeciding`), that
    /// callout's; else the table's, if `trusted`.
    pub(crate) fn answer(
        &self,
        hash: &[u8; 32],
        env: &Env,
        now_s: u64,
        trusted: bool,
        redeciding: bool,
    ) -> Option<Entry> {
        if let Some((h, e)) = self.last_answer.borrow().as_ref().filter(|_| redeciding) {
            if h == hash && now_s < e.expires_s {
                return Some(Entry {
                    provider: e.provider,
                    expires_s: e.expires_s,
                    claims: e.claims.clone(),
                });
            }
        }
        if !trusted {
            return None;
        }
        let s = &self.settings;
        cache::get(env.shared, &s.prefix, s.entries, hash, now_s)
    }

    /// Whether a lookup of `hash` is on the wire from this worker.
    pub(crate) fn in_flight(&self, hash: &[u8; 32]) -> bool {
        self.pending.borrow().values().any(|l| l.hash == *hash)
    }

    /// Sends `GET path` with the credential in `header`; Err names why it could not be sent.
    pub(crate) fn dispatch(
        &self,
        path: &str,
        header: (&str, &str),
        hash: [u8; 32],
        env: &Env,
        now_s: u64,
    ) -> Result<(), String> {
        let s = &self.settings;
        let target = (s.cluster.as_str(), s.authority.as_str());
        match crate::remote_jwks::get_json(env, target, path, Some(header), s.timeout_ms) {
            Ok(token) => {
                let lookup = Lookup {
                    hash,
                    deadline_s: now_s + s.timeout_ms.div_ceil(1000) + 2,
                    revocations: self.revocations.get(),
                };
                self.pending.borrow_mut().insert(token, lookup);
                env.metrics.increment(&format!("{}.lookups", s.metric), 1);
                Ok(())
            }
            Err(_) => {
                env.metrics
                    .increment(&format!("{}.lookup_failed", s.metric), 1);
                Err(format!(
                    "cannot reach the sessions service (cluster {})",
                    s.cluster
                ))
            }
        }
    }

    /// Takes the answer of callout `token` and keeps it; false if `token` is not one of these
    /// lookups.
    pub(crate) fn take(&self, token: u32, status: Option<u32>, body: &[u8], env: &Env) -> bool {
        let Some(Lookup {
            hash,
            revocations: seen,
            ..
        }) = self.pending.borrow_mut().remove(&token)
        else {
            return false;
        };
        let s = &self.settings;
        let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
        let entry = self.entry_of(status, body, now_s);
        if entry.provider == UNAVAILABLE {
            env.metrics
                .increment(&format!("{}.lookup_failed", s.metric), 1);
            let why = String::from_utf8_lossy(&entry.claims);
            env.log
                .log(Level::Warn, &format!("nexus-auth: {}: {why}", s.label));
        }
        if seen == self.revocations.get() {
            cache::put(env.shared, &s.prefix, s.entries, &hash, &entry);
        }
        *self.last_answer.borrow_mut() = Some((hash, entry));
        true
    }

    /// The answer of a lookup callout, made an entry.
    fn entry_of(&self, status: Option<u32>, body: &[u8], now_s: u64) -> Entry {
        let s = &self.settings;
        let down = |why: String| Entry {
            provider: UNAVAILABLE,
            expires_s: now_s + 1,
            claims: why.into_bytes(),
        };
        let unknown = Entry {
            provider: UNKNOWN,
            expires_s: now_s + s.negative_ttl_s,
            claims: Vec::new(),
        };
        match status {
            Some(200) if body.len() <= MAX_ANSWER_BYTES => {
                match serde_json::from_slice::<SessionIdentity>(body) {
                    Ok(id) if id.expires_at_s <= now_s => unknown,
                    Ok(id) => Entry {
                        provider: LIVE,
                        expires_s: (now_s + s.ttl_s).min(id.expires_at_s),
                        claims: body.to_vec(),
                    },
                    Err(e) => down(format!("the sessions service answered garbage ({e})")),
                }
            }
            Some(200) => down("the sessions service answered garbage (too large)".into()),
            Some(404) => unknown,
            Some(code) => down(match self.detail(body) {
                Some(d) => format!("the sessions service answered status {code}: {d}"),
                None => format!("the sessions service answered status {code}"),
            }),
            None => down(format!(
                "the sessions service did not answer within {} ms",
                s.timeout_ms
            )),
        }
    }

    /// The `detail` of a JSON refusal, when it is to be passed on.
    fn detail(&self, body: &[u8]) -> Option<String> {
        if !self.settings.relay_detail || body.len() > MAX_ANSWER_BYTES {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        v.get("detail")?.as_str().map(str::to_string)
    }

    /// Forgets lookups past their deadline (cancelled with the request that made them); true
    /// if there were any, so the requests waiting on them are re-decided (503).
    pub(crate) fn give_up(&self, now_s: u64) -> bool {
        let before = self.pending.borrow().len();
        self.pending
            .borrow_mut()
            .retain(|_, l| l.deadline_s > now_s);
        self.pending.borrow().len() != before
    }

    /// Drops the answer for `hash` (a revocation); whether the table held it.
    pub(crate) fn forget(&self, hash: &[u8; 32], env: &Env) -> bool {
        if self
            .last_answer
            .borrow()
            .as_ref()
            .is_some_and(|(h, _)| h == hash)
        {
            *self.last_answer.borrow_mut() = None;
        }
        let s = &self.settings;
        cache::remove(env.shared, &s.prefix, s.entries, hash)
    }

    /// Empties the table (it may hold answers whose revocation was missed).
    pub(crate) fn clear(&self, env: &Env) {
        self.revocations.set(self.revocations.get() + 1);
        *self.last_answer.borrow_mut() = None;
        let s = &self.settings;
        cache::clear(env.shared, &s.prefix, s.entries);
    }
}
