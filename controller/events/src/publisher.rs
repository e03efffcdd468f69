//! Publishing on `service.events`, without ever making the caller wait.
//!
//! [`Events::publish`] only puts the event on an in-process queue. One background task takes
//! events off it in order and publishes them on one channel with publisher confirms (so
//! RabbitMQ keeps their order), in batches whose confirms are awaited together. Whatever is
//! not confirmed — RabbitMQ down, a connection lost mid-batch — goes to the [`Outbox`], and
//! while the outbox holds anything every new event goes there too, behind it: the outbox is
//! drained, oldest first, before live publishing resumes. So the order of events is the order
//! of `publish` calls, and delivery is at least once; consumers drop repeats by envelope id
//! (also the AMQP `message_id`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::envelope::{Envelope, CONTENT_TYPE};
use crate::event::Event;
use crate::outbox::Outbox;
use crate::stats::Stats;

pub const EVENTS_EXCHANGE: &str = "service.events";

/// How long a connection attempt may take, and the reconnect backoff's bounds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// While idle, the task looks this often at the connection and at the (possibly shared)
/// outbox, so health is current and another replica's leftovers get drained.
const IDLE_CHECK: Duration = Duration::from_secs(2);
/// A publish or confirm that takes longer means a connection that died without saying so
/// (a peer killed mid-write): the batch's rest goes to the outbox, the link is dropped.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `amqp://user:pass@host:5672/%2f` (`amqps://` for TLS).
    pub url: String,
    pub exchange: String,
    /// The envelopes' `source`: `nexus://<deployment>/<replica>`.
    pub source: String,
    /// Events the in-process queue holds before `publish` counts overflow.
    pub queue_capacity: usize,
    /// Events published before their confirms are awaited together.
    pub batch: usize,
    pub backoff_max: Duration,
}

impl PublisherConfig {
    pub fn new(url: &str, source: &str) -> Self {
        Self {
            url: url.to_string(),
            exchange: EVENTS_EXCHANGE.to_string(),
            source: source.to_string(),
            queue_capacity: 65_536,
            batch: 256,
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The handle the rest of Nexus publishes through: cheap to clone, never blocks, never fails.
/// A disabled handle (no `--amqp-url`) drops events without counting them.
#[derive(Clone)]
pub struct Events {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<String>,
    source: String,
    stats: Arc<Stats>,
}

impl Events {
    /// Starts the background publisher on the current tokio runtime.
    pub fn start(config: PublisherConfig, outbox: Arc<dyn Outbox>, stats: Arc<Stats>) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let inner = Arc::new(Inner {
            tx,
            source: config.source.clone(),
            stats: stats.clone(),
        });
        tokio::spawn(Worker::new(config, rx, outbox, stats).run());
        Self { inner: Some(inner) }
    }

    /// A handle that publishes nothing (no bus configured).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` for publishing; returns its envelope id (None when disabled or
    /// dropped because the queue is full, which counts as overflow).
    pub fn publish(&self, event: Event) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let (key, envelope) = event.into_envelope(&inner.source);
        self.publish_envelope(&key, &envelope)
    }

    /// Like [`Events::publish`] with `correlationid` set (e.g. the command that caused it).
    pub fn publish_correlated(&self, event: Event, correlation: &str) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let (key, envelope) = event.into_envelope(&inner.source);
        self.publish_envelope(&key, &envelope.with_correlation(correlation))
    }

    /// Queues a ready envelope under `routing_key`.
    pub fn publish_envelope<D: serde::Serialize>(
        &self,
        routing_key: &str,
        envelope: &Envelope<D>,
    ) -> Option<String> {
        let inner = self.inner.as_ref()?;
        Stats::add(&inner.stats.enqueued, 1);
        let Ok(json) = serde_json::to_string(envelope) else {
            Stats::add(&inner.stats.overflow, 1);
            return None;
        };
        let line = format!("{routing_key} {} {json}", envelope.id);
        match inner.tx.try_send(line) {
            Ok(()) => Some(envelope.id.clone()),
            Err(_) => {
                Stats::add(&inner.stats.overflow, 1);
                None
            }
        }
    }

    /// The envelopes' `source`.
    pub fn source(&self) -> Option<&str> {
        self.inner.as_ref().map(|i| i.source.as_str())
    }

