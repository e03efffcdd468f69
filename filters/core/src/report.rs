//! The filter side of proxy reports ([`nexus_config::report`]): when a filter tells the
//! controller what it runs, and what it says.
//!
//! One report in flight at a time. The first goes out at the first tick after configuration;
//! after an answer the next waits `interval_ms`, after a failure `RETRY_MS` (bounded by the
//! interval), so a controller that was down hears from every proxy within seconds of coming
//! back. Sent and failed reports are counted (`nexus_report.sent`, `nexus_report.failed`).
//!
//! Envoy runs one VM per worker thread, all with the filter's VM id, and they share that VM
//! id's shared data: the worker that claims [`SLOT`] for a turn sends the report, the others
//! skip it ([`ReportSchedule::claim`]). So a proxy sends one report per filter per interval,
//! whatever its number of workers.

use nexus_config::report::{ProxyReport, ReportSink};

use crate::{Metrics, SharedData};

/// The shared-data key of the report turn: `"<until ms> <config sha256>"`.
pub const SLOT: &str = "nexus_report.turn";

/// Wait after a report that failed (no answer, refused, non-2xx).
pub const RETRY_MS: u64 = 2000;

/// When the next report is due, and the one in flight.
#[derive(Debug)]
pub struct ReportSchedule {
    interval_ms: u64,
    next_at_ms: u64,
    in_flight: Option<u32>,
}

impl ReportSchedule {
    /// Due at once.
    pub fn new(sink: &ReportSink) -> Self {
        Self {
            interval_ms: u64::from(sink.interval_ms.max(1)),
            next_at_ms: 0,
            in_flight: None,
        }
    }

    /// Whether a report should go out now.
    pub fn due(&self, now_ms: u64) -> bool {
        self.in_flight.is_none() && now_ms >= self.next_at_ms
    }

    /// Whether this worker sends the due report for configuration `config_sha`: true when it
    /// took the turn; false when another worker of the proxy holds it (this one then waits
    /// until that turn ends).
    pub fn claim(&mut self, now_ms: u64, shared: &impl SharedData, config_sha: &str) -> bool {
        let current = shared.get(SLOT);
        let held_until = current.as_ref().and_then(|(v, _)| {
            let text = std::str::from_utf8(v).ok()?;
            let (until, sha) = text.split_once(' ')?;
            (sha == config_sha)
                .then(|| until.parse::<u64>().ok())
                .flatten()
        });
        if let Some(until) = held_until.filter(|u| *u > now_ms) {
            self.next_at_ms = until;
            return false;
        }
        let turn = format!("{} {config_sha}", now_ms + self.interval_ms);
        let cas = current.map(|(_, cas)| cas);
        if shared.set(SLOT, turn.as_bytes(), cas).is_err() {
            // Another worker claimed it between the read and the write: look again next tick.
            self.next_at_ms = now_ms + 1;
            return false;
        }
        true
    }

    /// Whether callout `token` is the report in flight.
    pub fn awaits(&self, token: u32) -> bool {
        self.in_flight == Some(token)
    }

    /// A report went out with callout `token`.
    pub fn sent(&mut self, token: u32) {
        self.in_flight = Some(token);
    }

    /// The report could not be sent at all (no such cluster, ...): the turn is given back,
    /// and this worker tries again soon.
    pub fn not_sent(&mut self, now_ms: u64, shared: &impl SharedData, metrics: &impl Metrics) {
        metrics.increment("nexus_report.failed", 1);
        let _ = shared.set(SLOT, b"0 -", None);
        self.next_at_ms = now_ms + RETRY_MS.min(self.interval_ms);
    }

    /// The answer to a callout (`status` absent: no answer); false if it was not a report's.
    pub fn answered(
        &mut self,
        token: u32,
        status: Option<u32>,
        now_ms: u64,
        (shared, metrics): (&impl SharedData, &impl Metrics),
    ) -> bool {
        if !self.awaits(token) {
            return false;
        }
        self.in_flight = None;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            metrics.increment("nexus_report.sent", 1);
            self.next_at_ms = now_ms + self.interval_ms;
        } else {
            self.not_sent(now_ms, shared, metrics);
        }
        true
    }
}

/// The report body: a [`ProxyReport`] as JSON.
pub fn body(report: &ProxyReport) -> Vec<u8> {
    // Serializing plain strings cannot fail; an empty body would be refused by the controller.
    serde_json::to_vec(report).unwrap_or_default()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MemMetrics, MemSharedData};

    fn schedule(interval_ms: u32) -> ReportSchedule {
        let mut sink = ReportSink::to_cluster("c");
        sink.interval_ms = interval_ms;
        ReportSchedule::new(&sink)
    }

    #[test]
    fn first_report_at_once_then_every_interval() {
        let (m, d) = (MemMetrics::default(), MemSharedData::default());
        let mut s = schedule(10_000);
        assert!(s.due(5));
        s.sent(7);
        assert!(!s.due(6), "one in flight at a time");
        assert!(
            !s.answered(8, Some(200), 6, (&d, &m)),
            "another callout's answer"
        );
        assert!(s.answered(7, Some(204), 100, (&d, &m)));
        assert!(!s.due(10_099));
        assert!(s.due(10_100));
        assert_eq!(m.value("nexus_report.sent"), 1);
    }

    #[test]
    fn a_failed_report_is_retried_soon_and_counted() {
        let (m, d) = (MemMetrics::default(), MemSharedData::default());
        let mut s = schedule(10_000);
        s.sent(1);
        assert!(s.answered(1, Some(503), 0, (&d, &m)));
        assert!(!s.due(RETRY_MS - 1));
        assert!(s.due(RETRY_MS));
        s.sent(2);
        assert!(s.answered(2, None, 0, (&d, &m)), "no answer at all");
        s.not_sent(0, &d, &m);
        assert_eq!(m.value("nexus_report.failed"), 3);
        let mut short = schedule(500);
        short.not_sent(0, &d, &m);
        assert!(
            short.due(500),
            "the retry never waits longer than the interval"
        );
    }

    #[test]
    fn one_worker_per_turn_reports_and_a_failure_gives_the_turn_back() {
        let (m, shared) = (MemMetrics::default(), MemSharedData::default());
        let (mut a, mut b) = (schedule(10_000), schedule(10_000));
        assert!(
            a.claim(0, &shared, "sha1"),
            "the first worker takes the turn"
        );
        assert!(!b.claim(1, &shared, "sha1"), "the second skips it");
        assert!(
            !b.due(9_999) && b.due(10_000),
            "and waits until the turn ends"
        );
        assert!(
            b.claim(10_000, &shared, "sha1"),
            "the next turn is anyone's"
        );
        assert!(
            a.claim(10_001, &shared, "sha2"),
            "a new configuration reports at once"
        );
        a.sent(1);
        assert!(a.answered(1, Some(503), 10_002, (&shared, &m)));
        assert!(
            b.claim(10_003, &shared, "sha2"),
            "a failed turn is free again"
        );
    }

    #[test]
    fn body_is_the_report_as_json() {
        let r = ProxyReport {
            filter: "nexus.auth".into(),
            config_sha256: hex(&[0xab, 0x01]),
            module_sha256: None,
            node_id: "gw-1".into(),
            pod: Some("gw-1".into()),
            namespace: None,
        };
        let back: ProxyReport = serde_json::from_slice(&body(&r)).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.config_sha256, "ab01");
    }
}
