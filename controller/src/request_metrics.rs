//! The Datapunk design's request metrics, counted from Envoy's access log ([`crate::access_log`]):
//! Envoy measures the duration and decides the status; nothing is re-measured in wasm.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `request_duration_seconds` | histogram | `category`, `upstream`, `rule`, `method_class`, `status_class` |
//! | `error_rate_total` | counter | `category`, `reason` ([`Reason`]) |
//! | `cache_hits_total` | counter | `category`, `layer` (`local`, `shared`) |
//! | `cache_misses_total` | counter | `category` |
//! | `access_log_unparsed_total` | counter | |
//!
//! `cache_hit_ratio` is a recording rule over the two cache counters (the chart's rules): a
//! ratio of rates is what aggregates across replicas and windows, a gauge would not.
//!
//! Error and cache series of every configured category start at 0 ([`RequestMetrics::declare`]),
//! so `rate()` sees their first increase.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::access_log::Entry;

/// Upper bounds in seconds: 5 ms up to the longest category timeout (lake, 30 s) and beyond.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// The label value of a request the router did not tag (no rule matched, a local answer).
pub const NONE: &str = "none";

/// Why a request counts in `error_rate_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// 401 or 403 answered by a Nexus filter (nexus-auth).
    AuthDenied,
    /// 429 (nexus-ratelimit, or Envoy's own limits).
    RateLimited,
    /// 400, 405, 413, 415 or 422 answered by a Nexus filter (nexus-guard).
    GuardRefused,
    /// Envoy's route or stream timeout fired (response flag `UT`, `DT` or `SI`, or a 504).
    Timeout,
    /// The upstream itself answered 5xx.
    Upstream5xx,
    /// No healthy upstream or no connection to it (`UF`, `UH`, `UO`, `URX`, `NR`).
    UpstreamUnavailable,
    /// The router matched no rule (404 `nexus_no_route`).
    NoRoute,
    /// Any other 4xx/5xx.
    Other,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::AuthDenied,
        Reason::RateLimited,
        Reason::GuardRefused,
        Reason::Timeout,
        Reason::Upstream5xx,
        Reason::UpstreamUnavailable,
        Reason::NoRoute,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AuthDenied => "auth_denied",
            Reason::RateLimited => "rate_limited",
            Reason::GuardRefused => "guard_refused",
            Reason::Timeout => "timeout",
            Reason::Upstream5xx => "upstream_5xx",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::NoRoute => "no_route",
            Reason::Other => "other",
        }
    }

    /// None for a success (status below 400).
    pub fn of(e: &Entry) -> Option<Reason> {
        if e.status < 400 {
            return None;
        }
        let flags: Vec<&str> = e.response_flags.split(',').collect();
        let flagged = |any: &[&str]| flags.iter().any(|f| any.contains(f));
        let by_nexus = e.details.starts_with("nexus_");
        Some(match e.status {
            _ if flagged(&["UT", "DT", "SI"]) => Reason::Timeout,
            _ if flagged(&["UF", "UH", "UO", "URX", "NR"]) => Reason::UpstreamUnavailable,
            401 | 403 if by_nexus => Reason::AuthDenied,
            429 => Reason::RateLimited,
            400 | 405 | 413 | 415 | 422 if by_nexus => Reason::GuardRefused,
            404 if e.details == "nexus_no_route" => Reason::NoRoute,
            504 => Reason::Timeout,
            500..=599 if e.details == "via_upstream" => Reason::Upstream5xx,
            _ => Reason::Other,
        })
    }
}

/// `read` (GET, HEAD, OPTIONS), `write` (POST, PUT, PATCH, DELETE) or `other`: a bounded label.
pub fn method_class(method: &str) -> &'static str {
    match method {
        "GET" | "HEAD" | "OPTIONS" => "read",
        "POST" | "PUT" | "PATCH" | "DELETE" => "write",
        _ => "other",
    }
}

