//! Listening on the real RabbitMQ's `service.events` exchange, as a platform service would.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Collects the envelopes of events whose routing key matches `pattern`, from now until one
/// of type `until` arrives (or `within` passes: the task then fails naming what it heard).
pub async fn listen(
    pattern: &str,
    until: &'static str,
    within: Duration,
) -> tokio::task::JoinHandle<Vec<Value>> {
    let (conn, mut consumer) = subscribe(pattern).await;
    tokio::spawn(async move {
        let _keep = conn;
        let mut heard = Vec::new();
        let all = tokio::time::timeout(within, async {
            while let Some(Ok(d)) = consumer.next().await {
                let e: Value = serde_json::from_slice(&d.data).unwrap();
                let done = e["type"] == until;
                heard.push(e);
                if done {
                    break;
                }
            }
        })
        .await;
        let types: Vec<&Value> = heard.iter().map(|e| &e["type"]).collect();
        assert!(all.is_ok(), "no {until} event; heard {types:?}");
        heard
    })
}

/// A private queue bound to `service.events` with `pattern`, and its consumer (no acks).
async fn subscribe(pattern: &str) -> (lapin::Connection, lapin::Consumer) {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (cargo xtask test starts it)");
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let topic = lapin::ExchangeKind::Topic;
    ch.exchange_declare(
        "service.events".into(),
        topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = ch
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .unwrap();
    let bind = QueueBindOptions::default();
    ch.queue_bind(
        queue.name().clone(),
        "service.events".into(),
        pattern.into(),
        bind,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            consume,
            FieldTable::default(),
        )
        .await
        .unwrap();
    (conn, consumer)
}

/// Collects, in the background and until the runtime ends, the envelopes of events whose
/// routing key matches `pattern`, from now on.
pub async fn record(pattern: &str) -> std::sync::Arc<std::sync::Mutex<Vec<Value>>> {
    let (conn, mut consumer) = subscribe(pattern).await;
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = heard.clone();
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = consumer.next().await {
            let e: Value = serde_json::from_slice(&d.data).unwrap();
            keep.lock().unwrap().push(e);
        }
    });
    heard
}

/// Sends command `kind` (an envelope with `data`) to `service.commands`, as a platform service
/// would; every deployment whose queue is bound to `kind` receives it.
pub async fn send_command(kind: &str, data: Value) {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (cargo xtask test starts it)");
    let ch = conn.create_channel().await.unwrap();
    let body =
        serde_json::to_vec(&nexus_events::envelope::Envelope::new(kind, "test", data)).unwrap();
    let publish = lapin::options::BasicPublishOptions::default();
    ch.basic_publish(
        "service.commands".into(),
        kind.into(),
        publish,
        &body,
        Default::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "sent".into()).await;
}

/// Sends command `kind` with `data` as an RPC until `deployment` answers it (its queue may
/// still be binding right after start), and returns that answer's `data` (`{"ok", "result"
/// | "error"}`). Other deployments on the machine may answer too: their replies are skipped.
pub async fn command(deployment: &str, kind: &str, data: Value) -> Value {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (cargo xtask test starts it)");
    let ch = conn.create_channel().await.unwrap();
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let replies = ch
        .queue_declare("".into(), private, FieldTable::default())
        .await
        .unwrap();
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(
            replies.name().clone(),
            "".into(),
            consume,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ours = format!("nexus://{deployment}/");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let envelope = nexus_events::envelope::Envelope::new(kind, "test", data.clone());
        let correlation = envelope.id.clone();
        let properties = lapin::BasicProperties::default()
            .with_reply_to(replies.name().clone())
            .with_correlation_id(correlation.clone().into());
        ch.basic_publish(
            "service.commands".into(),
            kind.into(),
            lapin::options::BasicPublishOptions::default(),
            &serde_json::to_vec(&envelope).unwrap(),
            properties,
        )
        .await
        .unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(d)) = consumer.next().await {
                let reply: Value = serde_json::from_slice(&d.data).unwrap();
                let mine = d.properties.correlation_id().as_ref().map(|c| c.as_str())
                    == Some(correlation.as_str());
                if mine
                    && reply["source"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(&ours))
                {
                    return Some(reply["data"].clone());
                }
            }
            None
        })
        .await;
        if let Ok(Some(answer)) = answered {
            let _ = conn.close(200, "answered".into()).await;
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{deployment} never answered {kind}"
        );
    }
}
