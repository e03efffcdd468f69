//! Sign-in sessions: the `session` requirement. The session cookie's id is looked up in the
//! sessions service (an HTTP callout, see `nexus_config::session`), and the answer is kept in
//! a bounded table in shared data (`cache`, slot prefix `<prefix>sess.`) for at most
//! `cache_ttl_s`, so every worker of the proxy shares it. The table keeps the SHA-256 of the
//! id, never the id.
//!
//! An answer is one of: live (the identity, until `min(now + ttl, expires_at_s)`), unknown
//! (401 `invalid_session`, cached like a live one: a random id never becomes valid), or
//! unavailable (503 `sessions_unavailable`, cached one second so an outage is not a storm).
//! A request whose session is being looked up waits ([`Fail::Waiting`]) and is re-decided
//! when the answer arrives.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use nexus_config::auth::{Sessions, TokenSource};
use nexus_config::session::{SessionIdentity, LOOKUP_HEADER, LOOKUP_PATH, REVOCATION_PREFIX};
use nexus_filter_core::{HeaderList, Level, LocalResponse};
use ring::digest;

use crate::cache::{self, Entry};
use crate::check::{Check, Granted};
use crate::deny::{Challenge, Fail};
use crate::session_feed::Feed;
use crate::{Auth, Env, Identity};

const LIVE: u16 = 0;
const UNKNOWN: u16 = 1;
const UNAVAILABLE: u16 = 2;

/// Answers larger than this are garbage (an identity is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// A lookup on the wire.
struct Lookup {
    /// SHA-256 of the session id.
    hash: [u8; 32],
    /// Unix seconds after which it is given up.
    deadline_s: u64,
    /// [`SessionStore::revocations`] when it was sent.
    revocations: u64,
}

/// A compiled `sessions` section and this worker's lookups in flight.
pub(crate) struct SessionStore {
    cookie: TokenSource,
    cookie_name: String,
    cluster: String,
    authority: String,
    timeout_ms: u64,
    pub(crate) entries: u32,
    ttl_s: u64,
    sign_in_path: Option<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) prefix: String,
    /// The revocation stream, when configured.
    pub(crate) feed: Option<Feed>,
    /// This worker's lookups in flight, by callout token.
    pending: RefCell<BTreeMap<u32, Lookup>>,
    /// Revocation events this worker has applied. An answer to a lookup sent before the
    /// latest one may predate that revocation: it decides its own requests but is not kept.
    pub(crate) revocations: Cell<u64>,
    /// The answer of the last callout, for the requests re-decided right after it (its slot
    /// may already hold another session).
    pub(crate) last_answer: RefCell<Option<([u8; 32], Entry)>>,
}

impl SessionStore {
    pub(crate) fn new(s: &Sessions, prefix: &str) -> Self {
        Self {
            cookie: TokenSource::Cookie {
                name: s.cookie.clone(),
            },
            cookie_name: s.cookie.clone(),
            cluster: s.cluster.clone(),
            authority: s.authority.clone(),
            timeout_ms: s.timeout_ms,
            entries: s.cache_entries,
            ttl_s: s.cache_ttl_s,
            sign_in_path: s.sign_in_path.clone(),
            headers: s.headers.clone(),
            prefix: format!("{prefix}sess."),
            feed: s.revocations_cluster.as_deref().map(Feed::new),
            pending: RefCell::new(BTreeMap::new()),
            revocations: Cell::new(0),
            last_answer: RefCell::new(None),
        }
    }

    /// The answer for `hash`: for a request re-decided after a callout (`redeciding`), that
    /// callout's; else the table's, if `trusted`.
    fn answer(
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
        cache::get(env.shared, &self.prefix, self.entries, hash, now_s)
    }

