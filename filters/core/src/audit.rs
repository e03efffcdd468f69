//! The filter side of the audit log: a bounded queue of records (one JSON object each) sent
//! to the audit service in batches, one batch in flight at a time, in order.
//!
//! Nothing here is silent: a record that does not fit is dropped and counted, a batch the
//! service did not take is counted and then kept or dropped as configured
//! ([`OnUnavailable`]). The adapter sends what [`AuditQueue::next_batch`] hands it and reports
//! the answer to [`AuditQueue::sent`].

use std::collections::VecDeque;

use nexus_config::audit::{AuditSink, OnUnavailable};
use nexus_config::contract;

use crate::{HeaderList, LocalResponse, Metrics};

/// The request a record is about, from the headers Envoy and the earlier filters set. A
/// record never holds the path (it can hold PII: `/users/alice@example.com`; the rule says
/// where), a body or a credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub method: String,
    /// The router's rule (`x-nexus-rule`).
    pub rule: String,
    /// `x-request-id` (the router keeps a valid one, Envoy makes one otherwise).
    pub request_id: String,
    /// The W3C trace id of `traceparent`, as in every Nexus log line.
    pub trace_id: String,
    /// The client auth identified (empty: anonymous or not yet known).
    pub client: String,
    pub auth_method: String,
}

impl RequestMeta {
    pub fn from_headers(h: &HeaderList) -> Self {
        let get = |name: &str| h.get(name).unwrap_or_default().to_string();
        let trace_id = h
            .get("traceparent")
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or_default()
            .to_string();
        Self {
            method: get(":method"),
            rule: get(contract::RULE),
            request_id: get("x-request-id"),
            trace_id,
            client: get(contract::CLIENT_ID),
            auth_method: get(contract::AUTH_METHOD),
        }
    }

    /// These fields into a record (empty ones as `null`).
    pub fn fill(&self, record: &mut serde_json::Map<String, serde_json::Value>) {
        for (key, value) in [
            ("method", &self.method),
            ("request_id", &self.request_id),
            ("trace_id", &self.trace_id),
            ("client", &self.client),
            ("auth_method", &self.auth_method),
        ] {
            let v = if value.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::Value::String(value.clone())
            };
            record.insert(key.to_string(), v);
        }
    }
}

/// Counter names (the adapter's metrics prefix them with nothing: they are global per VM).
pub const SENT: &str = "nexus_audit.sent";
pub const SEND_FAILURES: &str = "nexus_audit.send_failures";
pub const DROPPED: &str = "nexus_audit.dropped";
/// Requests answered 503 because their decisions could not be recorded (`refuse`).
pub const REFUSED: &str = "nexus_audit.refused";

/// Why records cannot be delivered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The service did not take the last batch (error, timeout, non-2xx).
    ServiceDown,
    /// `capacity` records wait already.
    QueueFull,
}

impl Unavailable {
    /// The 503 a request gets under `refuse`, naming the reason (and counted).
    pub fn refusal(self, metrics: &impl Metrics) -> LocalResponse {
        metrics.increment(REFUSED, 1);
        let detail = match self {
            Unavailable::ServiceDown => {
                "the audit service did not take the last batch of records, and this request's decisions must be recorded"
            }
            Unavailable::QueueFull => {
                "the audit queue is full, and this request's decisions must be recorded"
            }
        };
        LocalResponse::json_error(503, "audit_unavailable", detail).with_header("retry-after", "1")
    }
}

#[derive(Debug)]
pub struct AuditQueue {
    waiting: VecDeque<String>,
    in_flight: Vec<String>,
    capacity: usize,
    max_batch: usize,
    on_unavailable: OnUnavailable,
    /// The last batch was not taken, and none since.
    failing: bool,
}

