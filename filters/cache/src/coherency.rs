//! Following the service's `Subscribe` stream: applying its events to the L1, and the
//! connection state machine (connect from the tick, flush once per break, reconnect with
//! exponential backoff).
//!
//! While a stream is not live (before its `Hello`, or broken) this worker neither reads nor
//! writes the L1: it cannot hear invalidations, so it must not trust or feed a copy another
//! invalidation may already have obsoleted. Every worker follows its own stream; the events
//! are idempotent, so several workers applying them to the one shared L1 is harmless.

use nexus_config::cache::CacheService;
use nexus_filter_core::{Level, Log, Metrics, SharedData};
use nexus_proto::cache::{event, Event, SubscribeRequest};
use prost::Message;

use crate::l1;
use crate::metrics as m;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No stream; open one at `at_ms` or later.
    Waiting { at_ms: u64 },
    /// A stream is open; `live` once its `Hello` arrived.
    Open { token: u32, live: bool },
}

pub struct Subscription {
    state: State,
    backoff_ms: u64,
    initial_ms: u64,
    max_ms: u64,
    /// The L1 was flushed since the last `Hello`: a break flushes once, however many failed
    /// reconnects follow.
    flushed: bool,
    /// Streams opened so far (the first is not a reconnect).
    opened: u64,
    writer: String,
    subscriber: String,
}

/// What the adapter should do on a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickAction {
    Nothing,
    /// Open `Subscribe` and send this (encoded `SubscribeRequest`, ending the request side).
    Open(Vec<u8>),
}

impl Subscription {
    pub fn new(service: &CacheService, writer: &str, subscriber: &str) -> Self {
        Self {
            state: State::Waiting { at_ms: 0 },
            backoff_ms: service.reconnect_initial_ms,
            initial_ms: service.reconnect_initial_ms,
            max_ms: service.reconnect_max_ms,
            flushed: false,
            opened: 0,
            writer: writer.to_string(),
            subscriber: subscriber.to_string(),
        }
    }

    /// Whether this worker may use the L1 now.
    pub fn live(&self) -> bool {
        matches!(self.state, State::Open { live: true, .. })
    }

    pub fn on_tick(&mut self, now_ms: u64) -> TickAction {
        match self.state {
            State::Waiting { at_ms } if now_ms >= at_ms => TickAction::Open(
                SubscribeRequest {
                    subscriber: self.subscriber.clone(),
                }
                .encode_to_vec(),
            ),
            _ => TickAction::Nothing,
        }
    }

    /// The adapter opened the stream (token) or could not (`None`).
    pub fn on_opened(
        &mut self,
        token: Option<u32>,
        now_ms: u64,
        shared: &impl SharedData,
        metrics: &impl Metrics,
    ) {
        match token {
            Some(token) => {
                if self.opened > 0 {
                    metrics.increment(m::RECONNECTS, 1);
                }
                self.opened += 1;
                self.state = State::Open { token, live: false };
            }
            None => self.broken(now_ms, shared, metrics),
        }
    }

    /// Whether `token` is this subscription's stream.
    pub fn is_stream(&self, token: u32) -> bool {
        matches!(self.state, State::Open { token: t, .. } if t == token)
    }

    /// The stream ended (any status): flush once, back off, reconnect from the tick.
    pub fn on_closed(
        &mut self,
        token: u32,
        now_ms: u64,
        shared: &impl SharedData,
        metrics: &impl Metrics,
    ) {
        if self.is_stream(token) {
            self.broken(now_ms, shared, metrics);
        }
    }

    fn broken(&mut self, now_ms: u64, shared: &impl SharedData, metrics: &impl Metrics) {
        if !self.flushed {
            flush(shared, metrics);
            self.flushed = true;
        }
        self.state = State::Waiting {
            at_ms: now_ms.saturating_add(self.backoff_ms),
        };
        self.backoff_ms = self.backoff_ms.saturating_mul(2).min(self.max_ms);
    }

