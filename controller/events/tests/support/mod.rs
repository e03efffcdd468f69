//! Shared test support: unique names on the shared RabbitMQ, a queue bound to an exchange,
//! and collecting deliveries by count (never by time: the deadline only stops a broken test).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// The machine's RabbitMQ (`cargo xtask test` and `.ci/run` make sure it runs).
pub const SHARED_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";
/// How long a test waits for what it expects before failing (not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}.{}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nexus_events::envelope::new_id()
    )
}

pub async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (cargo xtask test starts it)");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// A topic exchange declared as the publisher declares it.
pub async fn declare_topic(ch: &Channel, exchange: &str) {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// A queue named `queue` bound to `exchange` with `pattern`: durable (it outlives a broker
/// restart) on a private broker, auto-deleted with its consumer on the shared one.
pub async fn bound_queue(ch: &Channel, exchange: &str, queue: &str, pattern: &str) {
    declare_topic(ch, exchange).await;
    let options = if exchange.contains(".private.") {
        QueueDeclareOptions::durable()
    } else {
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        }
    };
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Consumes `queue` until `n` messages arrived (acking each), or fails after [`PATIENCE`].
pub async fn collect(ch: &Channel, queue: &str, n: usize) -> Vec<Delivery> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let got = tokio::time::timeout(PATIENCE, async {
        while out.len() < n {
            let d = consumer.next().await.expect("consumer ended").unwrap();
            d.ack(BasicAckOptions::default()).await.unwrap();
            out.push(d);
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "only {} of {n} messages arrived on {queue}",
        out.len()
    );
    out
}

/// Removes a test's exchange from the shared broker (its queues went with their consumers).
pub async fn remove_exchange(ch: &Channel, exchange: &str) {
    let _ = ch
        .exchange_delete(
            exchange.into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
}

/// Messages left in `queue` right now.
pub async fn depth(ch: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// Polls `cond` until true or fails after [`PATIENCE`] with `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