impl AuditQueue {
    pub fn new(sink: &AuditSink) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: Vec::new(),
            capacity: sink.capacity as usize,
            max_batch: (sink.max_batch as usize).max(1),
            on_unavailable: sink.on_unavailable,
            failing: false,
        }
    }

    /// Under `refuse`, why a request whose decisions must be recorded is to be refused now;
    /// None when it may go on (always under `buffer` and `drop`). A service that goes down is
    /// noticed at the first batch it does not take (within `flush_ms` + `timeout_ms` of the
    /// first record after), and back up at the first it takes.
    pub fn refusing(&self) -> Option<Unavailable> {
        if self.on_unavailable != OnUnavailable::Refuse {
            return None;
        }
        if self.failing {
            Some(Unavailable::ServiceDown)
        } else if self.len() >= self.capacity {
            Some(Unavailable::QueueFull)
        } else {
            None
        }
    }

    /// Queues one record (a JSON object, no newline); dropped and counted when full.
    pub fn push(&mut self, record: String, metrics: &impl Metrics) {
        if self.waiting.len() + self.in_flight.len() >= self.capacity {
            metrics.increment(DROPPED, 1);
            return;
        }
        self.waiting.push_back(record);
    }

    /// Enough records wait for a batch of their own.
    pub fn full_batch_waiting(&self) -> bool {
        self.waiting.len() >= self.max_batch
    }

    /// The next batch (one record per line), unless one is in flight or nothing waits.
    pub fn next_batch(&mut self) -> Option<Vec<u8>> {
        if !self.in_flight.is_empty() || self.waiting.is_empty() {
            return None;
        }
        let n = self.waiting.len().min(self.max_batch);
        self.in_flight = self.waiting.drain(..n).collect();
        let mut body = Vec::new();
        for r in &self.in_flight {
            body.extend_from_slice(r.as_bytes());
            body.push(b'\n');
        }
        Some(body)
    }

    /// The in-flight batch's outcome: taken (`ok`), or not (kept ahead of newer records, or
    /// dropped, as configured).
    pub fn sent(&mut self, ok: bool, metrics: &impl Metrics) {
        let batch = std::mem::take(&mut self.in_flight);
        let n = batch.len() as i64;
        self.failing = !ok;
        if ok {
            metrics.increment(SENT, n);
            return;
        }
        metrics.increment(SEND_FAILURES, 1);
        match self.on_unavailable {
            OnUnavailable::Buffer | OnUnavailable::Refuse => {
                for r in batch.into_iter().rev() {
                    self.waiting.push_front(r);
                }
            }
            OnUnavailable::Drop => metrics.increment(DROPPED, n),
        }
    }

    /// Records waiting or in flight.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemMetrics;

    fn queue(capacity: u32, max_batch: u32, on_unavailable: OnUnavailable) -> AuditQueue {
        AuditQueue::new(&AuditSink {
            capacity,
            max_batch,
            on_unavailable,
            ..AuditSink::new("audit")
        })
    }

    #[test]
    fn batches_go_out_in_order_one_at_a_time() {
        let m = MemMetrics::default();
        let mut q = queue(10, 2, OnUnavailable::Buffer);
        for i in 0..3 {
            q.push(format!("{{\"n\":{i}}}"), &m);
        }
        assert!(q.full_batch_waiting());
        assert_eq!(q.next_batch().unwrap(), b"{\"n\":0}\n{\"n\":1}\n");
        assert_eq!(q.next_batch(), None, "one batch in flight at a time");
        q.sent(true, &m);
        assert_eq!(m.value(SENT), 2);
        assert_eq!(q.next_batch().unwrap(), b"{\"n\":2}\n");
    }

    #[test]
    fn a_failed_batch_is_kept_ahead_of_newer_records_or_dropped_as_configured() {
        let m = MemMetrics::default();
        let mut q = queue(10, 2, OnUnavailable::Buffer);
        q.push("a".into(), &m);
        q.push("b".into(), &m);
        q.next_batch().unwrap();
        q.push("c".into(), &m);
        q.sent(false, &m);
        assert_eq!(m.value(SEND_FAILURES), 1);
        assert_eq!(q.next_batch().unwrap(), b"a\nb\n");

        let m = MemMetrics::default();
        let mut q = queue(10, 2, OnUnavailable::Drop);
        q.push("a".into(), &m);
        q.next_batch().unwrap();
        q.sent(false, &m);
        assert_eq!((m.value(SEND_FAILURES), m.value(DROPPED)), (1, 1));
        assert!(q.is_empty());
    }

    #[test]
    fn refuse_fails_closed_from_a_batch_not_taken_until_one_is_taken() {
        let m = MemMetrics::default();
        let mut q = queue(10, 2, OnUnavailable::Refuse);
        assert_eq!(q.refusing(), None, "nothing failed yet");
        q.push("a".into(), &m);
        q.next_batch().unwrap();
        assert_eq!(q.refusing(), None, "a batch in flight is not a failure");
        q.sent(false, &m);
        assert_eq!(q.refusing(), Some(Unavailable::ServiceDown));
        q.push("b".into(), &m);
        assert_eq!(q.next_batch().unwrap(), b"a\nb\n", "kept, as with buffer");
        assert_eq!(
            q.refusing(),
            Some(Unavailable::ServiceDown),
            "while retrying"
        );
        q.sent(true, &m);
        assert_eq!(q.refusing(), None);
        assert_eq!((m.value(SENT), m.value(DROPPED)), (2, 0));

        let r = Unavailable::ServiceDown.refusal(&m);
        assert_eq!(r.status, 503);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "audit_unavailable");
        assert!(body["detail"].as_str().unwrap().contains("did not take"));
        assert_eq!(m.value(REFUSED), 1);
    }

    #[test]
    fn refuse_fails_closed_while_the_queue_is_full_and_only_under_refuse() {
        let m = MemMetrics::default();
        let mut q = queue(2, 1, OnUnavailable::Refuse);
        q.push("a".into(), &m);
        assert_eq!(q.refusing(), None);
        q.push("b".into(), &m);
        assert_eq!(q.refusing(), Some(Unavailable::QueueFull));
        q.next_batch().unwrap();
        assert_eq!(
            q.refusing(),
            Some(Unavailable::QueueFull),
            "in flight counts"
        );
        q.sent(true, &m);
        assert_eq!(q.refusing(), None);
        let body = Unavailable::QueueFull.refusal(&m).body;
        assert!(String::from_utf8(body).unwrap().contains("queue is full"));

        for mode in [OnUnavailable::Buffer, OnUnavailable::Drop] {
            let mut q = queue(1, 1, mode);
            q.push("a".into(), &m);
            q.next_batch().unwrap();
            q.sent(false, &m);
            q.push("b".into(), &m);
            assert_eq!(q.refusing(), None, "{mode:?} never refuses");
        }
    }

    #[test]
    fn records_beyond_capacity_are_dropped_and_counted() {
        let m = MemMetrics::default();
        let mut q = queue(3, 2, OnUnavailable::Buffer);
        for r in ["a", "b", "c", "d", "e"] {
            q.push(r.into(), &m);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(m.value(DROPPED), 2);
        q.next_batch().unwrap();
        q.push("f".into(), &m);
        assert_eq!(
            m.value(DROPPED),
            3,
            "in-flight records count against capacity"
        );
    }
}
