//! Service counters, rendered in Prometheus text format, and rate-limited logging of degraded
//! decisions (one line per reason per interval, however many requests degrade).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub descriptors_over_limit: AtomicU64,
    pub descriptors_shadow_over_limit: AtomicU64,
    pub unknown_domain: AtomicU64,
    pub storage_errors: AtomicU64,
    pub invalid_requests: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows = [
            (
                "nexus_ratelimit_requests_total",
                "ShouldRateLimit calls",
                &self.requests,
            ),
            (
                "nexus_ratelimit_over_limit_total",
                "descriptors answered OVER_LIMIT",
                &self.descriptors_over_limit,
            ),
            (
                "nexus_ratelimit_shadow_over_limit_total",
                "descriptors over limit in shadow mode (answered OK)",
                &self.descriptors_shadow_over_limit,
            ),
            (
                "nexus_ratelimit_unknown_domain_total",
                "calls naming a domain with no configuration",
                &self.unknown_domain,
            ),
            (
                "nexus_ratelimit_storage_errors_total",
                "calls answered UNAVAILABLE because storage failed",
                &self.storage_errors,
            ),
            (
                "nexus_ratelimit_invalid_requests_total",
                "calls answered INVALID_ARGUMENT",
                &self.invalid_requests,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// Logs a line at most once per `interval` for each reason.
#[derive(Debug)]
pub struct LogOncePer {
    interval: Duration,
    last: Mutex<Vec<(&'static str, Instant)>>,
}

impl LogOncePer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(Vec::new()),
        }
    }

    /// True when a line for `reason` should be written now.
    pub fn should_log(&self, reason: &'static str) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        let now = Instant::now();
        match last.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, at)) if now.duration_since(*at) < self.interval => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                last.push((reason, now));
                true
            }
        }
    }
}
