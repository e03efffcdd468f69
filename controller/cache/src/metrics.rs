//! Service counters, rendered in Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub gets_hit: AtomicU64,
    pub gets_miss: AtomicU64,
    pub puts_stored: AtomicU64,
    /// Puts older than the stored version (last write wins).
    pub puts_rejected: AtomicU64,
    /// Puts refused by an invalidation watermark (fetched before an invalidation).
    pub puts_invalidated: AtomicU64,
    pub invalidations: AtomicU64,
    pub entries_removed: AtomicU64,
    pub events_published: AtomicU64,
    /// `Flush` events sent on streams (pub/sub gaps, lagging streams).
    pub flushes_sent: AtomicU64,
    /// Open `Subscribe` streams (a gauge).
    pub subscribers: AtomicU64,
    pub storage_errors: AtomicU64,
    pub invalid_requests: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows = [
            (
                "nexus_cache_gets_total{result=\"hit\"}",
                "counter",
                "Get calls",
                &self.gets_hit,
            ),
            (
                "nexus_cache_gets_total{result=\"miss\"}",
                "counter",
                "",
                &self.gets_miss,
            ),
            (
                "nexus_cache_puts_total{result=\"stored\"}",
                "counter",
                "Put calls; rejected: older than the stored version; invalidated: fetched before an invalidation",
                &self.puts_stored,
            ),
            (
                "nexus_cache_puts_total{result=\"rejected\"}",
                "counter",
                "",
                &self.puts_rejected,
            ),
            (
                "nexus_cache_puts_total{result=\"invalidated\"}",
                "counter",
                "",
                &self.puts_invalidated,
            ),
            (
                "nexus_cache_invalidations_total",
                "counter",
                "Invalidate calls (gRPC and HTTP)",
                &self.invalidations,
            ),
            (
                "nexus_cache_entries_removed_total",
                "counter",
                "shared entries removed by invalidations",
                &self.entries_removed,
            ),
            (
                "nexus_cache_events_published_total",
                "counter",
                "Invalidation and Update events published",
                &self.events_published,
            ),
            (
                "nexus_cache_flushes_sent_total",
                "counter",
                "Flush events sent on Subscribe streams",
                &self.flushes_sent,
            ),
            (
                "nexus_cache_subscribers",
                "gauge",
                "open Subscribe streams on this replica",
                &self.subscribers,
            ),
            (
                "nexus_cache_storage_errors_total",
                "counter",
                "calls answered UNAVAILABLE because Redis failed",
                &self.storage_errors,
            ),
            (
                "nexus_cache_invalid_requests_total",
                "counter",
                "calls answered INVALID_ARGUMENT",
                &self.invalid_requests,
            ),
        ];
        let mut out = String::new();
        for (series, kind, help, value) in rows {
            let name = series.split('{').next().unwrap_or(series);
            // A labelled family is described once, at its first series.
            if !help.is_empty() {
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
            out.push_str(&format!("{series} {}\n", value.load(Ordering::Relaxed)));
        }
        out
    }
}

/// Counts one open stream for as long as it lives.
pub struct SubscriberGauge(pub std::sync::Arc<Metrics>);

impl SubscriberGauge {
    pub fn open(metrics: std::sync::Arc<Metrics>) -> Self {
        Metrics::inc(&metrics.subscribers);
        Self(metrics)
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}
