//! Consuming `service.commands`: one durable queue per Nexus deployment, bound to the direct
//! exchange by each command name, consumed by every replica (RabbitMQ gives each command to
//! one of them).
//!
//! A message is acknowledged only after its handler succeeded, or after it was dead-lettered:
//! an invalid command (bad JSON, unknown name, bad fields, refused by the handler) is
//! republished — with confirms — to `service.commands.dead` with the reason in the
//! `x-nexus-reason` header, then acknowledged. (A plain `basic.reject` would dead-letter it
//! too, but without a reason.) A handler that cannot act yet (Redis down) gets the message
//! back after a pause. When the sender set `reply_to`, a reply envelope goes there with the
//! sender's `correlation_id` (RPC style).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use crate::command::{self, Handler, HandlerError};
use crate::envelope::{Envelope, CONTENT_TYPE};
use crate::stats::Stats;

pub const COMMANDS_EXCHANGE: &str = "service.commands";
pub const DEAD_LETTER_EXCHANGE: &str = "service.commands.dead";
/// Header of a dead-lettered command: why it was refused.
pub const REASON_HEADER: &str = "x-nexus-reason";
/// The `type` of an RPC reply envelope.
pub const REPLY_TYPE: &str = "nexus.command.reply";

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub url: String,
    pub exchange: String,
    pub dead_letter_exchange: String,
    /// `nexus.commands.<deployment>`; its dead letters go to `<queue>.dead`.
    pub queue: String,
    /// Commands in flight per replica.
    pub prefetch: u16,
    /// Pause before a command whose handler could not act yet is handed back.
    pub retry_delay: Duration,
    /// `source` of reply envelopes.
    pub source: String,
}

