//! `cargo xtask bench events`: on the machine's RabbitMQ, in one run,
//! - events/s through `Events::publish` (queue → background task → confirms), against a plain
//!   lapin loop publishing the same envelopes with confirms awaited per batch of the same size;
//! - the round trip of a command (publish with `reply_to` → consumer → handler → reply), p50/p99.
//!
//! Both publishers write persistent messages to a durable queue bound to their exchange, so
//! RabbitMQ does the same work for each. Names are unique per run and removed afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use nexus_events::command::{Command, Handler, HandlerError};
use nexus_events::consumer::{self, ConsumerConfig};
use nexus_events::envelope::Envelope;
use nexus_events::outbox::MemoryOutbox;
use nexus_events::{Events, PublisherConfig, Stats};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const EVENTS: usize = 20_000;
const BATCH: usize = 256;
const COMMANDS: usize = 2_000;

fn name(what: &str) -> String {
    format!("bench.{what}.{}", nexus_events::envelope::new_id())
}

fn envelope(seq: usize) -> Envelope {
    Envelope::new(
        "nexus.route.programmed",
        "nexus://bench/r1",
        serde_json::json!({"namespace": "data", "name": format!("route-{seq}"), "generation": 1}),
    )
}

/// A durable topic exchange with a durable queue bound to everything.
async fn sink(ch: &Channel) -> (String, String) {
    let (exchange, queue) = (name("events"), name("sink"));
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (exchange, queue)
}

async fn remove(ch: &Channel, exchange: &str, queue: &str) {
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// The baseline: publish with confirms, awaiting each batch's confirms together.
async fn plain_lapin(conn: &Connection) -> f64 {
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = sink(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            let e = envelope(i);
            (e.id.clone(), serde_json::to_vec(&e).unwrap())
        })
        .collect();
    let start = Instant::now();
    for chunk in bodies.chunks(BATCH) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for (id, body) in chunk {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into());
            confirms.push(
                ch.basic_publish(
                    exchange.as_str().into(),
                    "nexus.route.programmed.data.x".into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    remove(&ch, &exchange, &queue).await;
    rate
}

/// Nexus's publisher: from the first `publish` to the last confirm.
async fn nexus_publisher(conn: &Connection) -> f64 {
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = sink(&ch).await;
    let mut config = PublisherConfig::new(URL, "nexus://bench/r1");
    config.exchange = exchange.clone();
    let stats = Arc::new(Stats::default());
    let events = Events::start(config, Arc::new(MemoryOutbox::new(EVENTS)), stats.clone());
    // Connected before the clock starts, as a running process is.
    events.publish_envelope("nexus.warmup", &envelope(0));
    while Stats::get(&stats.published) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let envelopes: Vec<Envelope> = (0..EVENTS).map(envelope).collect();
    let start = Instant::now();
    for e in &envelopes {
        events.publish_envelope("nexus.route.programmed.data.x", e);
    }
    let enqueued = start.elapsed();
    while Stats::get(&stats.published) < EVENTS as u64 + 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
    println!(
        "  Events::publish itself: {:.2} µs per call (enqueue only)",
        enqueued.as_secs_f64() * 1e6 / EVENTS as f64
    );
    assert_eq!(Stats::get(&stats.overflow), 0);
    remove(&ch, &exchange, &queue).await;
    rate
}

struct Noop;

#[async_trait::async_trait]
impl Handler for Noop {
    async fn handle(&self, _: &Command) -> Result<serde_json::Value, HandlerError> {
        Ok(serde_json::Value::Null)
    }
}

/// Sequential RPCs: publish with `reply_to`, wait for the reply.
async fn round_trips(conn: &Connection) -> Vec<Duration> {
    let mut config = ConsumerConfig::new(URL, &name("deployment"), "nexus://bench/r1");
    config.exchange = name("commands");
    config.dead_letter_exchange = name("dead");
    let stats = Arc::new(Stats::default());
    consumer::start(config.clone(), Arc::new(Noop), stats.clone());
    while !stats
        .consumer_connected
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ch = conn.create_channel().await.unwrap();
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let replies = ch
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .unwrap()
        .name()
        .to_string();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut answers = ch
        .basic_consume(
            replies.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut times = Vec::with_capacity(COMMANDS);
    for i in 0..COMMANDS {
        let body = serde_json::to_vec(&Envelope::new(
            "cache.flush",
            "bench",
            serde_json::json!({}),
        ))
        .unwrap();
        let props = BasicProperties::default()
            .with_reply_to(replies.as_str().into())
            .with_correlation_id(i.to_string().into());
        let start = Instant::now();
        ch.basic_publish(
            config.exchange.as_str().into(),
            "cache.flush".into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap();
        let reply = answers.next().await.unwrap().unwrap();
        times.push(start.elapsed());
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string()),
            Some(i.to_string())
        );
    }
    for q in [config.queue.clone(), config.dead_queue()] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [&config.exchange, &config.dead_letter_exchange] {
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    println!("events: {EVENTS} persistent envelopes (~{} bytes) to a durable queue, confirms per batch of {BATCH}", serde_json::to_vec(&envelope(0)).unwrap().len());
    // Alternated, so neither side gets a warmer broker.
    let mut plain = Vec::new();
    let mut nexus = Vec::new();
    for _ in 0..3 {
        plain.push(plain_lapin(&conn).await);
        nexus.push(nexus_publisher(&conn).await);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "  plain lapin loop, confirms: {:>8.0} events/s (best of 3: {:?})",
        best(&plain),
        plain.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "  nexus Events::publish:      {:>8.0} events/s (best of 3: {:?})",
        best(&nexus),
        nexus.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "  ratio nexus / plain:        {:>8.2}",
        best(&nexus) / best(&plain)
    );
    let mut times = round_trips(&conn).await;
    times.sort();
    println!(
        "commands: {COMMANDS} sequential RPC round trips (publish → consumer → handler → reply)"
    );
    println!(
        "  p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
}
