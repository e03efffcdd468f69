//! Proxy reports: every Nexus filter tells the controller what it runs, so a route's status
//! can say whether the proxies its selector matches enforce its current configuration
//! (`Enforced`), not only that the controller wrote its objects (`Programmed`).
//!
//! The sink is VM configuration (`vm_config.configuration`), not plugin configuration: one
//! mechanism in `nexus-proxy-wasm`'s root context serves every filter, and no filter's own
//! configuration type carries it.
//!
//! ```json
//! {"report": {"cluster": "outbound|8080||nexus-controller.nexus-system.svc.cluster.local",
//!             "module_sha256": "9f2c…", "interval_ms": 10000}}
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The controller's path for reports (one JSON [`ProxyReport`] per request).
pub const REPORTS_PATH: &str = "/proxies/v1/reports";

/// A Nexus filter VM's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmConfiguration {
    /// Where the filter reports what it runs; absent: it reports nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportSink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportSink {
    /// Envoy cluster of the controller's HTTP port.
    pub cluster: String,
    /// `:authority` of the report requests.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// The sha256 of the module, as the `vm_config.code.remote.sha256` Envoy checked it
    /// against when it fetched the code (a module cannot hash itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_sha256: Option<String>,
    /// A report goes out when the filter is configured and then every `interval_ms`; the
    /// controller forgets a proxy that has not reported for three intervals.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u32,
    /// Per report request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// What one filter of one proxy runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyReport {
    /// The filter's name in the HTTP filter chain (`nexus.auth`), from Envoy's `plugin_name`.
    pub filter: String,
    /// sha256 (hex) of the plugin configuration bytes the filter was configured with.
    pub config_sha256: String,
    /// From [`ReportSink::module_sha256`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_sha256: Option<String>,
    /// Envoy's `node.id` (Istio: `router~10.1.2.3~gw-7d9f.istio-system~istio-system.svc.cluster.local`).
    pub node_id: String,
    /// `node.metadata.NAME` (Istio sets the pod name there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `node.metadata.NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The interval the controller documents and renders by default.
pub const DEFAULT_INTERVAL_MS: u32 = 10_000;

fn default_authority() -> String {
    "nexus-controller".to_string()
}
fn default_interval_ms() -> u32 {
    DEFAULT_INTERVAL_MS
}
fn default_timeout_ms() -> u64 {
    2000
}

impl ReportSink {
    /// A report sink with the defaults for everything but the cluster.
    pub fn to_cluster(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            authority: default_authority(),
            module_sha256: None,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: default_timeout_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_everything_but_the_cluster() {
        let vm: VmConfiguration = serde_json::from_str(r#"{"report":{"cluster":"c"}}"#).unwrap();
        assert_eq!(vm.report, Some(ReportSink::to_cluster("c")));
        let empty: VmConfiguration = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.report, None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<VmConfiguration>(r#"{"report":{"cluster":"c","x":1}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
    }
}