    /// Sends the lookup of `id`; the request waits for it.
    fn dispatch(&self, id: &str, hash: [u8; 32], env: &Env, now_s: u64) -> Fail {
        let target = (self.cluster.as_str(), self.authority.as_str());
        let lookup = Some((LOOKUP_HEADER, id));
        match crate::remote_jwks::get_json(env, target, LOOKUP_PATH, lookup, self.timeout_ms) {
            Ok(token) => {
                let deadline = now_s + self.timeout_ms.div_ceil(1000) + 2;
                let lookup = Lookup {
                    hash,
                    deadline_s: deadline,
                    revocations: self.revocations.get(),
                };
                self.pending.borrow_mut().insert(token, lookup);
                env.metrics.increment("nexus_auth.session.lookups", 1);
                Fail::Waiting
            }
            Err(_) => {
                env.metrics.increment("nexus_auth.session.lookup_failed", 1);
                unavailable(format!(
                    "cannot reach the sessions service (cluster {})",
                    self.cluster
                ))
            }
        }
    }

    /// The answer of a lookup callout, made an entry.
    fn entry_of(&self, status: Option<u32>, body: &[u8], now_s: u64) -> Entry {
        let down = |why: String| Entry {
            provider: UNAVAILABLE,
            expires_s: now_s + 1,
            claims: why.into_bytes(),
        };
        let unknown = Entry {
            provider: UNKNOWN,
            expires_s: now_s + self.ttl_s,
            claims: Vec::new(),
        };
        match status {
            Some(200) if body.len() <= MAX_ANSWER_BYTES => {
                match serde_json::from_slice::<SessionIdentity>(body) {
                    Ok(id) if id.expires_at_s <= now_s => unknown,
                    Ok(id) => Entry {
                        provider: LIVE,
                        expires_s: (now_s + self.ttl_s).min(id.expires_at_s),
                        claims: body.to_vec(),
                    },
                    Err(e) => down(format!("the sessions service answered garbage ({e})")),
                }
            }
            Some(200) => down("the sessions service answered garbage (too large)".into()),
            Some(404) => unknown,
            Some(s) => down(format!("the sessions service answered status {s}")),
            None => down(format!(
                "the sessions service did not answer within {} ms",
                self.timeout_ms
            )),
        }
    }
}

impl Auth {
    /// Feeds a session lookup's answer; false if `token` is not one of this worker's lookups.
    pub(crate) fn on_session_answer(
        &self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        env: &Env,
    ) -> bool {
        let Some(s) = &self.sessions else {
            return false;
        };
        let Some(Lookup {
            hash,
            revocations: seen,
            ..
        }) = s.pending.borrow_mut().remove(&token)
        else {
            return false;
        };
        let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
        let entry = s.entry_of(status, body, now_s);
        if entry.provider == UNAVAILABLE {
            env.metrics.increment("nexus_auth.session.lookup_failed", 1);
            let why = String::from_utf8_lossy(&entry.claims);
            env.log
                .log(Level::Warn, &format!("nexus-auth: session lookup: {why}"));
        }
        if seen == s.revocations.get() {
            cache::put(env.shared, &s.prefix, s.entries, &hash, &entry);
        }
        *s.last_answer.borrow_mut() = Some((hash, entry));
        true
    }

    /// Forgets lookups past their deadline (cancelled with the request that made them); true
    /// if there were any, so the requests waiting on them are re-decided (503).
    pub(crate) fn give_up_session_lookups(&self, now_s: u64) -> bool {
        let Some(s) = &self.sessions else {
            return false;
        };
        let before = s.pending.borrow().len();
        s.pending.borrow_mut().retain(|_, l| l.deadline_s > now_s);
        s.pending.borrow().len() != before
    }

