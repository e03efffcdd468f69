//! Where a route applies: its target workloads, hosts and gateways, and which routes share one
//! EnvoyFilter.

use std::collections::BTreeMap;

use crate::crd::{NexusRoute, NexusRouteSpec, TargetKind};

use super::problem::Ctx;

/// Checks the target, hosts and gateways (and that there is at least one rule).
pub(super) fn check(cx: &mut Ctx, spec: &NexusRouteSpec) {
    if spec.target.selector.is_empty() {
        cx.bad(
            "$.spec.target.selector",
            "must select workloads by at least one label",
        );
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if !is_host(host) {
            cx.bad(
                format!("$.spec.hosts[{i}]"),
                format!("{host:?} is not a lower-case host name"),
            );
        }
    }
    if spec.target.kind == TargetKind::Gateway && spec.gateways.is_empty() {
        cx.bad(
            "$.spec.gateways",
            "a Gateway target needs the Istio Gateway(s) its VirtualService binds to",
        );
    }
    if spec.rules.is_empty() {
        cx.bad("$.spec.rules", "must have at least one rule");
    }
    if let (TargetKind::Sidecar, Some(ns)) = (spec.target.kind, &spec.target.namespace) {
        if ns != cx.ns {
            cx.bad(
                "$.spec.target.namespace",
                format!("a Sidecar target selects workloads in the route's own namespace {:?}, not {ns:?}", cx.ns),
            );
        }
    }
}

/// `*`, or a lower-case host name with an optional `*.` wildcard label in front.
fn is_host(host: &str) -> bool {
    host == "*"
        || (!host.is_empty()
            && host
                .trim_start_matches("*.")
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
}

/// Routes with equal keys share one EnvoyFilter and rate-limit domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub namespace: String,
    pub kind: TargetKind,
    pub selector: BTreeMap<String, String>,
}

impl GroupKey {
    /// `nexus-gateway-1a2b3c4d`: stable across restarts and versions.
    pub fn name(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (k, v) in &self.selector {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let kind = match self.kind {
            TargetKind::Gateway => "gateway",
            TargetKind::Sidecar => "sidecar",
        };
        format!("nexus-{kind}-{hex}")
    }
}

/// The namespace of the workloads a route targets, where its EnvoyFilter must live: Istio
/// applies an EnvoyFilter with a `workloadSelector` only to workloads in its own namespace
/// (Istio's EnvoyFilter reference; the config root namespace, which would reach every
/// namespace, is never used).
pub fn target_namespace(route: &NexusRoute) -> String {
    let target = &route.spec.target;
    match (target.kind, &target.namespace) {
        (TargetKind::Gateway, Some(ns)) => ns.clone(),
        (TargetKind::Gateway, None) => crate::policy::DEFAULT_GATEWAY_NAMESPACE.to_string(),
        (TargetKind::Sidecar, _) => route.metadata.namespace.clone().unwrap_or_default(),
    }
}

/// Routes targeting the same workloads (namespace, kind, selector) share one group: one
/// EnvoyFilter, one rate-limit domain, whatever namespaces the routes live in.
pub fn group_key(route: &NexusRoute) -> GroupKey {
    GroupKey {
        namespace: target_namespace(route),
        kind: route.spec.target.kind,
        selector: route.spec.target.selector.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_stable_and_selector_sensitive() {
        let g = |kind, labels: &[(&str, &str)]| GroupKey {
            namespace: "ns".into(),
            kind,
            selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let a = g(TargetKind::Gateway, &[("istio", "ingressgateway")]);
        assert_eq!(
            a.name(),
            g(TargetKind::Gateway, &[("istio", "ingressgateway")]).name()
        );
        assert!(a.name().starts_with("nexus-gateway-"));
        assert_ne!(
            a.name(),
            g(TargetKind::Gateway, &[("istio", "other")]).name()
        );
        assert!(g(TargetKind::Sidecar, &[("app", "x")])
            .name()
            .starts_with("nexus-sidecar-"));
    }
}
