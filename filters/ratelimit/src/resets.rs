//! `ratelimit.reset` in every proxy: the cache-coherency service's `Subscribe` stream (the one
//! nexus-auth follows for session revocations) carries an `Invalidation` naming
//! `nexus-ratelimit:|route=<rule>|client_id=<client>` (either or both) after the service reset
//! those counters; it clears the matching over-limit entries, so the client's next request
//! asks the service again instead of getting the remembered 429.
//!
//! While this worker's stream is not live (before the service's `Hello`, or broken) the
//! over-limit cache is not used: a reset in that gap would go unheard. A `Hello` after a
//! break, and a `Flush`, empty it. Every worker follows its own stream and the entries are
//! shared by all of them; clearing an entry twice is harmless.

use nexus_config::ratelimit::{key_matches, parse_reset_key};
use nexus_filter_core::{Level, Log, Metrics, SharedData};
use nexus_proto::cache::{event, Event, SubscribeRequest};
use prost::Message;

use crate::{overlimit, RateLimiter};

pub use nexus_filter_core::feed::FeedAction;

/// What a message of the reset stream asks of the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMessage {
    /// Not the reset stream: a rate-limit service answer.
    NotOurs,
    Applied,
    /// Undecodable: cancel the stream, then call [`RateLimiter::reset_feed_closed`].
    Drop,
}

impl RateLimiter {
    /// Whether the over-limit cache may answer: no reset stream is configured, or it is live.
    pub(crate) fn over_limit_cache_trusted(&self) -> bool {
        self.feed.as_ref().is_none_or(|f| f.live())
    }

    /// Whether the adapter must tick (to open and reopen the reset stream).
    pub fn needs_ticks(&self) -> bool {
        self.feed.is_some() || !self.config.leases_by_limit.is_empty()
    }

    pub fn reset_feed_tick(&self, now_ms: u64) -> FeedAction {
        let request = || {
            SubscribeRequest {
                subscriber: "nexus-ratelimit".into(),
            }
            .encode_to_vec()
        };
        self.feed
            .as_ref()
            .map_or(FeedAction::Nothing, |f| f.tick(now_ms, request))
    }

    /// The adapter opened the stream (`Some(token)`) or could not.
    pub fn reset_feed_opened(&self, token: Option<u32>, now_ms: u64) {
        if let Some(f) = &self.feed {
            f.opened(token, now_ms);
        }
    }

    /// Stream `token` ended: reopen later, keep off the over-limit cache meanwhile. False if
    /// `token` is not the reset stream.
    pub fn reset_feed_closed(&self, token: u32, now_ms: u64) -> bool {
        self.feed.as_ref().is_some_and(|f| f.closed(token, now_ms))
    }

    /// One message of stream `token`.
    pub fn reset_feed_message(
        &self,
        token: u32,
        bytes: &[u8],
        shared: &impl SharedData,
        metrics: &impl Metrics,
        log: &impl Log,
    ) -> FeedMessage {
        let Some(feed) = self.feed.as_ref().filter(|f| f.is_stream(token)) else {
            return FeedMessage::NotOurs;
        };
        let kind = match Event::decode(bytes) {
            Ok(Event { kind: Some(kind) }) => kind,
            Ok(Event { kind: None }) => return FeedMessage::Applied,
            Err(e) => {
                log.log(
                    Level::Warn,
                    &format!("nexus-ratelimit: undecodable reset event ({e}); resubscribing"),
                );
                return FeedMessage::Drop;
            }
        };
        let forgotten = match kind {
            event::Kind::Hello(_) => {
                feed.confirmed(token);
                overlimit::forget(shared, |_| true)
            }
            event::Kind::Flush(_) => overlimit::forget(shared, |_| true),
            event::Kind::Invalidation(inv) => {
                let resets: Vec<Vec<(String, String)>> =
                    inv.keys.iter().filter_map(|k| parse_reset_key(k)).collect();
                if resets.is_empty() {
                    return FeedMessage::Applied;
                }
                metrics.increment("nexus_ratelimit.resets", resets.len() as i64);
                overlimit::forget(shared, |key| resets.iter().any(|r| key_matches(key, r)))
            }
            event::Kind::Update(_) => 0,
        };
        if forgotten > 0 {
            metrics.increment(
                "nexus_ratelimit.over_limit_forgotten",
                i64::try_from(forgotten).unwrap_or(i64::MAX),
            );
        }
        FeedMessage::Applied
    }
}
