//! Over-limit summaries against the machine's RabbitMQ: the rate-limit service's refusals of
//! one interval go out as one `nexus.ratelimit.over_limit.<rule>` event per rule and client,
//! with the count, never one message per refused call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use nexus_events::envelope::Envelope;
use nexus_events::outbox::MemoryOutbox;
use nexus_events::over_limit::OverLimit;
use nexus_events::{Events, PublisherConfig, Stats};
use nexus_proto::ratelimit::rate_limit_descriptor::Entry;
use nexus_proto::ratelimit::rate_limit_response::Code;
use nexus_proto::ratelimit::{RateLimitDescriptor, RateLimitRequest};
use nexus_ratelimit_service::server::SharedLimiter;
use nexus_ratelimit_service::{limits::parse, Algorithm, Limits, UnknownDomain};
use support::*;

const LIMITS: &str = r#"
domain: nexus
descriptors:
  - key: route
    value: cortex-infer
    descriptors:
      - key: client_id
        rate_limit: {unit: hour, requests_per_unit: 2}
"#;

/// The filter's call for `client` on `cortex-infer`: the rule's descriptor and the client's.
fn call(client: &str) -> RateLimitRequest {
    let entry = |k: &str, v: &str| Entry {
        key: k.into(),
        value: v.into(),
    };
    RateLimitRequest {
        domain: "nexus".into(),
        descriptors: vec![
            RateLimitDescriptor {
                entries: vec![entry("route", "cortex-infer")],
                limit: None,
            },
            RateLimitDescriptor {
                entries: vec![entry("route", "cortex-infer"), entry("client_id", client)],
                limit: None,
            },
        ],
        hits_addend: 1,
    }
}

async fn refused(limiter: &SharedLimiter, client: &str) -> bool {
    let SharedLimiter::Memory(rl) = limiter else {
        panic!("memory storage")
    };
    rl.should_rate_limit(&call(client))
        .await
        .unwrap()
        .overall_code
        == Code::OverLimit as i32
}

#[tokio::test]
async fn n_refused_calls_of_one_client_give_one_summary_with_count_n() {
    let exchange = unique("service.events.test");
    let queue = unique("over-limit-watcher");
    let (_conn, ch) = connect(SHARED_AMQP).await;
    bound_queue(&ch, &exchange, &queue, "nexus.ratelimit.over_limit.#").await;
    let mut config = PublisherConfig::new(SHARED_AMQP, "nexus://test/r1");
    config.exchange = exchange.clone();
    let stats = Arc::new(Stats::default());
    let events = Events::start(config, Arc::new(MemoryOutbox::new(100)), stats);
    let limiter = SharedLimiter::new(
        Limits::new([parse(LIMITS).unwrap()]).unwrap(),
        None,
        Algorithm::FixedWindow,
        UnknownDomain::Allow,
        Duration::from_secs(1),
    )
    .unwrap();
    let summaries = OverLimit::default();
    summaries.follow(&limiter);

    // Alice: 2 allowed, then 25 refused; Bob: 2 allowed, then 3 refused. All before the first
    // interval ends (it starts when reporting starts), so each lands in one summary.
    const N: usize = 25;
    let mut alice = Vec::new();
    for _ in 0..N + 2 {
        alice.push(refused(&limiter, "alice").await);
    }
    assert_eq!(alice.iter().filter(|r| **r).count(), N);
    for _ in 0..5 {
        refused(&limiter, "bob").await;
    }
    summaries.report_every(events, Duration::from_millis(300));
    let got = collect(&ch, &queue, 2).await;
    // A later refusal is the next interval's: its summary comes next, alone.
    for is_refused in [false, false, true] {
        assert_eq!(refused(&limiter, "carol").await, is_refused);
    }
    let later = collect(&ch, &queue, 1).await;

    let summary = |d: &lapin::message::Delivery| {
        let e: Envelope = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(e.kind, "nexus.ratelimit.over_limit", "{e:?}");
        assert_eq!(
            d.routing_key.as_str(),
            "nexus.ratelimit.over_limit.cortex-infer"
        );
        assert!(e.data["from"].as_str() < e.data["to"].as_str(), "{e:?}");
        (
            e.data["client"].as_str().unwrap().to_string(),
            e.data["count"].as_u64().unwrap(),
        )
    };
    let counts: Vec<(String, u64)> = got.iter().chain(&later).map(summary).collect();
    assert_eq!(
        counts,
        [
            ("alice".to_string(), N as u64),
            ("bob".to_string(), 3),
            ("carol".to_string(), 1),
        ]
    );
    remove_exchange(&ch, &exchange).await;
}
