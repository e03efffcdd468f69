//! Following the cache-coherency service's `Subscribe` stream for session revocations: an
//! `Invalidation` naming `nexus-session:<sha256 of the id>` drops that session from this
//! proxy's table at once.
//!
//! While this worker's stream is not live (before its `Hello`, or broken) the worker does not
//! trust the table: it cannot hear revocations, so every request asks the service. A `Hello`
//! after a break, and a `Flush`, empty the table: revocations published in the gap were
//! missed. Every worker follows its own stream; applying an event twice is harmless.

use std::cell::Cell;

use nexus_filter_core::Level;
use nexus_proto::cache::{event, Event, SubscribeRequest};
use prost::Message;

use crate::{Auth, Env};

const RECONNECT_INITIAL_MS: u64 = 100;
const RECONNECT_MAX_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No stream; open one at `at_ms` or later.
    Waiting { at_ms: u64 },
    /// A stream is open; `live` once its `Hello` arrived.
    Open { token: u32, live: bool },
}

pub(crate) struct Feed {
    pub(crate) cluster: String,
    state: Cell<State>,
    backoff_ms: Cell<u64>,
}

impl Feed {
    pub(crate) fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            state: Cell::new(State::Waiting { at_ms: 0 }),
            backoff_ms: Cell::new(RECONNECT_INITIAL_MS),
        }
    }

    pub(crate) fn live(&self) -> bool {
        matches!(self.state.get(), State::Open { live: true, .. })
    }

    fn is_stream(&self, token: u32) -> bool {
        matches!(self.state.get(), State::Open { token: t, .. } if t == token)
    }

    fn broken(&self, now_ms: u64) {
        let backoff = self.backoff_ms.get();
        self.state.set(State::Waiting {
            at_ms: now_ms.saturating_add(backoff),
        });
        self.backoff_ms
            .set(backoff.saturating_mul(2).min(RECONNECT_MAX_MS));
    }
}

/// What the adapter should do for the revocation stream on a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedAction {
    Nothing,
    /// Open `Subscribe` on this cluster and send this (an encoded `SubscribeRequest`, ending
    /// the request side).
    Open {
        cluster: String,
        request: Vec<u8>,
    },
}

impl Auth {
    fn feed(&self) -> Option<&Feed> {
        self.sessions.as_ref()?.feed.as_ref()
    }

    /// Whether this worker may use its session table: no revocation stream is configured, or
    /// it is live.
    pub(crate) fn sessions_trusted(&self) -> bool {
        self.feed().is_none_or(Feed::live)
    }

    pub fn revocation_feed_tick(&self, now_ms: u64) -> FeedAction {
        let Some(feed) = self.feed() else {
            return FeedAction::Nothing;
        };
        match feed.state.get() {
            State::Waiting { at_ms } if now_ms >= at_ms => FeedAction::Open {
                cluster: feed.cluster.clone(),
                request: SubscribeRequest {
                    subscriber: "nexus-auth".into(),
                }
                .encode_to_vec(),
            },
            _ => FeedAction::Nothing,
        }
    }

    /// The adapter opened the stream (`Some(token)`) or could not.
    pub fn revocation_feed_opened(&self, token: Option<u32>, now_ms: u64) {
        if let Some(feed) = self.feed() {
            match token {
                Some(token) => feed.state.set(State::Open { token, live: false }),
                None => feed.broken(now_ms),
            }
        }
    }

    /// The stream `token` ended: reconnect later, distrust the table meanwhile. False if
    /// `token` is not the revocation stream.
    pub fn revocation_feed_closed(&self, token: u32, now_ms: u64) -> bool {
        match self.feed() {
            Some(feed) if feed.is_stream(token) => {
                feed.broken(now_ms);
                true
            }
            _ => false,
        }
    }

    /// One message of the stream `token`. `Some(true)`: undecodable, the adapter should drop
    /// the stream (then call [`Auth::revocation_feed_closed`]); `None`: not this stream.
    pub fn revocation_feed_message(&self, token: u32, bytes: &[u8], env: &Env) -> Option<bool> {
        let feed = self.feed().filter(|f| f.is_stream(token))?;
        let kind = match Event::decode(bytes) {
            Ok(Event { kind: Some(kind) }) => kind,
            Ok(Event { kind: None }) => return Some(false),
            Err(e) => {
                env.log.log(
                    Level::Warn,
                    &format!("nexus-auth: undecodable revocation event ({e}); resubscribing"),
                );
                return Some(true);
            }
        };
        match kind {
            event::Kind::Hello(_) => {
                feed.state.set(State::Open { token, live: true });
                feed.backoff_ms.set(RECONNECT_INITIAL_MS);
                self.clear_sessions(env);
            }
            event::Kind::Invalidation(inv) => {
                self.revoke_sessions(inv.keys.iter().map(String::as_str), env);
            }
            event::Kind::Flush(_) => self.clear_sessions(env),
            event::Kind::Update(_) => {}
        }
        Some(false)
    }

    fn clear_sessions(&self, env: &Env) {
        if let Some(s) = &self.sessions {
            s.lookups.clear(env);
            env.metrics.increment("nexus_auth.session.table_cleared", 1);
        }
    }
}