    /// One message of the stream. Returns whether the adapter should drop the stream (an
    /// undecodable message: we cannot know what we missed, so flush and start over).
    pub fn on_message(
        &mut self,
        token: u32,
        bytes: &[u8],
        shared: &impl SharedData,
        metrics: &impl Metrics,
        log: &impl Log,
    ) -> bool {
        if !self.is_stream(token) {
            return false;
        }
        let kind = match Event::decode(bytes) {
            Ok(Event { kind: Some(kind) }) => kind,
            // An unknown event kind from a newer service: ignore it.
            Ok(Event { kind: None }) => return false,
            Err(e) => {
                log.log(
                    Level::Warn,
                    &format!("nexus-cache: undecodable Subscribe event ({e}); resubscribing"),
                );
                return true;
            }
        };
        match kind {
            event::Kind::Hello(_) => {
                self.state = State::Open { token, live: true };
                self.backoff_ms = self.initial_ms;
                self.flushed = false;
            }
            event::Kind::Invalidation(inv) => {
                metrics.increment(m::INVALIDATIONS, 1);
                // Before removing: in-flight fetches must not store what this invalidates.
                l1::bump_epoch(shared);
                for key in &inv.keys {
                    l1::remove(shared, key);
                }
                // No prefix or tag index: correctness first, a flush drops every match (and
                // every entry fetched before it, see `l1`).
                if !inv.prefixes.is_empty() || !inv.tags.is_empty() {
                    flush(shared, metrics);
                }
            }
            event::Kind::Update(u) => {
                if u.writer != self.writer {
                    let newer = l1::Version {
                        timestamp_ms: u.timestamp_ms,
                        writer: u.writer,
                    };
                    if l1::version(shared, &u.key).is_some_and(|v| v < newer) {
                        l1::remove(shared, &u.key);
                    }
                }
            }
            event::Kind::Flush(f) => {
                log.log(
                    Level::Info,
                    &format!("nexus-cache: service asked for a flush ({})", f.reason),
                );
                flush(shared, metrics);
            }
        }
        false
    }
}

