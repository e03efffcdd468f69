//! Reports proxies send (`POST /proxies/v1/reports`, one [`ProxyReport`] each), kept in
//! memory by node and filter with who sent them: the peer address, and the mesh identity
//! from `x-forwarded-client-cert` when this process sits behind its own sidecar.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nexus_config::report::ProxyReport;

/// Reports kept at most (one per proxy and filter): beyond it new proxies are refused (503),
/// so a flood of made-up node ids cannot grow the controller's memory.
pub const CAPACITY: usize = 50_000;
/// Largest report body taken.
pub const MAX_BODY: usize = 16 * 1024;

/// A report and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub report: ProxyReport,
    pub peer: IpAddr,
    /// `spiffe://…/ns/<namespace>/sa/<service account>` of the sender, when trusted.
    pub identity: Option<String>,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct ProxyReports {
    entries: Mutex<HashMap<(String, String), Received>>,
    changed: tokio::sync::Notify,
    taken: AtomicU64,
    refused: AtomicU64,
}

/// Why a report was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Invalid(String),
    Full,
}

impl ProxyReports {
    /// Keeps a report; wakes [`ProxyReports::changed`] when it says something new (a new
    /// proxy, or another configuration), not on every periodic repeat.
    pub fn record(&self, received: Received) -> Result<(), Refused> {
        let result = self.keep(received);
        let counter = if result.is_ok() {
            &self.taken
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn keep(&self, received: Received) -> Result<(), Refused> {
        check(&received.report).map_err(Refused::Invalid)?;
        let key = (
            received.report.node_id.clone(),
            received.report.filter.clone(),
        );
        let mut entries = self.entries.lock().map_err(|_| Refused::Full)?;
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            return Err(Refused::Full);
        }
        let news = entries.get(&key).is_none_or(|old| {
            old.report != received.report
                || old.peer != received.peer
                || old.identity != received.identity
        });
        entries.insert(key, received);
        drop(entries);
        if news {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Reports younger than `max_age`; older ones are forgotten.
    pub fn fresh(&self, max_age: Duration) -> Vec<Received> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        entries.retain(|_, r| r.at.elapsed() <= max_age);
        entries.values().cloned().collect()
    }

    /// `nexus_proxy_reports_total{result="taken|refused"}` in Prometheus text.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# HELP nexus_proxy_reports_total Proxy reports received, by outcome.\n\
             # TYPE nexus_proxy_reports_total counter\n",
        );
        for (result, n) in [("taken", &self.taken), ("refused", &self.refused)] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(s, "nexus_proxy_reports_total{{result=\"{result}\"}} {n}");
        }
        s
    }

    /// Makes [`ProxyReports::changed`] resolve: something other than a report (a route
    /// programmed) calls for an evaluation.
    pub fn wake(&self) {
        self.changed.notify_one();
    }

    /// Resolves when a report said something new since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

fn check(r: &ProxyReport) -> Result<(), String> {
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if r.filter.is_empty() || r.filter.len() > 253 {
        return Err("filter: must name the filter (1 to 253 bytes)".into());
    }
    if r.node_id.is_empty() || r.node_id.len() > 512 {
        return Err("node_id: Envoy's node id is missing or longer than 512 bytes".into());
    }
    if !hex64(&r.config_sha256) {
        return Err("config_sha256: must be 64 hex digits".into());
    }
    if r.module_sha256.as_deref().is_some_and(|m| !hex64(m)) {
        return Err("module_sha256: must be 64 hex digits".into());
    }
    Ok(())
}

/// The mesh identity in an `x-forwarded-client-cert` value: the `URI=` of its last element,
/// the one the receiving sidecar added (earlier elements come from the client and prove
/// nothing).
pub fn xfcc_identity(xfcc: &str) -> Option<String> {
    let last = xfcc.rsplit(',').next()?;
    last.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        let v = v.trim_matches('"');
        (k.eq_ignore_ascii_case("uri") && v.starts_with("spiffe://")).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn report(node: &str, filter: &str, sha: char) -> ProxyReport {
        ProxyReport {
            filter: filter.into(),
            config_sha256: sha.to_string().repeat(64),
            module_sha256: None,
            node_id: node.into(),
            pod: None,
            namespace: None,
        }
    }

    fn received(r: ProxyReport) -> Received {
        Received {
            report: r,
            peer: IpAddr::from([127, 0, 0, 1]),
            identity: None,
            at: Instant::now(),
        }
    }

    #[test]
    fn malformed_reports_are_refused_with_the_field() {
        let store = ProxyReports::default();
        let mut r = report("gw-1", "nexus.auth", 'a');
        r.config_sha256 = "xyz".into();
        let Err(Refused::Invalid(why)) = store.record(received(r)) else {
            panic!("taken")
        };
        assert!(why.starts_with("config_sha256"), "{why}");
        let mut r = report("", "nexus.auth", 'a');
        r.node_id.clear();
        assert!(matches!(
            store.record(received(r)),
            Err(Refused::Invalid(_))
        ));
        assert!(store.fresh(Duration::from_secs(60)).is_empty());
    }

    #[tokio::test]
    async fn only_news_wakes_the_evaluation() {
        let store = ProxyReports::default();
        store
            .record(received(report("gw-1", "nexus.auth", 'a')))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), store.changed())
            .await
            .expect("a new proxy is news");
        store
            .record(received(report("gw-1", "nexus.auth", 'a')))
            .unwrap();
        let repeat = tokio::time::timeout(Duration::from_millis(100), store.changed()).await;
        assert!(repeat.is_err(), "a periodic repeat is not news");
        store
            .record(received(report("gw-1", "nexus.auth", 'b')))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), store.changed())
            .await
            .expect("a new configuration is news");
        assert_eq!(store.fresh(Duration::from_secs(60)).len(), 1);
        assert!(store.fresh(Duration::ZERO).is_empty(), "old reports go");
    }

    #[test]
    fn the_identity_is_the_last_xfcc_element() {
        let forged = "URI=spiffe://cluster.local/ns/istio-system/sa/gw";
        let real = "By=spiffe://cluster.local/ns/nexus-system/sa/nexus;Hash=ab;Subject=\"\";URI=spiffe://cluster.local/ns/shop/sa/app";
        assert_eq!(
            xfcc_identity(&format!("{forged},{real}")).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/app")
        );
        assert_eq!(xfcc_identity("Hash=ab"), None);
    }
}
