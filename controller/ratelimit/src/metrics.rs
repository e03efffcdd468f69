//! Service counters, rendered in Prometheus text format, and rate-limited logging of degraded
//! decisions (one line per reason per interval, however many requests degrade).

use std::collections::BTreeMap;
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
    /// Lease calls, and the quota they granted, took back, and reported used.
    pub lease_calls: AtomicU64,
    pub lease_granted: AtomicU64,
    pub lease_returned: AtomicU64,
    pub lease_used: AtomicU64,
    /// Hits per descriptor metric key (envoyproxy/ratelimit's stats: `detailed_metric` and
    /// `value_to_metric` shape the keys), at most [`MAX_METRIC_KEYS`] keys.
    pub per_descriptor: Mutex<BTreeMap<String, DescriptorCounts>>,
}

/// Distinct descriptor metric keys kept; hits on further keys are counted under
/// [`OTHER_METRIC_KEY`], so request values cannot grow the metrics without bound.
pub const MAX_METRIC_KEYS: usize = 10_000;
pub const OTHER_METRIC_KEY: &str = "_other";

/// Hits on one descriptor metric key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorCounts {
    pub total_hits: u64,
    pub over_limit: u64,
    pub within_limit: u64,
    /// Over limit but answered OK because of `shadow_mode` (also counted in `over_limit`).
    pub shadow_mode: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `hits` on each `(metric key, over limit, shadowed)` of one call, under one lock.
    pub fn count_descriptors(&self, hits: u32, outcomes: &[(&str, bool, bool)]) {
        if outcomes.is_empty() {
            return;
        }
        let Ok(mut map) = self.per_descriptor.lock() else {
            return;
        };
        let hits = u64::from(hits);
        for &(metric_key, over, shadowed) in outcomes {
            let key = if map.contains_key(metric_key) || map.len() < MAX_METRIC_KEYS {
                metric_key
            } else {
                OTHER_METRIC_KEY
            };
            let counts = map.entry(key.to_string()).or_default();
            counts.total_hits += hits;
            if over {
                counts.over_limit += hits;
            } else {
                counts.within_limit += hits;
            }
            if shadowed {
                counts.shadow_mode += hits;
            }
        }
    }

    /// The counts of one descriptor metric key.
    pub fn descriptor(&self, metric_key: &str) -> Option<DescriptorCounts> {
        self.per_descriptor.lock().ok()?.get(metric_key).copied()
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
            (
                "nexus_ratelimit_lease_calls_total",
                "Lease calls (renewals, returns, usage reports)",
                &self.lease_calls,
            ),
            (
                "nexus_ratelimit_lease_granted_total",
                "requests of quota leased to proxies",
                &self.lease_granted,
            ),
            (
                "nexus_ratelimit_lease_returned_total",
                "requests of unused leased quota given back",
                &self.lease_returned,
            ),
            (
                "nexus_ratelimit_lease_used_total",
                "requests proxies reported admitting from leases",
                &self.lease_used,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        if let Ok(map) = self.per_descriptor.lock() {
            if !map.is_empty() {
                let name = "nexus_ratelimit_descriptor_hits_total";
                out.push_str(&format!(
                    "# HELP {name} hits per descriptor metric key and outcome\n# TYPE {name} counter\n"
                ));
                for (key, c) in map.iter() {
                    let key = label_value(key);
                    for (outcome, n) in [
                        ("total", c.total_hits),
                        ("over_limit", c.over_limit),
                        ("within_limit", c.within_limit),
                        ("shadow_mode", c.shadow_mode),
                    ] {
                        out.push_str(&format!(
                            "{name}{{key=\"{key}\",outcome=\"{outcome}\"}} {n}\n"
                        ));
                    }
                }
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
