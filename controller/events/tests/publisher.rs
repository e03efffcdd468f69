//! The publisher against the machine's RabbitMQ and Redis: wildcard routing, order, message
//! properties, the outbox's bound and its overflow count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use nexus_events::envelope::Envelope;
use nexus_events::event::{CacheSelection, Event, RouteStage};
use nexus_events::outbox::{MemoryOutbox, Outbox, RedisOutbox};
use nexus_events::{Events, PublisherConfig, Stats};
use support::*;

fn publisher(url: &str, exchange: &str, outbox: Arc<dyn Outbox>) -> (Events, Arc<Stats>) {
    let mut config = PublisherConfig::new(url, "nexus://test/r1");
    config.exchange = exchange.to_string();
    let stats = Arc::new(Stats::default());
    (Events::start(config, outbox, stats.clone()), stats)
}

#[tokio::test]
async fn a_consumer_bound_to_nexus_route_receives_route_events_in_order() {
    let exchange = unique("service.events.test");
    let queue = unique("route-watcher");
    let (_conn, ch) = connect(SHARED_AMQP).await;
    bound_queue(&ch, &exchange, &queue, "nexus.route.#").await;
    let (events, stats) = publisher(SHARED_AMQP, &exchange, Arc::new(MemoryOutbox::new(100)));
    let sent = [
        Event::route(RouteStage::Accepted, "data", "lake", Some(1)),
        Event::CacheInvalidated(CacheSelection {
            tags: vec!["t".into()],
            ..Default::default()
        }),
        Event::route(RouteStage::Programmed, "data", "lake", Some(1)),
        Event::route_rejected("data", "lake", Some(2), "$.spec.rules[0].path: empty"),
        Event::route(RouteStage::Deleted, "data", "lake", None),
    ];
    let ids: Vec<String> = sent
        .iter()
        .cloned()
        .map(|e| events.publish(e).unwrap())
        .collect();
    let got = collect(&ch, &queue, 4).await;
    let kinds: Vec<String> = got
        .iter()
        .map(|d| serde_json::from_slice::<Envelope>(&d.data).unwrap().kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "nexus.route.accepted",
            "nexus.route.programmed",
            "nexus.route.rejected",
            "nexus.route.deleted"
        ]
    );
    let first = &got[0];
    assert_eq!(first.routing_key.as_str(), "nexus.route.accepted.data.lake");
    assert_eq!(
        first.properties.message_id().as_ref().map(|s| s.as_str()),
        Some(ids[0].as_str())
    );
    assert_eq!(*first.properties.delivery_mode(), Some(2), "persistent");
    let rejected: Envelope = serde_json::from_slice(&got[2].data).unwrap();
    assert_eq!(rejected.data["reason"], "$.spec.rules[0].path: empty");
    assert_eq!(rejected.subject.as_deref(), Some("data/lake"));
    eventually("all five confirmed", || Stats::get(&stats.published) == 5).await;
    assert_eq!(Stats::get(&stats.overflow), 0);
    assert!(stats.health().is_ok(), "{:?}", stats.health());
    assert!(stats.render().contains("nexus_events_published_total 5"));
    remove_exchange(&ch, &exchange).await;
}

#[tokio::test]
async fn while_rabbitmq_is_unreachable_events_fill_the_bounded_outbox_and_overflow_is_counted() {
    // Nothing listens on this port: every connection attempt is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let outbox = Arc::new(MemoryOutbox::new(10));
    let (events, stats) = publisher(&url, "service.events", outbox.clone());
    for i in 0..25 {
        // Never blocks, never fails: the caller cannot tell RabbitMQ is down.
        assert!(events
            .publish(Event::route(
                RouteStage::Programmed,
                "ns",
                &format!("r{i}"),
                None
            ))
            .is_some());
    }
    eventually("25 events outboxed or counted", || {
        Stats::get(&stats.outbox_depth) + Stats::get(&stats.overflow) == 25
    })
    .await;
    assert_eq!(outbox.depth().await.unwrap(), 10);
    assert_eq!(Stats::get(&stats.overflow), 15);
    assert_eq!(Stats::get(&stats.published), 0);
    let health = stats.health().unwrap_err();
    assert!(
        health.contains("connect") && health.contains("overflow 15"),
        "{health}"
    );
    // The oldest ten are kept, in order.
    let kept = outbox.peek(100).await.unwrap();
    assert!(
        kept[0].starts_with("nexus.route.programmed.ns.r0 "),
        "{}",
        kept[0]
    );
    assert!(
        kept[9].starts_with("nexus.route.programmed.ns.r9 "),
        "{}",
        kept[9]
    );
}

#[tokio::test]
async fn the_redis_outbox_is_bounded_fifo_and_removes_only_confirmed_heads() {
    let key = unique("nexus:events:outbox:test");
    let outbox = RedisOutbox::new(SHARED_REDIS, &key, 3).unwrap();
    let lines: Vec<String> = (0..5).map(|i| format!("k id{i} {{}}")).collect();
    assert_eq!(outbox.push(&lines).await.unwrap(), 3);
    assert_eq!(outbox.depth().await.unwrap(), 3);
    assert_eq!(outbox.peek(10).await.unwrap(), lines[..3]);
    // A head that is not the one confirmed stays (another replica drained it first).
    assert_eq!(outbox.remove_head(&lines[1..2]).await.unwrap(), 0);
    assert_eq!(outbox.remove_head(&lines[..2]).await.unwrap(), 2);
    assert_eq!(outbox.peek(10).await.unwrap(), lines[2..3]);
    assert_eq!(outbox.remove_head(&lines[2..3]).await.unwrap(), 1);
    assert_eq!(outbox.depth().await.unwrap(), 0);
}
