//! `nexus up`'s side of proxy reports: its one Envoy (node id `nexus-standalone`) against the
//! configuration `nexus up` last applied, shown as the `enforced` health component, so a
//! change in the YAML directory is confirmed when Envoy's filters run it, not when the files
//! are written.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::verdict::{self, Expected, Pod};
use crate::server::{Component, State};

/// Envoy's node id under `nexus up`.
pub const NODE: &str = "nexus-standalone";

/// What the filters should run now; [`LocalEnforcement::follow`] compares it with reports.
#[derive(Default)]
pub struct LocalEnforcement {
    expected: Mutex<Expected>,
    changed: tokio::sync::Notify,
}

impl LocalEnforcement {
    /// The filters' configurations of the version just applied (name → sha256 hex).
    pub fn expect(&self, filters: Expected) {
        if let Ok(mut e) = self.expected.lock() {
            *e = filters;
        }
        self.changed.notify_one();
    }

    /// Sets `enforced` after every report that says something new, every applied version and
    /// every `interval`: ok when Envoy runs the applied configuration, down (not required:
    /// traffic still flows on the previous one) while it does not.
    pub async fn follow(self: Arc<Self>, state: Arc<State>, interval: Duration) {
        loop {
            let expected = self.expected.lock().map(|e| e.clone()).unwrap_or_default();
            let reports = state.reports.fresh(interval * 3);
            let envoy = Pod {
                name: NODE.to_string(),
                namespace: String::new(),
                ips: vec![
                    IpAddr::from([127, 0, 0, 1]),
                    IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                ],
                service_account: String::new(),
            };
            let (ok, _, message) = verdict::evaluate(&expected, &[envoy], &reports).condition();
            let mut c = if ok {
                Component::ok(message)
            } else {
                Component::down(message)
            };
            c.required = false;
            state.set_component("enforced", c);
            tokio::select! {
                () = state.reports.changed() => {}
                () = self.changed.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