    pub fn stats(&self) -> Option<&Arc<Stats>> {
        self.inner.as_ref().map(|i| &i.stats)
    }
}

/// `(routing key, message id, body)` of an outbox line.
fn split(line: &str) -> Option<(&str, &str, &str)> {
    let (key, rest) = line.split_once(' ')?;
    let (id, body) = rest.split_once(' ')?;
    Some((key, id, body))
}

/// One connection and confirm-mode channel with the exchange declared.
struct Link {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Link {
    async fn open(config: &PublisherConfig) -> Result<Self, String> {
        let props =
            ConnectionProperties::default().with_connection_name("nexus-events-publisher".into());
        let connection = Connection::connect(&config.url, props)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("declare exchange {}: {e}", config.exchange))?;
        Ok(Self {
            connection,
            channel,
            exchange: config.exchange.clone(),
        })
    }

    fn alive(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `lines` in order and awaits their confirms; returns how many from the start
    /// were confirmed, and the error that stopped the rest.
    async fn publish(&self, lines: &[String]) -> (usize, Option<String>) {
        let mut confirms = Vec::with_capacity(lines.len());
        let mut error = None;
        for line in lines {
            let Some((key, id, body)) = split(line) else {
                // Not ours (a foreign write to the outbox list): confirmed as nothing to send.
                confirms.push(None);
                continue;
            };
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into())
                .with_content_type(CONTENT_TYPE.into())
                .with_app_id("nexus".into());
            let publish = self.channel.basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            );
            match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
                Ok(Ok(c)) => confirms.push(Some(c)),
                Ok(Err(e)) => {
                    error = Some(format!("publish: {e}"));
                    break;
                }
                Err(_) => {
                    error = Some(format!("publish: not written within {CONFIRM_TIMEOUT:?}"));
                    break;
                }
            }
        }
        let mut confirmed = 0;
        for c in confirms {
            let Some(c) = c else {
                confirmed += 1;
                continue;
            };
            let Ok(answer) = tokio::time::timeout(CONFIRM_TIMEOUT, c).await else {
                error.get_or_insert_with(|| format!("no confirm within {CONFIRM_TIMEOUT:?}"));
                break;
            };
            match answer {
                Ok(c) if c.is_ack() => confirmed += 1,
                Ok(_) => {
                    error.get_or_insert_with(|| "RabbitMQ refused (nack) an event".into());
                    break;
                }
                Err(e) => {
                    error.get_or_insert_with(|| format!("confirm: {e}"));
                    break;
                }
            }
        }
        (confirmed, error)
    }
}

struct Worker {
    config: PublisherConfig,
    rx: mpsc::Receiver<String>,
    outbox: Arc<dyn Outbox>,
    stats: Arc<Stats>,
    link: Option<Link>,
    backoff: Duration,
    next_try: Instant,
    /// The outbox may hold lines: new events go behind them.
    backlog: bool,
}

