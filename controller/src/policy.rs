//! Which routes may attach filters to which gateways.
//!
//! A route that targets a gateway puts filters (auth, rate limits, caching) in front of every
//! host that gateway serves, so the gateway's owner decides who may: per gateway namespace,
//! like Gateway API's `Listener.allowedRoutes.namespaces.from` (`All`, `Same`, or a list of
//! namespaces where Gateway API has a selector). A namespace with no entry allows `Same`,
//! Gateway API's default, except `istio-system`, where Istio installs the mesh's shared
//! ingress gateway: it allows `All` unless configured otherwise, as meshes use it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The namespace Istio installs its ingress gateway into, and the default of
/// `spec.target.namespace` for gateway targets.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "istio-system";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// Routes in every namespace.
    All,
    /// Routes in the gateway's own namespace only.
    Same,
    /// Routes in these namespaces (and the gateway's own).
    Namespaces(BTreeSet<String>),
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            From::All => f.write_str("All"),
            From::Same => f.write_str("Same"),
            From::Namespaces(list) => {
                let list: Vec<&str> = list.iter().map(String::as_str).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

/// The policy of every gateway namespace, and the namespaces the controller may write in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedRoutes {
    by_namespace: BTreeMap<String, From>,
    pub scope: WatchScope,
}

impl Default for AllowedRoutes {
    fn default() -> Self {
        let mut by_namespace = BTreeMap::new();
        by_namespace.insert(DEFAULT_GATEWAY_NAMESPACE.to_string(), From::All);
        AllowedRoutes {
            by_namespace,
            scope: WatchScope::Cluster,
        }
    }
}

/// The namespaces the controller watches and writes in: the whole cluster, or only those it
/// is given (`--watch-namespaces`, the chart's `watchNamespaces`, where it holds Roles and
/// nothing cluster-wide). Gateway namespaces (`--gateway-namespaces`) are where gateway
/// EnvoyFilters go: there the controller touches EnvoyFilters only, so a gateway namespace
/// such as istio-system (which holds Istio's CA Secret) never has its Secrets read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    #[default]
    Cluster,
    Namespaces {
        routes: BTreeSet<String>,
        gateways: BTreeSet<String>,
    },
}

fn names(values: &[String]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

impl WatchScope {
    /// No route namespaces is the whole cluster; names may be given in several values or
    /// comma-separated.
    pub fn parse(routes: &[String], gateways: &[String]) -> WatchScope {
        let routes = names(routes);
        if routes.is_empty() {
            return WatchScope::Cluster;
        }
        WatchScope::Namespaces {
            routes,
            gateways: names(gateways),
        }
    }

    /// Whether routes (and their Secrets, VirtualServices, DestinationRules) are watched here.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            WatchScope::Cluster => true,
            WatchScope::Namespaces { routes, .. } => routes.contains(namespace),
        }
    }

    /// Whether the controller may write gateway EnvoyFilters here.
    pub fn writes_envoy_filters_in(&self, namespace: &str) -> bool {
        match self {
            WatchScope::Cluster => true,
            WatchScope::Namespaces { routes, gateways } => {
                routes.contains(namespace) || gateways.contains(namespace)
            }
        }
    }

    /// The scope EnvoyFilters are watched in: route and gateway namespaces.
    pub fn for_envoy_filters(&self) -> WatchScope {
        match self {
            WatchScope::Cluster => WatchScope::Cluster,
            WatchScope::Namespaces { routes, gateways } => WatchScope::Namespaces {
                routes: routes.union(gateways).cloned().collect(),
                gateways: BTreeSet::new(),
            },
        }
    }
}

impl fmt::Display for WatchScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchScope::Cluster => write!(f, "every namespace"),
            WatchScope::Namespaces { routes, gateways } => {
                let list: Vec<&str> = routes.union(gateways).map(String::as_str).collect();
                write!(f, "{}", list.join(", "))
            }
        }
    }
}

impl AllowedRoutes {
    /// Entries `GATEWAY_NAMESPACE=All|Same|ns1,ns2`, over the defaults.
    pub fn parse(entries: &[String]) -> Result<AllowedRoutes, String> {
        let mut policy = AllowedRoutes::default();
        for entry in entries {
            let (ns, from) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected GATEWAY_NAMESPACE=All|Same|ns1,ns2"))?;
            let from = match from.trim() {
                "All" => From::All,
                "Same" => From::Same,
                "" => return Err(format!("{entry:?}: no namespaces after '='")),
                list => From::Namespaces(list.split(',').map(|s| s.trim().to_string()).collect()),
            };
            policy.by_namespace.insert(ns.trim().to_string(), from);
        }
        Ok(policy)
    }

    /// The same policy for a controller that may write only in `scope`.
    pub fn within(self, scope: WatchScope) -> AllowedRoutes {
        AllowedRoutes { scope, ..self }
    }

    pub fn from(&self, gateway_namespace: &str) -> From {
        self.by_namespace
            .get(gateway_namespace)
            .cloned()
            .unwrap_or(From::Same)
    }

    pub fn allows(&self, gateway_namespace: &str, route_namespace: &str) -> bool {
        if gateway_namespace == route_namespace {
            return true;
        }
        match self.from(gateway_namespace) {
            From::All => true,
            From::Same => false,
            From::Namespaces(list) => list.contains(route_namespace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_is_the_cluster_unless_namespaces_are_given() {
        let gateways = ["istio-system".to_string()];
        assert_eq!(WatchScope::parse(&[], &gateways), WatchScope::Cluster);
        assert_eq!(
            WatchScope::parse(&[" ".into()], &gateways),
            WatchScope::Cluster
        );
        let scope = WatchScope::parse(&["apps, shop".into(), "edge".into()], &gateways);
        assert!(scope.contains("apps") && scope.contains("shop") && scope.contains("edge"));
        assert!(!scope.contains("kube-system"));
        assert!(
            !scope.contains("istio-system"),
            "gateway namespaces hold no routes"
        );
        assert!(scope.writes_envoy_filters_in("istio-system"));
        assert!(scope.writes_envoy_filters_in("edge"));
        assert!(!scope.writes_envoy_filters_in("kube-system"));
        assert!(scope.for_envoy_filters().contains("istio-system"));
        assert!(WatchScope::Cluster.contains("kube-system"));
        assert_eq!(scope.to_string(), "apps, edge, istio-system, shop");
    }

    #[test]
    fn istio_system_takes_every_namespace_and_others_only_their_own_by_default() {
        let p = AllowedRoutes::default();
        assert!(p.allows("istio-system", "shop"));
        assert!(p.allows("edge", "edge"));
        assert!(!p.allows("edge", "shop"));
    }

    #[test]
    fn entries_override_the_defaults() {
        let p = AllowedRoutes::parse(&[
            "istio-system=Same".into(),
            "edge=team-a, team-b".into(),
            "open=All".into(),
        ])
        .unwrap();
        assert!(!p.allows("istio-system", "shop"));
        assert!(p.allows("edge", "team-b") && !p.allows("edge", "team-c"));
        assert!(p.allows("open", "anything"));
        assert_eq!(p.from("edge").to_string(), "team-a,team-b");
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry() {
        let e = AllowedRoutes::parse(&["istio-system".into()]).unwrap_err();
        assert!(e.contains("\"istio-system\""), "{e}");
        assert!(AllowedRoutes::parse(&["gw=".into()]).is_err());
    }
}
