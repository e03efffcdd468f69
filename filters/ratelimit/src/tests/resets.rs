//! `ratelimit.reset` reaching the over-limit cache through the cache-coherency stream.

use nexus_proto::cache::{event, Event, Flush, Hello, Invalidation};

use super::over_limit_cache::{ask, client_over, global, over_at};
use super::*;

const STREAM: u32 = 41;

/// A service-mode filter following resets on `nexus-cache`.
fn following() -> RateLimiter {
    global(r#", "resets_cluster": "nexus-cache""#)
}

fn encode(kind: event::Kind) -> Vec<u8> {
    Event { kind: Some(kind) }.encode_to_vec()
}

fn hello() -> Vec<u8> {
    encode(event::Kind::Hello(Hello {
        replica: "r1".into(),
    }))
}

fn invalidation(keys: &[&str]) -> Vec<u8> {
    encode(event::Kind::Invalidation(Invalidation {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    }))
}

fn deliver(rl: &RateLimiter, e: &Env, bytes: &[u8]) -> FeedMessage {
    rl.reset_feed_message(STREAM, bytes, &e.shared, &e.metrics, &e.log)
}

/// Opens the stream and lets the service confirm it.
fn live(rl: &RateLimiter, e: &Env) {
    let FeedAction::Open { cluster, request } = rl.reset_feed_tick(0) else {
        panic!("a configured feed opens at once")
    };
    assert_eq!(cluster, "nexus-cache");
    assert_eq!(
        nexus_proto::cache::SubscribeRequest::decode(request.as_slice())
            .unwrap()
            .subscriber,
        "nexus-ratelimit"
    );
    rl.reset_feed_opened(Some(STREAM), 0);
    assert_eq!(deliver(rl, e, &hello()), FeedMessage::Applied);
}

/// Puts `client` over its `lake` limit (remembered for 30 s).
fn put_over(rl: &RateLimiter, e: &Env, client: &str, calls: &mut u32) {
    let answer = client_over(status(Code::OverLimit, 2, 0, 30));
    over_at(rl, e, client, T0, &answer, calls);
    assert!(
        matches!(ask(rl, e, client, T0 + SEC, calls), Step::Deny(_)),
        "{client} is remembered as over limit"
    );
}

fn asks_service(rl: &RateLimiter, e: &Env, client: &str, calls: &mut u32) -> bool {
    matches!(
        ask(rl, e, client, T0 + 2 * SEC, calls),
        Step::CallService { .. }
    )
}

#[test]
fn a_client_reset_clears_that_client_at_once_and_no_one_else() {
    let (rl, e, mut calls) = (following(), env(), 0);
    live(&rl, &e);
    for c in ["alice", "bob"] {
        put_over(&rl, &e, c, &mut calls);
    }
    let keys = ["nexus-session:00ff", "nexus-ratelimit:|client_id=alice"];
    assert_eq!(deliver(&rl, &e, &invalidation(&keys)), FeedMessage::Applied);
    assert!(
        asks_service(&rl, &e, "alice", &mut calls),
        "alice was reset"
    );
    assert!(!asks_service(&rl, &e, "bob", &mut calls), "bob was not");
    assert_eq!(e.metrics.value("nexus_ratelimit.resets"), 1);
    assert_eq!(e.metrics.value("nexus_ratelimit.over_limit_forgotten"), 1);
}

#[test]
fn a_rule_reset_clears_every_client_of_the_rule_and_a_pair_only_that_pair() {
    let (rl, e, mut calls) = (following(), env(), 0);
    live(&rl, &e);
    for c in ["alice", "bob"] {
        put_over(&rl, &e, c, &mut calls);
    }
    // Another rule's reset, and the right client on another rule: nothing cleared.
    let other = invalidation(&[
        "nexus-ratelimit:|route=cortex",
        "nexus-ratelimit:|route=cortex|client_id=alice",
    ]);
    deliver(&rl, &e, &other);
    assert!(!asks_service(&rl, &e, "alice", &mut calls));
    deliver(
        &rl,
        &e,
        &invalidation(&["nexus-ratelimit:|route=lake|client_id=bob"]),
    );
    assert!(!asks_service(&rl, &e, "alice", &mut calls));
    assert!(asks_service(&rl, &e, "bob", &mut calls));
    put_over(&rl, &e, "bob", &mut calls);
    deliver(&rl, &e, &invalidation(&["nexus-ratelimit:|route=lake"]));
    assert!(asks_service(&rl, &e, "alice", &mut calls));
    assert!(asks_service(&rl, &e, "bob", &mut calls));
}

#[test]
fn other_invalidations_and_updates_clear_nothing() {
    let (rl, e, mut calls) = (following(), env(), 0);
    live(&rl, &e);
    put_over(&rl, &e, "alice", &mut calls);
    deliver(
        &rl,
        &e,
        &invalidation(&["/lake/x", "nexus-ratelimit:", "nexus-ratelimit:|client_id"]),
    );
    assert!(!asks_service(&rl, &e, "alice", &mut calls));
    assert_eq!(e.metrics.value("nexus_ratelimit.resets"), 0);
}

#[test]
fn without_a_live_stream_the_cache_is_not_used_and_a_reconnect_empties_it() {
    let (rl, e, mut calls) = (following(), env(), 0);
    // Not opened yet: every request asks the service, OVER_LIMIT answers or not.
    let answer = client_over(status(Code::OverLimit, 2, 0, 30));
    over_at(&rl, &e, "alice", T0, &answer, &mut calls);
    assert!(asks_service(&rl, &e, "alice", &mut calls));
    live(&rl, &e);
    put_over(&rl, &e, "alice", &mut calls);
    // The stream breaks: resets may be missed, so the cache is not trusted...
    assert!(rl.reset_feed_closed(STREAM, 1_000));
    assert!(asks_service(&rl, &e, "alice", &mut calls));
    // ...and the stream's next Hello empties it (resets in the gap were missed).
    put_over_untrusted(&rl, &e, &mut calls);
    assert_eq!(rl.reset_feed_tick(1_050), FeedAction::Nothing, "backoff");
    assert!(matches!(rl.reset_feed_tick(1_100), FeedAction::Open { .. }));
    rl.reset_feed_opened(Some(STREAM + 1), 1_100);
    let hello = hello();
    assert_eq!(
        rl.reset_feed_message(STREAM + 1, &hello, &e.shared, &e.metrics, &e.log),
        FeedMessage::Applied
    );
    assert!(asks_service(&rl, &e, "alice", &mut calls));
}

/// While the stream is down the service's OVER_LIMIT is still remembered (for when it is
/// back), but not used.
fn put_over_untrusted(rl: &RateLimiter, e: &Env, calls: &mut u32) {
    let answer = client_over(status(Code::OverLimit, 2, 0, 30));
    over_at(rl, e, "alice", T0, &answer, calls);
}

#[test]
fn a_flush_empties_the_cache() {
    let (rl, e, mut calls) = (following(), env(), 0);
    live(&rl, &e);
    put_over(&rl, &e, "alice", &mut calls);
    let flush = encode(event::Kind::Flush(Flush {
        reason: "redis pub/sub reconnected".into(),
    }));
    deliver(&rl, &e, &flush);
    assert!(asks_service(&rl, &e, "alice", &mut calls));
}

#[test]
fn garbage_asks_to_resubscribe_and_other_tokens_are_service_answers() {
    let (rl, e) = (following(), env());
    live(&rl, &e);
    assert_eq!(deliver(&rl, &e, b"\xff\xff\xff"), FeedMessage::Drop);
    assert_eq!(
        rl.reset_feed_message(STREAM + 9, &hello(), &e.shared, &e.metrics, &e.log),
        FeedMessage::NotOurs
    );
    // No feed configured: every token is a service answer, and no ticks are needed.
    let plain = global("");
    assert!(!plain.needs_ticks());
    assert_eq!(plain.reset_feed_tick(0), FeedAction::Nothing);
    assert_eq!(
        plain.reset_feed_message(STREAM, &hello(), &e.shared, &e.metrics, &e.log),
        FeedMessage::NotOurs
    );
}
