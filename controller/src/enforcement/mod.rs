//! The `Enforced` condition: whether the proxies a route's selector matches run what the
//! controller wrote, from the reports every Nexus filter sends ([`reports`]).
//!
//! The leader evaluates each programmed route's group when a report says something new and
//! every report interval: the group's EnvoyFilter (as it is in the API server) says which
//! filter configurations proxies should run, the group's Pods (the target selector, in the
//! EnvoyFilter's namespace) which proxies should run them, and [`verdict`] compares. A status
//! is written only when the condition or the count changed.
//!
//! Reports reach the leader alone: the chart's `nexus-controller-leader` Service selects the
//! replica that labelled its pod as leader ([`leader_label`]), and that is where filters send
//! them. A replica that loses the lease exits, and clears its label when it starts again.

pub mod local;
pub mod reports;
pub mod verdict;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crd::{Condition, NexusRoute, NexusRouteStatus};
use crate::model::{group_key, GroupKey};
use crate::objects::Kind;
use reports::ProxyReports;
use verdict::{Enforcement, Expected};

/// The pod label the leader sets on itself (`"true"`), selected by the leader Service.
pub const LEADER_LABEL: &str = "nexus.datapunk.io/leader";

/// A report older than this many intervals no longer counts: its proxy is missing.
const INTERVALS_KEPT: u32 = 3;

pub struct Enforcer {
    pub client: Client,
    pub routes: Store<NexusRoute>,
    pub reports: Arc<ProxyReports>,
    pub interval: Duration,
}

impl Enforcer {
    /// Evaluates when reports bring news (a short pause lets a burst land) and every interval.
    pub async fn run(self) {
        loop {
            tokio::select! {
                () = self.reports.changed() => tokio::time::sleep(Duration::from_millis(200)).await,
                () = tokio::time::sleep(self.interval) => {}
            }
            self.evaluate_all().await;
        }
    }

    /// Every group; one that fails (an API error) is logged and the others still count.
    async fn evaluate_all(&self) {
        let reports = self.reports.fresh(self.interval * INTERVALS_KEPT);
        for (key, routes) in programmed_groups(&self.routes.state()) {
            if let Err(e) = self.evaluate(&key, &routes, &reports).await {
                tracing::warn!(error = %e, group = %key.name(), namespace = %key.namespace,
                    "evaluating proxy reports failed");
            }
        }
    }

    async fn evaluate(
        &self,
        key: &GroupKey,
        routes: &[Arc<NexusRoute>],
        reports: &[reports::Received],
    ) -> Result<(), kube::Error> {
        let Some(expected) = self.expected(key).await? else {
            return Ok(());
        };
        let pods = self.pods(key).await?;
        let enforcement = verdict::evaluate(&expected, &pods, reports);
        for route in routes {
            self.write_if_changed(route, &enforcement).await?;
        }
        Ok(())
    }

    /// What the group's EnvoyFilter configures, as the API server has it.
    async fn expected(&self, key: &GroupKey) -> Result<Option<Expected>, kube::Error> {
        let ar = Kind::EnvoyFilter.api_resource();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &ar);
        let Some(ef) = api.get_opt(&key.name()).await? else {
            return Ok(None);
        };
        Ok(Some(expected_of(&ef.data)))
    }

    async fn pods(&self, key: &GroupKey) -> Result<Vec<verdict::Pod>, kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let selector: Vec<String> = key
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let list = api
            .list(&ListParams::default().labels(&selector.join(",")))
            .await?;
        Ok(list.items.iter().filter_map(running_pod).collect())
    }

    async fn write_if_changed(
        &self,
        route: &NexusRoute,
        enforcement: &Enforcement,
    ) -> Result<(), kube::Error> {
        let before = route.status.clone().unwrap_or_default();
        let after = with_enforcement(
            &before,
            route.metadata.generation,
            enforcement,
            &crate::status::now(),
        );
        if after == before {
            return Ok(());
        }
        // Written only over the copy it was computed from: a reconcile that wrote status since
        // (a new generation programmed) wins, and the next evaluation starts from its status.
        match crate::status::write_over(&self.client, route, &after).await {
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            other => other,
        }
    }
}

