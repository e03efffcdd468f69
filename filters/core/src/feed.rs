//! Following a server-streaming gRPC call from a filter's root context: when to open it, which
//! stream is ours, whether it is live, and the backoff after it breaks. The caller decodes the
//! messages; this only keeps the state, so a filter that follows an event stream (nexus-ratelimit
//! follows the cache-coherency service's `Subscribe` for resets) does not re-implement it.
//!
//! A stream is live once the server said so (its first message, e.g. the cache service's
//! `Hello`): until then, and while broken, the follower may have missed events and must not
//! trust state those events would have corrected.

use std::cell::Cell;

const RECONNECT_INITIAL_MS: u64 = 100;
const RECONNECT_MAX_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No stream; open one at `at_ms` or later.
    Waiting { at_ms: u64 },
    /// A stream is open; `live` once the server confirmed it.
    Open { token: u32, live: bool },
}

/// What the adapter should do for a feed on a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedAction {
    Nothing,
    /// Open the stream on this cluster and send this (the encoded request, ending the request
    /// side).
    Open {
        cluster: String,
        request: Vec<u8>,
    },
}

#[derive(Debug)]
pub struct Feed {
    cluster: String,
    state: Cell<State>,
    backoff_ms: Cell<u64>,
}

impl Feed {
    /// A feed on `cluster`, due to be opened at once.
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            state: Cell::new(State::Waiting { at_ms: 0 }),
            backoff_ms: Cell::new(RECONNECT_INITIAL_MS),
        }
    }

    /// The cluster to open the stream on, when it is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> Option<&str> {
        match self.state.get() {
            State::Waiting { at_ms } if now_ms >= at_ms => Some(&self.cluster),
            _ => None,
        }
    }

    /// [`FeedAction::Open`] with `request()` when the stream is due at `now_ms`.
    pub fn tick(&self, now_ms: u64, request: impl FnOnce() -> Vec<u8>) -> FeedAction {
        match self.due(now_ms) {
            Some(cluster) => FeedAction::Open {
                cluster: cluster.to_string(),
                request: request(),
            },
            None => FeedAction::Nothing,
        }
    }

    /// The adapter opened the stream (`Some(token)`) or could not.
    pub fn opened(&self, token: Option<u32>, now_ms: u64) {
        match token {
            Some(token) => self.state.set(State::Open { token, live: false }),
            None => self.broken(now_ms),
        }
    }

    /// Whether `token` is this feed's open stream.
    pub fn is_stream(&self, token: u32) -> bool {
        matches!(self.state.get(), State::Open { token: t, .. } if t == token)
    }

    /// The server confirmed stream `token`: live, and the backoff starts over.
    pub fn confirmed(&self, token: u32) {
        if self.is_stream(token) {
            self.state.set(State::Open { token, live: true });
            self.backoff_ms.set(RECONNECT_INITIAL_MS);
        }
    }

    pub fn live(&self) -> bool {
        matches!(self.state.get(), State::Open { live: true, .. })
    }

    /// Stream `token` ended (closed by the server, or dropped by us): reopen after the
    /// backoff, which doubles up to 5 s. False if `token` is not this feed's stream.
    pub fn closed(&self, token: u32, now_ms: u64) -> bool {
        if !self.is_stream(token) {
            return false;
        }
        self.broken(now_ms);
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_is_live_only_between_confirmation_and_close_and_backs_off() {
        let f = Feed::new("nexus-cache");
        assert_eq!(f.due(0), Some("nexus-cache"));
        f.opened(Some(7), 0);
        assert_eq!(f.due(0), None, "open: nothing to do");
        assert!(!f.live(), "not live before the server confirms");
        f.confirmed(8);
        assert!(!f.live(), "another stream's confirmation is not ours");
        f.confirmed(7);
        assert!(f.live());
        assert!(!f.closed(8, 1_000), "not our stream");
        assert!(f.closed(7, 1_000));
        assert!(!f.live());
        assert_eq!(f.due(1_099), None);
        assert_eq!(f.due(1_100), Some("nexus-cache"), "100 ms after the break");
        f.opened(None, 1_100);
        assert_eq!(f.due(1_299), None, "the backoff doubled");
        assert_eq!(f.due(1_300), Some("nexus-cache"));
        f.opened(Some(9), 1_300);
        f.confirmed(9);
        f.closed(9, 2_000);
        assert_eq!(
            f.due(2_100),
            Some("nexus-cache"),
            "a confirmation resets it"
        );
    }

    #[test]
    fn the_backoff_stops_growing_at_five_seconds() {
        let f = Feed::new("c");
        let mut now = 0;
        for _ in 0..20 {
            f.opened(None, now);
            while f.due(now).is_none() {
                now += 100;
            }
        }
        let start = now;
        f.opened(None, now);
        while f.due(now).is_none() {
            now += 100;
        }
        assert_eq!(now - start, 5_000);
    }
}