pub fn flush(shared: &impl SharedData, metrics: &impl Metrics) {
    metrics.increment(m::FLUSHES, 1);
    let _ = l1::flush(shared);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_filter_core::testing::{MemLog, MemMetrics, MemSharedData};
    use nexus_proto::cache::{CachedResponse, Flush, Hello, Invalidation, Update};

    fn service() -> CacheService {
        CacheService {
            cluster: "c".into(),
            timeout_ms: 50,
            subscribe: true,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 350,
        }
    }

    fn ev(kind: event::Kind) -> Vec<u8> {
        Event { kind: Some(kind) }.encode_to_vec()
    }

    fn store(s: &MemSharedData, key: &str, ts: u64, writer: &str) {
        let g = l1::generation(s);
        l1::put(
            s,
            64,
            key,
            g,
            l1::Version {
                timestamp_ms: ts,
                writer: writer.into(),
            },
            &CachedResponse {
                status: 200,
                expires_at_ms: u64::MAX,
                ..Default::default()
            },
        );
    }

    struct Env {
        s: MemSharedData,
        m: MemMetrics,
        l: MemLog,
        sub: Subscription,
    }

    fn connected() -> Env {
        let mut e = Env {
            s: MemSharedData::default(),
            m: MemMetrics::default(),
            l: MemLog::default(),
            sub: Subscription::new(&service(), "me", "node-1"),
        };
        assert!(matches!(e.sub.on_tick(0), TickAction::Open(_)));
        e.sub.on_opened(Some(7), 0, &e.s, &e.m);
        assert!(!e.sub.live(), "not live before Hello");
        e.sub.on_message(
            7,
            &ev(event::Kind::Hello(Hello::default())),
            &e.s,
            &e.m,
            &e.l,
        );
        assert!(e.sub.live());
        e
    }

    #[test]
    fn invalidation_by_key_drops_only_that_key_and_prefix_or_tag_flushes() {
        let mut e = connected();
        store(&e.s, "/a#1", 1, "me");
        store(&e.s, "/b#1", 1, "me");
        let inv = |keys: &[&str], prefixes: &[&str], tags: &[&str]| {
            ev(event::Kind::Invalidation(Invalidation {
                keys: keys.iter().map(|s| s.to_string()).collect(),
                prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
            }))
        };
        e.sub
            .on_message(7, &inv(&["/a#1"], &[], &[]), &e.s, &e.m, &e.l);
        assert!(l1::get(&e.s, "/a#1", 0).is_none());
        assert!(l1::get(&e.s, "/b#1", 0).is_some());
        e.sub
            .on_message(7, &inv(&[], &["/b"], &[]), &e.s, &e.m, &e.l);
        assert!(l1::get(&e.s, "/b#1", 0).is_none());
        store(&e.s, "/c#1", 1, "me");
        e.sub
            .on_message(7, &inv(&[], &[], &["t"]), &e.s, &e.m, &e.l);
        assert!(l1::get(&e.s, "/c#1", 0).is_none());
        assert_eq!(e.m.value(m::INVALIDATIONS), 3);
        assert_eq!(e.m.value(m::FLUSHES), 2);
    }

    #[test]
    fn updates_drop_older_copies_of_other_writers() {
        let mut e = connected();
        store(&e.s, "/a#1", 10, "me");
        let upd = |ts: u64, w: &str| {
            ev(event::Kind::Update(Update {
                key: "/a#1".into(),
                timestamp_ms: ts,
                writer: w.into(),
            }))
        };
        e.sub.on_message(7, &upd(10, "me"), &e.s, &e.m, &e.l);
        e.sub.on_message(7, &upd(99, "me"), &e.s, &e.m, &e.l);
        e.sub.on_message(7, &upd(9, "other"), &e.s, &e.m, &e.l);
        assert!(
            l1::get(&e.s, "/a#1", 0).is_some(),
            "own or older updates keep it"
        );
        e.sub.on_message(7, &upd(10, "zzz"), &e.s, &e.m, &e.l);
        assert!(
            l1::get(&e.s, "/a#1", 0).is_none(),
            "same ms, later writer wins"
        );
    }

    #[test]
    fn flush_event_and_breaks_flush_once_then_back_off() {
        let mut e = connected();
        store(&e.s, "/a#1", 1, "me");
        e.sub.on_message(
            7,
            &ev(event::Kind::Flush(Flush {
                reason: "redis".into(),
            })),
            &e.s,
            &e.m,
            &e.l,
        );
        assert!(l1::get(&e.s, "/a#1", 0).is_none());
        assert_eq!(e.m.value(m::FLUSHES), 1);

        e.sub.on_closed(7, 1_000, &e.s, &e.m);
        assert!(!e.sub.live());
        assert_eq!(e.m.value(m::FLUSHES), 2);
        assert_eq!(e.sub.on_tick(1_099), TickAction::Nothing);
        assert!(matches!(e.sub.on_tick(1_100), TickAction::Open(_)));
        e.sub.on_opened(Some(8), 1_100, &e.s, &e.m);
        assert_eq!(e.m.value(m::RECONNECTS), 1);
        // Fails again before Hello: no second flush; backoff doubles, capped.
        e.sub.on_closed(8, 1_100, &e.s, &e.m);
        assert_eq!(e.m.value(m::FLUSHES), 2);
        assert_eq!(e.sub.on_tick(1_299), TickAction::Nothing);
        e.sub.on_opened(None, 1_300, &e.s, &e.m);
        assert!(matches!(e.sub.on_tick(1_300 + 350), TickAction::Open(_)));
        e.sub.on_opened(Some(9), 1_650, &e.s, &e.m);
        e.sub.on_message(
            9,
            &ev(event::Kind::Hello(Hello::default())),
            &e.s,
            &e.m,
            &e.l,
        );
        assert!(e.sub.live());
        // A new break after a Hello flushes again, and the backoff starts over.
        e.sub.on_closed(9, 2_000, &e.s, &e.m);
        assert_eq!(e.m.value(m::FLUSHES), 3);
        assert!(matches!(e.sub.on_tick(2_100), TickAction::Open(_)));
        // Stale tokens are ignored.
        e.sub.on_closed(7, 2_100, &e.s, &e.m);
        assert_eq!(e.m.value(m::FLUSHES), 3);
    }

    #[test]
    fn garbage_asks_to_resubscribe() {
        let mut e = connected();
        assert!(e.sub.on_message(7, &[0xff, 0xff, 0xff], &e.s, &e.m, &e.l));
        assert!(!e
            .sub
            .on_message(7, &Event { kind: None }.encode_to_vec(), &e.s, &e.m, &e.l));
    }
}