/// Programmed routes (for their current generation) by group.
fn programmed_groups(routes: &[Arc<NexusRoute>]) -> BTreeMap<GroupKey, Vec<Arc<NexusRoute>>> {
    let mut groups: BTreeMap<GroupKey, Vec<Arc<NexusRoute>>> = BTreeMap::new();
    for route in routes {
        if crate::status::programmed_count(std::slice::from_ref(route)) == 1 {
            groups
                .entry(group_key(route))
                .or_default()
                .push(route.clone());
        }
    }
    groups
}

/// Filter name → sha256 of its configuration, from an EnvoyFilter's wasm patches.
pub fn expected_of(envoy_filter: &Value) -> Expected {
    let patches = envoy_filter["spec"]["configPatches"].as_array();
    patches
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let value = &p["patch"]["value"];
            let name = value["name"].as_str()?;
            let config = value["typed_config"]["config"]["configuration"]["value"].as_str()?;
            Some((name.to_string(), sha256_hex(config.as_bytes())))
        })
        .collect()
}

/// sha256 of `bytes`, lower-case hex: what a filter reports of its configuration.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A pod that is meant to run (not being deleted, not finished), as [`verdict`] needs it.
fn running_pod(pod: &Pod) -> Option<verdict::Pod> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    let mut ips: Vec<std::net::IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    let spec = pod.spec.as_ref();
    Some(verdict::Pod {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        ips,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
    })
}

/// `status` with the `Enforced` condition and count from `enforcement` (the transition time
/// kept while the condition's status holds).
pub fn with_enforcement(
    status: &NexusRouteStatus,
    generation: Option<i64>,
    enforcement: &Enforcement,
    now: &str,
) -> NexusRouteStatus {
    let (ok, reason, message) = enforcement.condition();
    let status_text = if ok { "True" } else { "False" };
    let previous = status.conditions.iter().find(|c| c.type_ == "Enforced");
    let last_transition_time = previous
        .filter(|c| c.status == status_text)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    let condition = Condition {
        type_: "Enforced".to_string(),
        status: status_text.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    let mut out = status.clone();
    out.conditions.retain(|c| c.type_ != "Enforced");
    out.conditions.push(condition);
    out.enforced = Some(enforcement.summary());
    out
}

/// Sets this replica's pod label [`LEADER_LABEL`] (`POD_NAME` in `namespace`), so the leader
/// Service sends reports to it alone; `false` at start, `true` once leader.
pub async fn leader_label(client: &Client, namespace: &str, pod: &str, leader: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch =
        serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: leader.to_string() } } });
    if let Err(e) = api
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, pod, leader, "labelling this replica's pod failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expectations_come_from_the_wasm_patches() {
        let ef = json!({"spec": {"configPatches": [
            {"patch": {"value": {"name": "nexus.auth", "typed_config": {"config": {
                "configuration": {"value": "{\"rules\":[]}"}}}}}},
            {"patch": {"value": {"per_connection_buffer_limit_bytes": 1}}},
        ]}});
        let e = expected_of(&ef);
        assert_eq!(e.len(), 1);
        assert_eq!(e["nexus.auth"], sha256_hex(b"{\"rules\":[]}"));
    }

    #[test]
    fn the_condition_is_added_and_its_time_kept_while_it_holds() {
        let enforcement = verdict::evaluate(&Expected::new(), &[], &[]);
        let first = with_enforcement(&NexusRouteStatus::default(), Some(2), &enforcement, "T1");
        let c = first
            .conditions
            .iter()
            .find(|c| c.type_ == "Enforced")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoMatchingWorkloads")
        );
        assert_eq!(first.enforced.as_deref(), Some("0/0"));
        let again = with_enforcement(&first, Some(2), &enforcement, "T2");
        assert_eq!(again, first, "nothing changed: nothing to write");
    }
}