    /// Drops the sessions named by revocation keys (`nexus-session:<sha256 hex>`) from this
    /// proxy's table; other keys are ignored. Returns how many entries were dropped.
    pub fn revoke_sessions<'k>(&self, keys: impl IntoIterator<Item = &'k str>, env: &Env) -> usize {
        let Some(s) = &self.sessions else {
            return 0;
        };
        s.revocations.set(s.revocations.get() + 1);
        let mut dropped = 0;
        for key in keys {
            let Some(hash) = key
                .strip_prefix(REVOCATION_PREFIX)
                .and_then(crate::compile::unhex)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                continue;
            };
            if s.last_answer
                .borrow()
                .as_ref()
                .is_some_and(|(h, _)| *h == hash)
            {
                *s.last_answer.borrow_mut() = None;
            }
            if cache::remove(env.shared, &s.prefix, s.entries, &hash) {
                dropped += 1;
            }
        }
        env.metrics.increment(
            "nexus_auth.session.revoked",
            i64::try_from(dropped).unwrap_or(0),
        );
        dropped
    }

    /// A browser's 302 to the sign-in path, when sessions have one and `Accept` names
    /// `text/html`; API clients get the JSON refusal instead.
    pub(crate) fn sign_in_redirect(&self, pairs: &HeaderList) -> Option<LocalResponse> {
        let path = self.sessions.as_ref()?.sign_in_path.as_deref()?;
        if !pairs.get("accept").is_some_and(|a| a.contains("text/html")) {
            return None;
        }
        let back = pairs.get(":path").unwrap_or("/");
        let location = format!(
            "{path}?rd={}",
            nexus_filter_core::text::percent_encode(back, b"/")
        );
        let mut r = LocalResponse::json_error(
            302,
            "sign_in_required",
            "this page needs a session: sign in first",
        );
        r.headers.push(("location".into(), location));
        r.headers.push(("cache-control".into(), "no-store".into()));
        Some(r)
    }
}

impl Check<'_> {
    pub(crate) fn session(&self, scopes: &[String]) -> Result<Granted, Fail> {
        let Some(s) = &self.auth.sessions else {
            return Err(Fail::Missing);
        };
        let id = crate::token::extract(&s.cookie, self.pairs).ok_or(Fail::Missing)?;
        if !well_formed(id) {
            return Err(invalid(format!(
                "the {} cookie is not a session id",
                s.cookie_name
            )));
        }
        let hash: [u8; 32] = digest::digest(&digest::SHA256, id.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| Fail::Missing)?;
        let trusted = self.auth.sessions_trusted();
        match s.answer(&hash, self.env, self.now_s, trusted, !self.may_fetch) {
            Some(entry) => self.decide(s, &entry, scopes),
            None if s.pending.borrow().values().any(|l| l.hash == hash) => Err(Fail::Waiting),
            None if self.may_fetch => Err(s.dispatch(id, hash, self.env, self.now_s)),
            None => Err(unavailable("the sessions service gave no answer".into())),
        }
    }

    fn decide(&self, s: &SessionStore, entry: &Entry, scopes: &[String]) -> Result<Granted, Fail> {
        match entry.provider {
            LIVE => {}
            UNKNOWN => return Err(invalid("the session is unknown, expired or revoked".into())),
            _ => return Err(unavailable(String::from_utf8_lossy(&entry.claims).into())),
        }
        let id: SessionIdentity = serde_json::from_slice(&entry.claims)
            .map_err(|e| unavailable(format!("unreadable cached session ({e})")))?;
        if id.expires_at_s <= self.now_s {
            return Err(invalid("the session is unknown, expired or revoked".into()));
        }
        if let Some(missing) = scopes.iter().find(|x| !id.scopes.contains(x)) {
            return Err(Fail::Forbidden {
                error: "insufficient_scope",
                detail: format!("the session of {} lacks scope {missing}", id.client_id),
                challenge: Challenge::Session,
            });
        }
        let headers = id
            .headers
            .into_iter()
            .filter(|(h, _)| s.headers.contains(h))
            .collect();
        Ok(Granted {
            identity: Identity {
                client_id: id.client_id,
                method: "session".to_string(),
            },
            headers,
            strip: Vec::new(),
        })
    }
}

/// Session ids are 16 to 128 base64url characters (the service makes 43: 32 random bytes).
fn well_formed(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(detail: String) -> Fail {
    Fail::Invalid {
        error: "invalid_session",
        detail,
        challenge: Challenge::Session,
    }
}

fn unavailable(detail: String) -> Fail {
    Fail::Unavailable {
        error: "sessions_unavailable",
        detail,
    }
}
