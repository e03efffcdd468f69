//! Whether the proxies a route's selector matches run what the controller wrote (pure).
//!
//! A proxy counts as *current* when it reported, for every Nexus filter of the group's
//! EnvoyFilter, the sha256 of that filter's configuration; *stale* when it reported something
//! else (its configuration id is shown); *missing* when no report of it is fresh. A report
//! counts for a pod only when it came from that pod: from one of the pod's IPs, or with the
//! mesh identity of the pod's namespace and service account. Anything else is listed as
//! *unverified* and counts for nothing, so one pod cannot report for another.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::reports::Received;

/// A pod the group's selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
}

/// Filter name (`nexus.auth`) → sha256 hex of the configuration the controller rendered.
pub type Expected = BTreeMap<String, String>;

/// The short id of a configuration: the first 8 hex digits of a sha256 over its filters.
pub fn config_id(filters: &Expected) -> String {
    let mut h = Sha256::new();
    for (filter, sha) in filters {
        h.update(filter.as_bytes());
        h.update(b"=");
        h.update(sha.as_bytes());
        h.update(b"\n");
    }
    h.finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Enforcement {
    pub expected_id: String,
    pub pods: usize,
    pub current: Vec<String>,
    /// Pod and the configuration id it reported.
    pub stale: Vec<(String, String)>,
    pub missing: Vec<String>,
    /// Pod a report claimed, and where the report came from.
    pub unverified: Vec<(String, String)>,
}

/// Compares `reports` with what every pod should run.
pub fn evaluate(expected: &Expected, pods: &[Pod], reports: &[Received]) -> Enforcement {
    let mut out = Enforcement {
        expected_id: config_id(expected),
        pods: pods.len(),
        ..Default::default()
    };
    for pod in pods {
        let claims: Vec<&Received> = reports.iter().filter(|r| claims_pod(r, pod)).collect();
        let (from_pod, others): (Vec<&Received>, Vec<&Received>) =
            claims.into_iter().partition(|r| sent_by(r, pod));
        if let Some(r) = others.first() {
            out.unverified
                .push((pod.name.clone(), format!("report from {}", r.peer)));
        }
        let running: Expected = from_pod
            .iter()
            .filter(|r| expected.contains_key(&r.report.filter))
            .map(|r| (r.report.filter.clone(), r.report.config_sha256.clone()))
            .collect();
        if running.is_empty() {
            out.missing.push(pod.name.clone());
        } else if &running == expected {
            out.current.push(pod.name.clone());
        } else {
            out.stale.push((pod.name.clone(), config_id(&running)));
        }
    }
    out
}

/// Which pod a report names: `node.metadata.NAME`/`NAMESPACE` when set (Istio sets both),
/// else Istio's node id `type~ip~pod.namespace~domain`, else the node id itself.
pub fn pod_of(r: &Received) -> (String, Option<String>) {
    let report = &r.report;
    if let Some(pod) = &report.pod {
        return (pod.clone(), report.namespace.clone());
    }
    let mut parts = report.node_id.split('~');
    if let (Some(_), Some(_), Some(pod_ns)) = (parts.next(), parts.next(), parts.next()) {
        if let Some((pod, ns)) = pod_ns.split_once('.') {
            return (pod.to_string(), Some(ns.to_string()));
        }
    }
    (report.node_id.clone(), report.namespace.clone())
}

fn claims_pod(r: &Received, pod: &Pod) -> bool {
    let (name, namespace) = pod_of(r);
    name == pod.name && namespace.is_none_or(|ns| ns == pod.namespace)
}

fn sent_by(r: &Received, pod: &Pod) -> bool {
    let identity = format!("/ns/{}/sa/{}", pod.namespace, pod.service_account);
    pod.ips.contains(&r.peer)
        || r.identity
            .as_deref()
            .is_some_and(|id| id.starts_with("spiffe://") && id.ends_with(&identity))
}

impl Enforcement {
    /// `2/3`: the ENFORCED column.
    pub fn summary(&self) -> String {
        format!("{}/{}", self.current.len(), self.pods)
    }

    /// The `Enforced` condition: (status, reason, message).
    pub fn condition(&self) -> (bool, &'static str, String) {
        let counts = self.summary();
        if self.pods == 0 {
            return (
                false,
                "NoMatchingWorkloads",
                "no pod matches the target selector".to_string(),
            );
        }
        if self.current.len() == self.pods {
            let msg = format!("{counts} proxies run configuration {}", self.expected_id);
            return (true, "Enforced", msg);
        }
        let mut parts = vec![format!(
            "{counts} proxies run configuration {}",
            self.expected_id
        )];
        if !self.stale.is_empty() {
            let list: Vec<String> = self
                .stale
                .iter()
                .map(|(p, c)| format!("{p} (config {c})"))
                .collect();
            parts.push(format!("stale: {}", list.join(", ")));
        }
        if !self.missing.is_empty() {
            parts.push(format!("missing: {}", self.missing.join(", ")));
        }
        if !self.unverified.is_empty() {
            let list: Vec<String> = self
                .unverified
                .iter()
                .map(|(p, from)| format!("{p} ({from}, not the pod's address or identity)"))
                .collect();
            parts.push(format!("unverified: {}", list.join(", ")));
        }
        let reason = if self.stale.is_empty() {
            "ProxiesMissing"
        } else {
            "ProxiesStale"
        };
        (false, reason, parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_config::report::ProxyReport;
    use std::time::Instant;

    fn pod(name: &str, ip: [u8; 4]) -> Pod {
        Pod {
            name: name.into(),
            namespace: "istio-system".into(),
            ips: vec![IpAddr::from(ip)],
            service_account: "gw".into(),
        }
    }

    fn report(node: &str, filter: &str, sha: &str, peer: [u8; 4]) -> Received {
        Received {
            report: ProxyReport {
                filter: filter.into(),
                config_sha256: sha.into(),
                module_sha256: None,
                node_id: node.into(),
                pod: None,
                namespace: None,
            },
            peer: IpAddr::from(peer),
            identity: None,
            at: Instant::now(),
        }
    }

    fn expected() -> Expected {
        [("nexus.auth", "a1"), ("nexus.router", "r1")]
            .into_iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn every_pod_current_is_enforced() {
        let pods = [pod("gw-a", [10, 0, 0, 1]), pod("gw-b", [10, 0, 0, 2])];
        let mut reports = Vec::new();
        for (p, ip) in [("gw-a", [10, 0, 0, 1]), ("gw-b", [10, 0, 0, 2])] {
            reports.push(report(p, "nexus.auth", "a1", ip));
            reports.push(report(p, "nexus.router", "r1", ip));
        }
        let e = evaluate(&expected(), &pods, &reports);
        let (ok, reason, msg) = e.condition();
        assert!(ok);
        assert_eq!(reason, "Enforced");
        assert_eq!(
            msg,
            format!("2/2 proxies run configuration {}", config_id(&expected()))
        );
    }

    #[test]
    fn stale_and_missing_pods_are_named() {
        let pods = [
            pod("gw-a", [10, 0, 0, 1]),
            pod("gw-b", [10, 0, 0, 2]),
            pod("gw-c", [10, 0, 0, 3]),
        ];
        let reports = [
            report("gw-a", "nexus.auth", "a1", [10, 0, 0, 1]),
            report("gw-a", "nexus.router", "r1", [10, 0, 0, 1]),
            report("gw-b", "nexus.auth", "OLD", [10, 0, 0, 2]),
            report("gw-b", "nexus.router", "r1", [10, 0, 0, 2]),
        ];
        let e = evaluate(&expected(), &pods, &reports);
        assert_eq!(e.summary(), "1/3");
        let old: Expected = [("nexus.auth", "OLD"), ("nexus.router", "r1")]
            .into_iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect();
        let (ok, reason, msg) = e.condition();
        assert!(!ok);
        assert_eq!(reason, "ProxiesStale");
        assert!(
            msg.ends_with(&format!(
                "; stale: gw-b (config {}); missing: gw-c",
                config_id(&old)
            )),
            "{msg}"
        );
    }

    #[test]
    fn a_pod_cannot_report_for_another() {
        let pods = [pod("gw-a", [10, 0, 0, 1])];
        let mut reports = vec![
            report("gw-a", "nexus.auth", "a1", [10, 0, 0, 9]),
            report("gw-a", "nexus.router", "r1", [10, 0, 0, 9]),
        ];
        let e = evaluate(&expected(), &pods, &reports);
        assert_eq!(e.missing, ["gw-a"]);
        assert_eq!(
            e.unverified,
            [("gw-a".to_string(), "report from 10.0.0.9".to_string())]
        );
        for r in &mut reports {
            r.identity = Some("spiffe://cluster.local/ns/istio-system/sa/gw".into());
        }
        let e = evaluate(&expected(), &pods, &reports);
        assert_eq!(
            e.current,
            ["gw-a"],
            "the mesh identity of the pod's service account"
        );
        for r in &mut reports {
            r.identity = Some("spiffe://cluster.local/ns/shop/sa/gw".into());
        }
        assert_eq!(evaluate(&expected(), &pods, &reports).missing, ["gw-a"]);
    }

    #[test]
    fn pods_are_found_from_istio_node_ids_and_metadata() {
        let mut r = report(
            "router~10.0.0.1~gw-7d9f.istio-system~istio-system.svc.cluster.local",
            "nexus.auth",
            "a1",
            [10, 0, 0, 1],
        );
        assert_eq!(pod_of(&r), ("gw-7d9f".into(), Some("istio-system".into())));
        r.report.pod = Some("gw-x".into());
        assert_eq!(pod_of(&r), ("gw-x".into(), None));
        let plain = report("gw-1", "nexus.auth", "a1", [10, 0, 0, 1]);
        assert_eq!(pod_of(&plain), ("gw-1".into(), None));
    }

    #[test]
    fn no_pods_is_not_enforced() {
        let e = evaluate(&expected(), &[], &[]);
        assert_eq!(e.condition().1, "NoMatchingWorkloads");
        assert_eq!(e.summary(), "0/0");
    }
}
