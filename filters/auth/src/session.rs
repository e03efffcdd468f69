//! Sign-in sessions: the `session` requirement. The session cookie's id is looked up in the
//! sessions service (an HTTP callout, see `nexus_config::session`), and the answer is kept in
//! the proxy's bounded table for at most `cache_ttl_s` (see `lookup.rs`, slot prefix
//! `<prefix>sess.`). The table keeps the SHA-256 of the id, never the id.
//!
//! An unknown session is 401 `invalid_session`, remembered like a live one; a service that
//! cannot confirm it is 503 `sessions_unavailable`.

use nexus_config::auth::{Sessions, TokenSource};
use nexus_config::session::{SessionIdentity, LOOKUP_HEADER, LOOKUP_PATH, REVOCATION_PREFIX};
use nexus_filter_core::{HeaderList, LocalResponse};
use ring::digest;

use crate::cache::Entry;
use crate::check::{Check, Granted};
use crate::deny::{Challenge, Fail};
use crate::lookup::{Lookups, Settings, LIVE, UNKNOWN};
use crate::{Auth, Env, Identity};
use nexus_filter_core::feed::Feed;

/// A compiled `sessions` section and this worker's lookups.
pub(crate) struct SessionStore {
    cookie: TokenSource,
    cookie_name: String,
    sign_in_path: Option<String>,
    pub(crate) headers: Vec<String>,
    /// The revocation stream, when configured.
    pub(crate) feed: Option<Feed>,
    pub(crate) lookups: Lookups,
}

impl SessionStore {
    pub(crate) fn new(s: &Sessions, prefix: &str) -> Self {
        Self {
            cookie: TokenSource::Cookie {
                name: s.cookie.clone(),
            },
            cookie_name: s.cookie.clone(),
            sign_in_path: s.sign_in_path.clone(),
            headers: s.headers.clone(),
            feed: s.revocations_cluster.as_deref().map(Feed::new),
            lookups: Lookups::new(Settings {
                cluster: s.cluster.clone(),
                authority: s.authority.clone(),
                timeout_ms: s.timeout_ms,
                entries: s.cache_entries,
                ttl_s: s.cache_ttl_s,
                negative_ttl_s: s.cache_ttl_s,
                prefix: format!("{prefix}sess."),
                metric: "nexus_auth.session",
                label: "session lookup",
                relay_detail: false,
            }),
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
        self.sessions
            .as_ref()
            .is_some_and(|s| s.lookups.take(token, status, body, env))
    }

    /// Forgets lookups past their deadline (cancelled with the request that made them); true
    /// if there were any, so the requests waiting on them are re-decided (503).
    pub(crate) fn give_up_session_lookups(&self, now_s: u64) -> bool {
        self.sessions
            .as_ref()
            .is_some_and(|s| s.lookups.give_up(now_s))
    }

    /// Drops the sessions named by revocation keys (`nexus-session:<sha256 hex>`) from this
    /// proxy's table; other keys are ignored. Returns how many entries were dropped.
    pub fn revoke_sessions<'k>(&self, keys: impl IntoIterator<Item = &'k str>, env: &Env) -> usize {
        let Some(s) = &self.sessions else {
            return 0;
        };
        s.lookups.revocations.set(s.lookups.revocations.get() + 1);
        let mut dropped = 0;
        for key in keys {
            let Some(hash) = key
                .strip_prefix(REVOCATION_PREFIX)
                .and_then(crate::compile::unhex)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                continue;
            };
            if s.lookups.forget(&hash, env) {
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
        let l = &s.lookups;
        match l.answer(&hash, self.env, self.now_s, trusted, !self.may_fetch) {
            Some(entry) => self.decide(s, &entry, scopes),
            None if l.in_flight(&hash) => Err(Fail::Waiting),
            None if self.may_fetch => {
                l.dispatch(LOOKUP_PATH, (LOOKUP_HEADER, id), hash, self.env, self.now_s)
                    .map_err(unavailable)?;
                Err(Fail::Waiting)
            }
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