/// `2xx` .. `5xx` (`0xx` when Envoy logged no response, e.g. a reset before one).
pub fn status_class(status: u16) -> String {
    format!("{}xx", (status / 100).min(9))
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DurationLabels {
    category: String,
    upstream: String,
    rule: String,
    method_class: &'static str,
    status_class: String,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket, not cumulative; rendered cumulative.
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Counts {
    durations: BTreeMap<DurationLabels, Histogram>,
    errors: BTreeMap<(String, Reason), u64>,
    cache_hits: BTreeMap<(String, &'static str), u64>,
    cache_misses: BTreeMap<String, u64>,
    unparsed: u64,
}

/// The counts behind `/metrics`' request series; one per process, fed by the access log.
#[derive(Default)]
pub struct RequestMetrics {
    counts: Mutex<Counts>,
}

impl RequestMetrics {
    /// Makes the error and cache series of `categories` exist at 0 (kept when a category goes:
    /// a counter that vanished would read as a reset).
    pub fn declare<'a>(&self, categories: impl IntoIterator<Item = &'a str>) {
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        for cat in categories {
            for r in Reason::ALL {
                c.errors.entry((cat.to_string(), r)).or_insert(0);
            }
            for layer in ["local", "shared"] {
                c.cache_hits.entry((cat.to_string(), layer)).or_insert(0);
            }
            c.cache_misses.entry(cat.to_string()).or_insert(0);
        }
    }

    /// Counts one access-log line; a line that does not parse is counted as such.
    pub fn observe_line(&self, line: &str) {
        match Entry::parse(line) {
            Some(e) => self.observe(&e),
            None => {
                if let Ok(mut c) = self.counts.lock() {
                    c.unparsed += 1;
                }
            }
        }
    }

    pub fn observe(&self, e: &Entry) {
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        let category = e.category.clone().unwrap_or_else(|| NONE.to_string());
        let labels = DurationLabels {
            category: category.clone(),
            upstream: e.upstream.clone().unwrap_or_else(|| NONE.to_string()),
            rule: e.rule.clone().unwrap_or_else(|| NONE.to_string()),
            method_class: method_class(&e.method),
            status_class: status_class(e.status),
        };
        let seconds = e.duration_ms as f64 / 1000.0;
        let h = c.durations.entry(labels).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += seconds;
        if let Some(reason) = Reason::of(e) {
            *c.errors.entry((category.clone(), reason)).or_insert(0) += 1;
        }
        match e.cache.as_deref() {
            Some("hit-local") => *c.cache_hits.entry((category, "local")).or_insert(0) += 1,
            Some("hit-shared") => *c.cache_hits.entry((category, "shared")).or_insert(0) += 1,
            Some("miss") => *c.cache_misses.entry(category).or_insert(0) += 1,
            _ => {}
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let Ok(c) = self.counts.lock() else {
            return String::new();
        };
        let mut s = String::new();
        render_durations(&mut s, &c.durations);
        header(
            &mut s,
            "error_rate_total",
            "counter",
            "Requests answered with an error, by category and reason.",
        );
        for ((cat, reason), v) in &c.errors {
            let _ = writeln!(
                s,
                "error_rate_total{{category=\"{}\",reason=\"{}\"}} {v}",
                esc(cat),
                reason.as_str()
            );
        }
        header(
            &mut s,
            "cache_hits_total",
            "counter",
            "Responses served from the Nexus cache, by category and layer.",
        );
        for ((cat, layer), v) in &c.cache_hits {
            let _ = writeln!(
                s,
                "cache_hits_total{{category=\"{}\",layer=\"{layer}\"}} {v}",
                esc(cat)
            );
        }
        header(
            &mut s,
            "cache_misses_total",
            "counter",
            "Cacheable requests the Nexus cache did not hold, by category.",
        );
        for (cat, v) in &c.cache_misses {
            let _ = writeln!(s, "cache_misses_total{{category=\"{}\"}} {v}", esc(cat));
        }
        header(
            &mut s,
            "access_log_unparsed_total",
            "counter",
            "Access-log lines that were not Nexus's JSON format.",
        );
        let _ = writeln!(s, "access_log_unparsed_total {}", c.unparsed);
        s
    }
}

fn render_durations(s: &mut String, durations: &BTreeMap<DurationLabels, Histogram>) {
    let name = "request_duration_seconds";
    header(
        s,
        name,
        "histogram",
        "Request duration as Envoy measured it (first byte in to last byte out).",
    );
    for (l, h) in durations {
        let labels = format!(
            "category=\"{}\",upstream=\"{}\",rule=\"{}\",method_class=\"{}\",status_class=\"{}\"",
            esc(&l.category),
            esc(&l.upstream),
            esc(&l.rule),
            l.method_class,
            l.status_class
        );
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(h.counts) {
            cumulative += n;
            let _ = writeln!(s, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(s, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(s, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(s, "{name}_count{{{labels}}} {}", h.count);
    }
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value in the exposition format: backslash, quote and newline escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The categories of `routes` (their rules' and default categories), for
/// [`RequestMetrics::declare`].
pub fn categories(routes: &[crate::model::CompiledRoute]) -> BTreeSet<String> {
    let rules = routes
        .iter()
        .flat_map(|r| &r.rules)
        .map(|rule| rule.router.category.clone());
    let defaults = routes
        .iter()
        .filter_map(|r| r.default_upstream.as_ref().map(|(c, _, _)| c.clone()));
    rules.chain(defaults).collect()
}

/// Counts `access_log` (Envoy's, as [`crate::access_log::json_format`] writes it) into the
/// request metrics `/metrics` serves, from now on; `routes`' categories start at 0.
pub fn start(
    state: &crate::server::State,
    access_log: std::path::PathBuf,
    routes: &[crate::model::CompiledRoute],
) -> std::sync::Arc<RequestMetrics> {
    let metrics = state.requests.get_or_init(Default::default).clone();
    metrics.declare(categories(routes).iter().map(String::as_str));
    crate::access_log::spawn_follow(
        access_log,
        metrics.clone(),
        std::time::Duration::from_millis(100),
    );
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u16, details: &str, flags: &str) -> Entry {
        Entry {
            method: "GET".into(),
            status,
            details: details.into(),
            response_flags: flags.into(),
            duration_ms: 12,
            category: Some("data_operations".into()),
            upstream: Some("lake".into()),
            rule: Some("lake".into()),
            cache: None,
        }
    }

    #[test]
    fn reasons_follow_status_details_and_envoy_response_flags() {
        let cases = [
            (entry(200, "via_upstream", ""), None),
            (
                entry(401, "nexus_missing_credentials", ""),
                Some(Reason::AuthDenied),
            ),
            (
                entry(403, "nexus_insufficient_scope", ""),
                Some(Reason::AuthDenied),
            ),
            (entry(403, "via_upstream", ""), Some(Reason::Other)),
            (
                entry(429, "nexus_rate_limited", ""),
                Some(Reason::RateLimited),
            ),
            (
                entry(413, "nexus_body_too_large", ""),
                Some(Reason::GuardRefused),
            ),
            (
                entry(504, "upstream_response_timeout", "UT"),
                Some(Reason::Timeout),
            ),
            (entry(502, "via_upstream", ""), Some(Reason::Upstream5xx)),
            (
                entry(503, "upstream_reset_before_response_started", "UF"),
                Some(Reason::UpstreamUnavailable),
            ),
            (entry(404, "nexus_no_route", ""), Some(Reason::NoRoute)),
            (
                entry(503, "nexus_jwks_unavailable", ""),
                Some(Reason::Other),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(Reason::of(&e), want, "{e:?}");
        }
    }

    #[test]
    fn durations_are_cumulative_seconds_buckets_with_bounded_labels() {
        let m = RequestMetrics::default();
        m.observe(&entry(200, "via_upstream", ""));
        let mut slow = entry(201, "via_upstream", "");
        slow.method = "POST".into();
        slow.duration_ms = 7_000;
        m.observe(&slow);
        let text = m.render();
        let read = r#"category="data_operations",upstream="lake",rule="lake",method_class="read",status_class="2xx""#;
        assert!(
            text.contains(&format!(
                "request_duration_seconds_bucket{{{read},le=\"0.01\"}} 0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "request_duration_seconds_bucket{{{read},le=\"0.025\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("request_duration_seconds_sum{{{read}}} 0.012\n")),
            "{text}"
        );
        let write = read.replace("read", "write");
        assert!(
            text.contains(&format!(
                "request_duration_seconds_bucket{{{write},le=\"5\"}} 0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "request_duration_seconds_bucket{{{write},le=\"10\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "request_duration_seconds_bucket{{{write},le=\"+Inf\"}} 1\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn declared_categories_start_at_zero_and_cache_results_count_by_layer() {
        let m = RequestMetrics::default();
        m.declare(["ai_inference"]);
        let mut hit = entry(200, "via_upstream", "");
        hit.cache = Some("hit-shared".into());
        m.observe(&hit);
        let mut miss = hit.clone();
        miss.cache = Some("miss".into());
        m.observe(&miss);
        m.observe_line("not json");
        let text = m.render();
        for line in [
            "error_rate_total{category=\"ai_inference\",reason=\"auth_denied\"} 0",
            "cache_misses_total{category=\"ai_inference\"} 0",
            "cache_hits_total{category=\"data_operations\",layer=\"shared\"} 1",
            "cache_misses_total{category=\"data_operations\"} 1",
            "access_log_unparsed_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn label_values_are_escaped_and_unknown_statuses_get_a_class() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(status_class(0), "0xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(method_class("PATCH"), "write");
        assert_eq!(method_class("BREW"), "other");
    }
}