impl ConsumerConfig {
    pub fn new(url: &str, deployment: &str, source: &str) -> Self {
        Self {
            url: url.to_string(),
            exchange: COMMANDS_EXCHANGE.to_string(),
            dead_letter_exchange: DEAD_LETTER_EXCHANGE.to_string(),
            queue: format!("nexus.commands.{deployment}"),
            prefetch: 16,
            retry_delay: Duration::from_secs(1),
            source: source.to_string(),
        }
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

/// Runs the consumer until the process ends, reconnecting with backoff.
pub fn start(
    config: ConsumerConfig,
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    stats.consumer_enabled.store(true, Ordering::Relaxed);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut connected = false;
            let error = session(&config, handler.as_ref(), &stats, &mut connected).await;
            stats.consumer_connected.store(false, Ordering::Relaxed);
            tracing::warn!(%error, queue = %config.queue, "command consumer stopped; reconnecting");
            stats.set_error(error);
            if connected {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

/// One connection's life: declare, consume, process in order. Returns why it ended.
async fn session(
    config: &ConsumerConfig,
    handler: &dyn Handler,
    stats: &Stats,
    connected: &mut bool,
) -> String {
    let props =
        ConnectionProperties::default().with_connection_name("nexus-commands-consumer".into());
    let conn = match Connection::connect(&config.url, props).await {
        Ok(c) => c,
        Err(e) => return format!("connect: {e}"),
    };
    let setup = async {
        let input = conn.create_channel().await?;
        let output = conn.create_channel().await?;
        output
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare(&input, config).await?;
        input
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = input
            .basic_consume(
                config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((input, output, consumer))
    };
    let (_input, output, mut consumer) = match setup.await {
        Ok(s) => s,
        Err(e) => return format!("declare/consume {}: {e}", config.queue),
    };
    *connected = true;
    stats.consumer_connected.store(true, Ordering::Relaxed);
    tracing::info!(queue = %config.queue, "command consumer connected");
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => return format!("consume: {e}"),
        };
        if let Err(e) = process(&delivery, &output, config, handler, stats).await {
            return e;
        }
    }
    "consumer cancelled by RabbitMQ".into()
}

/// The exchanges, the deployment's queue (bound by every command name) and its dead-letter
/// queue. Idempotent: every replica declares the same.
async fn declare(ch: &Channel, config: &ConsumerConfig) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        config.exchange.as_str().into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        config.dead_letter_exchange.as_str().into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await?;
    let queue = QueueDeclareOptions::durable();
    let dead = config.dead_queue();
    ch.queue_declare(dead.as_str().into(), queue, FieldTable::default())
        .await?;
    ch.queue_bind(
        dead.as_str().into(),
        config.dead_letter_exchange.as_str().into(),
        config.queue.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    // What RabbitMQ itself dead-letters (a reject, a TTL) lands in the same queue.
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(config.dead_letter_exchange.as_str().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(config.queue.as_str().into()),
    );
    ch.queue_declare(config.queue.as_str().into(), queue, args)
        .await?;
    for name in command::NAMES {
        ch.queue_bind(
            config.queue.as_str().into(),
            config.exchange.as_str().into(),
            name.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// What became of one command.
enum Outcome {
    Done(String, serde_json::Value),
    Invalid(String),
    Retry(String),
}

async fn process(
    d: &Delivery,
    out: &Channel,
    config: &ConsumerConfig,
    handler: &dyn Handler,
    stats: &Stats,
) -> Result<(), String> {
    let key = d.routing_key.as_str();
    let outcome = match command::parse(key, &d.data) {
        Err(reason) => Outcome::Invalid(reason),
        Ok((_, cmd)) => match handler.handle(&cmd).await {
            Ok(result) => Outcome::Done(cmd.name().to_string(), result),
            Err(HandlerError::Refused(r)) => Outcome::Invalid(format!("{}: {r}", cmd.name())),
            Err(HandlerError::Unavailable(e)) => Outcome::Retry(format!("{}: {e}", cmd.name())),
        },
    };
    let amqp = |e: lapin::Error| format!("ack/publish: {e}");
    match outcome {
        Outcome::Done(name, result) => {
            reply(
                d,
                out,
                config,
                json!({"ok": true, "command": name, "result": result}),
            )
            .await?;
            d.ack(BasicAckOptions::default()).await.map_err(amqp)?;
            Stats::add(&stats.commands_handled, 1);
        }
        Outcome::Invalid(reason) => {
            tracing::warn!(%reason, routing_key = key, "command dead-lettered");
            dead_letter(d, out, config, &reason).await?;
            reply(
                d,
                out,
                config,
                json!({"ok": false, "command": key, "error": reason}),
            )
            .await?;
            d.ack(BasicAckOptions::default()).await.map_err(amqp)?;
            Stats::add(&stats.commands_rejected, 1);
        }
        Outcome::Retry(error) => {
            tracing::warn!(%error, routing_key = key, "command handed back to retry");
            stats.set_error(error);
            tokio::time::sleep(config.retry_delay).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            d.nack(requeue).await.map_err(amqp)?;
            Stats::add(&stats.commands_retried, 1);
        }
    }
    Ok(())
}

/// Republishes the message to the dead-letter exchange with the reason, and waits for the
/// confirm: only then may the original be acknowledged.
async fn dead_letter(
    d: &Delivery,
    out: &Channel,
    config: &ConsumerConfig,
    reason: &str,
) -> Result<(), String> {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        "x-nexus-routing-key".into(),
        AMQPValue::LongString(d.routing_key.as_str().into()),
    );
    let props = d
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = out
        .basic_publish(
            config.dead_letter_exchange.as_str().into(),
            config.queue.as_str().into(),
            BasicPublishOptions::default(),
            &d.data,
            props,
        )
        .await
        .map_err(|e| format!("dead-letter publish: {e}"))?
        .await
        .map_err(|e| format!("dead-letter confirm: {e}"))?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("dead-letter publish refused (nack)".into())
    }
}

/// Answers on `reply_to` with the sender's correlation id (its message id when it set none).
async fn reply(
    d: &Delivery,
    out: &Channel,
    config: &ConsumerConfig,
    data: serde_json::Value,
) -> Result<(), String> {
    let Some(reply_to) = d.properties.reply_to().clone() else {
        return Ok(());
    };
    let correlation: Option<ShortString> = d
        .properties
        .correlation_id()
        .clone()
        .or_else(|| d.properties.message_id().clone());
    let mut env = Envelope::new(REPLY_TYPE, config.source.as_str(), data);
    if let Some(c) = &correlation {
        env = env.with_correlation(c.as_str());
    }
    let body = serde_json::to_vec(&env).map_err(|e| e.to_string())?;
    let mut props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(env.id.as_str().into());
    if let Some(c) = correlation {
        props = props.with_correlation_id(c);
    }
    // The default exchange routes to the queue named `reply_to`; a sender that is gone makes
    // the reply unroutable, which is no reason to hold the command back.
    out.basic_publish(
        "".into(),
        reply_to,
        BasicPublishOptions::default(),
        &body,
        props,
    )
    .await
    .map_err(|e| format!("reply publish: {e}"))?
    .await
    .map_err(|e| format!("reply confirm: {e}"))?;
    Ok(())
}