impl Worker {
    fn new(
        config: PublisherConfig,
        rx: mpsc::Receiver<String>,
        outbox: Arc<dyn Outbox>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            config,
            rx,
            outbox,
            stats,
            link: None,
            backoff: BACKOFF_MIN,
            next_try: Instant::now(),
            // Unknown until looked at: a previous run may have left lines.
            backlog: true,
        }
    }

    async fn run(mut self) {
        tracing::info!(outbox = %self.outbox.describe(), exchange = %self.config.exchange, "event publisher started");
        loop {
            if self.backlog {
                if self.connected().await {
                    self.drain().await;
                } else if !self.park_while_down().await {
                    return;
                }
                continue;
            }
            let Some(batch) = self.next_batch().await else {
                return;
            };
            if batch.is_empty() {
                // Idle: look at the connection, and at the outbox another replica may share.
                self.connected().await;
                self.backlog = self.depth().await > 0;
            } else {
                self.send_live(batch).await;
            }
        }
    }

    /// The next events in order (up to a batch); empty after an idle period; None once every
    /// handle is gone and the queue is empty.
    async fn next_batch(&mut self) -> Option<Vec<String>> {
        let first = tokio::select! {
            line = self.rx.recv() => line?,
            _ = tokio::time::sleep(IDLE_CHECK) => return Some(Vec::new()),
        };
        Some(self.gather(first))
    }

    fn gather(&mut self, first: String) -> Vec<String> {
        let mut batch = vec![first];
        while batch.len() < self.config.batch {
            match self.rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        batch
    }

    async fn send_live(&mut self, batch: Vec<String>) {
        let sent = if self.connected().await {
            self.publish(&batch).await
        } else {
            0
        };
        if sent < batch.len() {
            self.stash(&batch[sent..]).await;
        }
    }

    /// Publishes on the link; on failure drops it (reconnect with backoff). Returns how many
    /// were confirmed.
    async fn publish(&mut self, lines: &[String]) -> usize {
        let Some(link) = &self.link else { return 0 };
        let (n, error) = link.publish(lines).await;
        Stats::add(&self.stats.published, n as u64);
        if let Some(e) = error {
            self.fail(e);
        }
        n
    }

    async fn stash(&mut self, lines: &[String]) {
        match self.outbox.push(lines).await {
            Ok(fit) => {
                if fit < lines.len() {
                    tracing::warn!(
                        dropped = lines.len() - fit,
                        "event outbox full: events dropped"
                    );
                }
                Stats::add(&self.stats.overflow, (lines.len() - fit) as u64);
            }
            Err(e) => {
                tracing::error!(error = %e, dropped = lines.len(), "event outbox failed: events dropped");
                self.stats.set_error(e.to_string());
                Stats::add(&self.stats.overflow, lines.len() as u64);
            }
        }
        self.backlog = true;
        self.depth().await;
    }

    /// Publishes the oldest outbox lines and removes those confirmed.
    async fn drain(&mut self) {
        let lines = match self.outbox.peek(self.config.batch).await {
            Ok(l) => l,
            Err(e) => {
                // Unreadable (Redis down): publish live meanwhile rather than hold every
                // event back for lines that may not exist; looked at again when idle.
                self.stats.set_error(e.to_string());
                self.backlog = false;
                return;
            }
        };
        if lines.is_empty() {
            self.backlog = false;
            self.stats.outbox_depth.store(0, Ordering::Relaxed);
            return;
        }
        let n = self.publish(&lines).await;
        if let Err(e) = self.outbox.remove_head(&lines[..n]).await {
            // Still there: published again later, dropped again by id downstream.
            self.stats.set_error(e.to_string());
        }
        self.depth().await;
    }

    /// RabbitMQ is down: move new events to the outbox until the next connection attempt.
    /// False once every handle is gone (nothing more can arrive; the outbox keeps the rest).
    async fn park_while_down(&mut self) -> bool {
        let until = self.next_try;
        tokio::select! {
            line = self.rx.recv() => match line {
                Some(first) => {
                    let batch = self.gather(first);
                    self.stash(&batch).await;
                    true
                }
                None => false,
            },
            _ = tokio::time::sleep_until(until) => true,
        }
    }

    async fn depth(&self) -> u64 {
        let n = self.outbox.depth().await.unwrap_or(0);
        self.stats.outbox_depth.store(n, Ordering::Relaxed);
        n
    }

    /// True with a live link; otherwise tries to open one, unless backing off.
    async fn connected(&mut self) -> bool {
        if let Some(link) = &self.link {
            if link.alive() {
                return true;
            }
            self.fail("connection to RabbitMQ lost".into());
        }
        if Instant::now() < self.next_try {
            return false;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, Link::open(&self.config)).await {
            Ok(Ok(link)) => {
                tracing::info!(exchange = %self.config.exchange, "event publisher connected to RabbitMQ");
                self.link = Some(link);
                self.backoff = BACKOFF_MIN;
                self.stats
                    .publisher_connected
                    .store(true, Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                self.fail(e);
                false
            }
            Err(_) => {
                self.fail(format!("connect: no answer within {CONNECT_TIMEOUT:?}"));
                false
            }
        }
    }

    fn fail(&mut self, error: String) {
        if self
            .stats
            .publisher_connected
            .swap(false, Ordering::Relaxed)
        {
            tracing::warn!(%error, "event publisher lost RabbitMQ; events go to the outbox");
        }
        self.stats.set_error(error);
        self.link = None;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
    }
}
