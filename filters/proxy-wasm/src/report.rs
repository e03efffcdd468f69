//! Proxy reports ([`nexus_config::report`]) from the root context of every Nexus filter: the
//! schedule and body are [`nexus_filter_core::report`]'s; this reads what Envoy knows (the
//! plugin's name, the node) and makes the callouts.
//!
//! Callouts start only in the root context (a tick, or an answer), like the audit sender's.

use nexus_config::report::{ProxyReport, ReportSink, REPORTS_PATH};
use nexus_filter_core::report::{body, hex, ReportSchedule};
use nexus_filter_core::{Level, Log, Metrics};
use sha2::{Digest, Sha256};

use crate::{hostcalls, HostLog, HostSharedData};

pub struct Reporter {
    sink: ReportSink,
    body: Vec<u8>,
    config_sha: String,
    schedule: ReportSchedule,
}

impl Reporter {
    /// The report of a filter configured with `config` (hashed as received).
    pub fn new(sink: ReportSink, config: &[u8]) -> Self {
        let config_sha = hex(&Sha256::digest(config));
        let report = ProxyReport {
            filter: text(&["plugin_name"]).unwrap_or_default(),
            config_sha256: config_sha.clone(),
            module_sha256: sink.module_sha256.clone(),
            node_id: node(&["id"]).unwrap_or_default(),
            pod: node(&["metadata", "NAME"]),
            namespace: node(&["metadata", "NAMESPACE"]),
        };
        Self {
            schedule: ReportSchedule::new(&sink),
            body: body(&report),
            config_sha,
            sink,
        }
    }

    /// Sends the report if one is due.
    pub fn tick(&mut self, now_ms: u64, metrics: &impl Metrics) {
        if !self.schedule.due(now_ms)
            || !self
                .schedule
                .claim(now_ms, &HostSharedData, &self.config_sha)
        {
            return;
        }
        let headers = [
            (":method", "POST"),
            (":path", REPORTS_PATH),
            (":authority", self.sink.authority.as_str()),
            ("content-type", "application/json"),
        ];
        match hostcalls::http_call(
            &self.sink.cluster,
            &headers,
            &self.body,
            self.sink.timeout_ms,
        ) {
            Ok(token) => self.schedule.sent(token),
            Err(s) => {
                HostLog.log(
                    Level::Warn,
                    &format!("report: no callout to cluster {}: {s}", self.sink.cluster),
                );
                self.schedule.not_sent(now_ms, &HostSharedData, metrics);
            }
        }
    }

    /// The answer to a callout; false if it was not a report's. The clock is read only for a
    /// report's answer: most answers are requests' callouts.
    pub fn answered(&mut self, token: u32, status: Option<u32>, metrics: &impl Metrics) -> bool {
        if !self.schedule.awaits(token) {
            return false;
        }
        let now_ms = hostcalls::now_unix_nanos() / 1_000_000;
        self.schedule
            .answered(token, status, now_ms, (&HostSharedData, metrics))
    }
}

/// A field of Envoy's node: `xds.node` (the attribute Envoy documents), else the older
/// wasm-only `node`.
fn node(field: &[&str]) -> Option<String> {
    let path = |root: &[&'static str]| -> Vec<&str> { root.iter().chain(field).copied().collect() };
    text(&path(&["xds", "node"])).or_else(|| text(&path(&["node"])))
}

fn text(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::property(path).ok().flatten()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}
