//! Following the cache-coherency service's `Subscribe` stream for session revocations: an
//! `Invalidation` naming `nexus-session:<sha256 of the id>` drops that session from this
//! proxy's table at once.
//!
//! While this worker's stream is not live (before its `Hello`, or broken) the worker does not
//! trust the table: it cannot hear revocations, so every request asks the service. A `Hello`
//! after a break, and a `Flush`, empty the table: revocations published in the gap were
//! missed. Every worker follows its own stream; applying an event twice is harmless.

use nexus_filter_core::Level;
use nexus_proto::cache::{event, Event, SubscribeRequest};
use prost::Message;

use crate::{Auth, Env};

use nexus_filter_core::feed::Feed;
pub use nexus_filter_core::feed::FeedAction;

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
        let request = || {
            SubscribeRequest {
                subscriber: "nexus-auth".into(),
            }
            .encode_to_vec()
        };
        self.feed()
            .map_or(FeedAction::Nothing, |f| f.tick(now_ms, request))
    }

    /// The adapter opened the stream (`Some(token)`) or could not.
    pub fn revocation_feed_opened(&self, token: Option<u32>, now_ms: u64) {
        if let Some(feed) = self.feed() {
            feed.opened(token, now_ms);
        }
    }

    /// The stream `token` ended: reconnect later, distrust the table meanwhile. False if
    /// `token` is not the revocation stream.
    pub fn revocation_feed_closed(&self, token: u32, now_ms: u64) -> bool {
        self.feed().is_some_and(|f| f.closed(token, now_ms))
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
                feed.confirmed(token);
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
