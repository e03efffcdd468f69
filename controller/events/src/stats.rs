//! Counters and connection state of the bus, shared by the publisher, the consumer, `/metrics`
//! and the `rabbitmq` health check.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Stats {
    /// Events handed to `Events::publish`.
    pub enqueued: AtomicU64,
    /// Events RabbitMQ confirmed.
    pub published: AtomicU64,
    /// Events dropped: the in-process queue or the outbox was full, or the outbox failed.
    pub overflow: AtomicU64,
    /// Lines in the outbox when last seen.
    pub outbox_depth: AtomicU64,
    pub commands_handled: AtomicU64,
    pub commands_rejected: AtomicU64,
    /// Commands requeued because their handler could not act yet.
    pub commands_retried: AtomicU64,
    pub publisher_connected: AtomicBool,
    pub consumer_connected: AtomicBool,
    /// Whether a consumer runs at all (health only waits for it then).
    pub consumer_enabled: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_error(&self, e: impl Into<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.into());
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// The `rabbitmq` health check: up while the publisher (and the consumer, if any) are
    /// connected; the detail carries the counters an operator looks at first.
    pub fn health(&self) -> Result<String, String> {
        let detail = format!(
            "published {}, outbox {}, overflow {}, commands handled {}, rejected {}",
            Self::get(&self.published),
            Self::get(&self.outbox_depth),
            Self::get(&self.overflow),
            Self::get(&self.commands_handled),
            Self::get(&self.commands_rejected),
        );
        let publisher = self.publisher_connected.load(Ordering::Relaxed);
        let consumer = self.consumer_connected.load(Ordering::Relaxed)
            || !self.consumer_enabled.load(Ordering::Relaxed);
        if publisher && consumer {
            Ok(detail)
        } else {
            let error = self
                .last_error()
                .unwrap_or_else(|| "not connected yet".into());
            Err(format!("{error} ({detail})"))
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        line(
            "nexus_events_enqueued_total",
            "counter",
            "Events handed to the publisher.",
            Self::get(&self.enqueued),
        );
        line(
            "nexus_events_published_total",
            "counter",
            "Events confirmed by RabbitMQ.",
            Self::get(&self.published),
        );
        line(
            "nexus_events_overflow_total",
            "counter",
            "Events dropped because a buffer was full or the outbox failed.",
            Self::get(&self.overflow),
        );
        line(
            "nexus_events_outbox_depth",
            "gauge",
            "Events waiting in the outbox.",
            Self::get(&self.outbox_depth),
        );
        line(
            "nexus_commands_handled_total",
            "counter",
            "Commands carried out and acknowledged.",
            Self::get(&self.commands_handled),
        );
        line(
            "nexus_commands_rejected_total",
            "counter",
            "Commands dead-lettered as invalid.",
            Self::get(&self.commands_rejected),
        );
        line(
            "nexus_commands_retried_total",
            "counter",
            "Commands requeued because their handler could not act yet.",
            Self::get(&self.commands_retried),
        );
        let up = u64::from(self.publisher_connected.load(Ordering::Relaxed));
        line(
            "nexus_events_connected",
            "gauge",
            "1 while the publisher is connected to RabbitMQ.",
            up,
        );
        s
    }
}
