//! Pure rendering of compiled routes into the objects the controller applies.
//!
//! Per group of routes (same namespace, target kind, workload selector): one `EnvoyFilter`
//! with the auth, router and rate-limit Wasm filters and one rate-limit `ConfigMap`. Per route:
//! one `VirtualService` and one `DestinationRule` per upstream. Output is deterministic: same
//! routes in, same bytes out.
//!
//! [`configs`] merges a group's routes into the filters' configurations (shared with
//! `nexus up`), [`group`] wraps them into the EnvoyFilter, [`route`] renders the Istio routing
//! objects.

mod configs;
mod group;
mod route;
pub mod transcoding;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::model::CompiledRoute;
use crate::objects::{Kind, Object};

pub use configs::{
    filter_configurations, group_configs, GroupConfigs, ServiceClusters, ENVOY_DEFAULT_BUFFER_LIMIT,
};
pub use group::{group_object_names, render_group};
pub use route::render_route;

/// Envoy's per-route `typed_per_filter_config` turning off each named Nexus filter
/// (`FilterConfig.disabled`) on a route: the sign-in endpoints are the sessions service's own,
/// which checks what they carry itself, not an API the filters guard.
pub fn filters_disabled<'a>(names: impl Iterator<Item = &'a str>) -> Value {
    let off = json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "disabled": true,
    });
    let map: serde_json::Map<String, Value> = names
        .filter(|n| n.starts_with("nexus."))
        .map(|n| (n.to_string(), off.clone()))
        .collect();
    Value::Object(map)
}

/// A route's circuit breaker as Envoy's cluster `outlier_detection` (where Istio does not
/// render it: `nexus up`'s clusters, the transcoding hops).
pub fn envoy_outlier_detection(o: &crate::model::Outlier) -> Value {
    let d = |ms: u64| format!("{}.{:03}s", ms / 1000, ms % 1000);
    json!({
        "consecutive_5xx": o.consecutive_errors,
        "interval": d(o.interval_ms),
        "base_ejection_time": d(o.base_ejection_ms),
        "max_ejection_percent": o.max_ejection_percent,
    })
}

pub const FIELD_MANAGER: &str = "nexus-controller";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_GROUP: &str = "nexus.datapunk.io/group";
/// The namespace of the group's EnvoyFilter (its ConfigMap lives in the controller's).
pub const LABEL_GROUP_NAMESPACE: &str = "nexus.datapunk.io/group-namespace";
pub const LABEL_ROUTE: &str = "nexus.datapunk.io/route";
/// The filters the controller and `nexus up` render, in `nexus_config::contract::FILTER_ORDER`
/// (see there for why that order; a test keeps this list in it). Guard and cache only where
/// some rule of the group has a `guard` or `cache` block.
pub const FILTERS: [&str; 5] = ["router", "auth", "guard", "ratelimit", "cache"];

#[cfg(test)]
mod tests {
    #[test]
    fn rendered_filters_keep_the_contract_order() {
        let order = nexus_config::contract::FILTER_ORDER;
        let pos = |f: &&str| order.iter().position(|o| o == f).unwrap();
        let positions: Vec<usize> = super::FILTERS.iter().map(pos).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
}
/// Port of the rate-limit service (`envoy.service.ratelimit.v3`) on the `nexus-controller`
/// Service; the ratelimit filter falls back to local buckets while it does not answer.
pub const RATELIMIT_PORT: u16 = 8081;
/// Port of the cache-coherency service (`nexus.cache.v1`) on the `nexus-controller` Service.
pub const CACHE_PORT: u16 = 8083;
/// Port of the HTTP server (health, metrics, `/sessions/v1/*`) on the `nexus-controller`
/// Service.
pub const HTTP_PORT: u16 = 8080;

/// Where the module server is and which module builds to reference.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the controller's Service `nexus-controller`.
    pub controller_namespace: String,
    pub module_port: u16,
    /// Filter name (`auth`, `router`, `ratelimit`) → sha256 hex of its `.wasm`.
    pub modules: BTreeMap<String, String>,
    /// Which route namespaces may attach to the gateways of which namespace.
    pub allowed_routes: crate::policy::AllowedRoutes,
    /// How often every filter reports what it runs (`nexus_config::report`).
    pub report_interval_ms: u32,
    /// The port of the controller's access log service on the `nexus-controller` Service:
    /// gateways stream their access log there ([`crate::access_log_service`]); none: not.
    pub access_log_port: Option<u16>,
    /// The port of the controller's audit service on the `nexus-controller` Service: the
    /// filters send their audit records there ([`crate::audit`]); none: they only count them.
    pub audit_port: Option<u16>,
    /// What proxies do while the audit service does not take records (see
    /// [`configs::ServiceClusters::audit_on_unavailable`]).
    pub audit_on_unavailable: nexus_config::audit::OnUnavailable,
}

impl Settings {
    /// Reads `<dir>/nexus_<filter>.wasm.sha256` (as `cargo xtask build-filters` writes them;
    /// `<filter>.wasm.sha256` also works) for every filter, `sha256sum` format or bare hex.
    pub fn load_modules(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for f in FILTERS {
            let mut p = dir.join(format!("nexus_{f}.wasm.sha256"));
            if !p.exists() {
                p = dir.join(format!("{f}.wasm.sha256"));
            }
            let text = std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            let hex = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("{} does not hold a sha256 hex digest", p.display());
            }
            out.insert(f.to_string(), hex.to_ascii_lowercase());
        }
        Ok(out)
    }
}

fn owner_ref(r: &CompiledRoute, controller: bool) -> Value {
    json!({
        "apiVersion": crate::crd::api_version(),
        "kind": "NexusRoute",
        "name": r.name,
        "uid": r.uid,
        "controller": controller,
        "blockOwnerDeletion": false,
    })
}

fn meta(name: &str, ns: &str, labels: Value, owners: Vec<Value>) -> Value {
    let mut m = json!({ "name": name, "namespace": ns, "labels": labels });
    if !owners.is_empty() {
        m["ownerReferences"] = Value::Array(owners);
    }
    m
}

/// An object of `kind` from its metadata and its other top-level fields (a JSON object).
fn object(kind: Kind, metadata: Value, fields: Value) -> Object {
    let fields = match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Object::new(kind, metadata, fields)
}
