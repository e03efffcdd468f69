//! Sends a filter's audit records ([`nexus_filter_core::audit::AuditQueue`]) to the audit
//! service with HTTP callouts, one batch in flight at a time: at each tick (`flush_ms`), and
//! the next batch as soon as the service took one.
//!
//! Callouts start only in the root context (a tick, or the answer to a tick's callout), never
//! from a request's callbacks: Envoy cancels a stream context's callouts when its request
//! ends, and a batch whose answer never comes would stop the queue.

use std::cell::{Cell, RefCell};

use nexus_config::audit::{AuditSink, RECORDS_PATH};
use nexus_filter_core::audit::{AuditQueue, Unavailable};
use nexus_filter_core::{Level, Log, Metrics};

use crate::{hostcalls, HostLog};

pub struct AuditSender {
    sink: AuditSink,
    queue: RefCell<AuditQueue>,
    /// The token of the batch in flight.
    in_flight: Cell<Option<u32>>,
}

impl AuditSender {
    /// Also sets the root context's tick to `flush_ms` (call from `configure`).
    pub fn start(sink: AuditSink) -> Self {
        if let Err(s) = hostcalls::set_tick_period_ms(sink.flush_ms) {
            HostLog.log(Level::Error, &format!("audit: no flush tick ({s})"));
        }
        Self {
            queue: RefCell::new(AuditQueue::new(&sink)),
            sink,
            in_flight: Cell::new(None),
        }
    }

    /// Queues a record (a JSON object) for the next send.
    pub fn push(&self, record: String, metrics: &impl Metrics) {
        self.queue.borrow_mut().push(record, metrics);
    }

    /// Under `on_unavailable: refuse`, why a request whose decisions must be recorded is to
    /// be refused now (see [`AuditQueue::refusing`]).
    pub fn refusing(&self) -> Option<Unavailable> {
        self.queue.borrow().refusing()
    }

    /// Sends the next batch, if none is in flight and records wait. Root context only (a tick).
    pub fn flush(&self, metrics: &impl Metrics) {
        if self.in_flight.get().is_some() {
            return;
        }
        let Some(body) = self.queue.borrow_mut().next_batch() else {
            return;
        };
        let headers = [
            (":method", "POST"),
            (":path", RECORDS_PATH),
            (":authority", self.sink.authority.as_str()),
            ("content-type", "application/x-ndjson"),
        ];
        match hostcalls::http_call(&self.sink.cluster, &headers, &body, self.sink.timeout_ms) {
            Ok(token) => self.in_flight.set(Some(token)),
            Err(s) => {
                HostLog.log(Level::Warn, &format!("audit: sending a batch failed: {s}"));
                self.queue.borrow_mut().sent(false, metrics);
            }
        }
    }

    /// The answer to a callout; false if it was not this sender's.
    pub fn on_http_call_response(
        &self,
        token: u32,
        status: Option<u32>,
        metrics: &impl Metrics,
    ) -> bool {
        if self.in_flight.get() != Some(token) {
            return false;
        }
        self.in_flight.set(None);
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if !ok {
            HostLog.log(
                Level::Warn,
                &format!("audit: the service did not take a batch (status {status:?})"),
            );
        }
        self.queue.borrow_mut().sent(ok, metrics);
        // Still in the root context: keep up with a busy proxy without waiting for a tick.
        // After a failure the next tick retries, so a service that is down is not hammered.
        if ok && self.queue.borrow().full_batch_waiting() {
            self.flush(metrics);
        }
        true
    }
}
