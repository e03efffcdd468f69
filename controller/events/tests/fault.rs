//! RabbitMQ dies and comes back: a private `rabbitmq-server` node (never the shared one) is
//! killed, 1,000 events are published meanwhile into the Redis outbox, and after the restart
//! every one arrives exactly once (after dropping repeats by id), in order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use nexus_events::envelope::Envelope;
use nexus_events::outbox::{Outbox, RedisOutbox};
use nexus_events::{Events, PublisherConfig, Stats};
use nexus_toolenv::rabbitmq::PrivateNode;
use support::*;

const EVENTS: u64 = 1_000;
const KEYS: u64 = 4;

fn event(seq: u64) -> (String, Envelope) {
    let key = format!("nexus.fault.k{}", seq % KEYS);
    (
        key,
        Envelope::new(
            "nexus.fault",
            "nexus://test/r1",
            serde_json::json!({ "seq": seq }),
        ),
    )
}

/// Reads `queue` until `n` distinct ids arrived; returns their `seq`s in arrival order (first
/// copy of each) and how many repeats were dropped.
async fn receive_distinct(url: &str, queue: &str, n: usize) -> (Vec<(String, u64)>, usize) {
    let (_conn, ch) = connect(url).await;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (mut seen, mut order, mut repeats) = (HashSet::new(), Vec::new(), 0);
    let done = tokio::time::timeout(PATIENCE, async {
        while order.len() < n {
            let d = consumer.next().await.expect("consumer ended").unwrap();
            d.ack(BasicAckOptions::default()).await.unwrap();
            let env: Envelope = serde_json::from_slice(&d.data).unwrap();
            if seen.insert(env.id.clone()) {
                order.push((d.routing_key.to_string(), env.data["seq"].as_u64().unwrap()));
            } else {
                repeats += 1;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "only {} of {n} distinct events arrived",
        order.len()
    );
    (order, repeats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_published_while_rabbitmq_is_down_arrive_once_in_order() {
    let mut rabbit = tokio::task::block_in_place(PrivateNode::start).unwrap();
    let url = rabbit.url();
    let exchange = unique("service.events.private.fault");
    let queue = unique("fault-watcher");
    {
        let (_conn, ch) = connect(&url).await;
        bound_queue(&ch, &exchange, &queue, "nexus.fault.*").await;
    }
    let outbox = Arc::new(
        RedisOutbox::new(SHARED_REDIS, &unique("nexus:events:outbox:fault"), 10_000).unwrap(),
    );
    let mut config = PublisherConfig::new(&url, "nexus://test/r1");
    config.exchange = exchange.clone();
    let stats = Arc::new(Stats::default());
    let events = Events::start(config, outbox.clone(), stats.clone());

    // Connected and publishing first, so the outage is one the publisher lives through.
    let (key, env) = event(0);
    events.publish_envelope(&key, &env).unwrap();
    eventually("the first event confirmed", || {
        Stats::get(&stats.published) == 1
    })
    .await;

    tokio::task::block_in_place(|| rabbit.stop());
    for seq in 1..=EVENTS {
        let (key, env) = event(seq);
        assert!(
            events.publish_envelope(&key, &env).is_some(),
            "publish refused event {seq}"
        );
    }
    let progress = || {
        format!(
            "outbox {}, published {}, overflow {}, last error {:?}",
            Stats::get(&stats.outbox_depth),
            Stats::get(&stats.published),
            Stats::get(&stats.overflow),
            stats.last_error()
        )
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while Stats::get(&stats.outbox_depth) != EVENTS {
        let late = tokio::time::Instant::now() > deadline;
        assert!(
            !late,
            "1,000 events never all in the outbox: {}",
            progress()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(outbox.depth().await.unwrap(), EVENTS);
    assert!(stats.health().is_err(), "health must report RabbitMQ down");

    tokio::task::block_in_place(|| rabbit.restart()).unwrap();
    let (order, repeats) = receive_distinct(&url, &queue, (EVENTS + 1) as usize).await;
    eprintln!(
        "fault test: {} distinct events, {repeats} repeats dropped by id",
        order.len()
    );

    let seqs: Vec<u64> = order.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (0..=EVENTS).collect::<Vec<_>>(),
        "every event once, in publish order"
    );
    for k in 0..KEYS {
        let per_key: Vec<u64> = order
            .iter()
            .filter(|(rk, _)| rk == &format!("nexus.fault.k{k}"))
            .map(|(_, s)| *s)
            .collect();
        assert!(
            per_key.windows(2).all(|w| w[0] < w[1]),
            "order within nexus.fault.k{k}"
        );
    }
    eventually("the outbox drained", || {
        Stats::get(&stats.outbox_depth) == 0
    })
    .await;
    assert_eq!(outbox.depth().await.unwrap(), 0);
    assert_eq!(Stats::get(&stats.overflow), 0);
    eventually("health back up", || stats.health().is_ok()).await;
}
