//! Upstream Services: how a CRD `Upstream` resolves, and the one-port-per-name rule.

use std::collections::BTreeMap;

use crate::crd::{Protocol, Upstream};

use super::problem::Ctx;
use super::syntax::is_dns_label;

/// An upstream Service port, with the token the router sends in `x-nexus-upstream`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedUpstream {
    pub token: String,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl PartialOrd for Protocol {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Protocol {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// The Service's cluster-local host (in the route's namespace unless it names one); bad names
/// and port 0 are reported at `path`.
pub(super) fn resolve(cx: &mut Ctx, u: &Upstream, path: &str) -> ResolvedUpstream {
    if !is_dns_label(&u.service) {
        cx.bad(
            format!("{path}.service"),
            format!("{:?} is not a Service name (a DNS label)", u.service),
        );
    }
    if let Some(ns) = &u.namespace {
        if !is_dns_label(ns) {
            cx.bad(
                format!("{path}.namespace"),
                format!("{ns:?} is not a namespace name"),
            );
        }
    }
    if u.port == 0 {
        cx.bad(format!("{path}.port"), "port must be 1..=65535");
    }
    let ns = u.namespace.as_deref().unwrap_or(cx.ns);
    ResolvedUpstream {
        token: u.service.clone(),
        host: format!("{}.{ns}.svc.cluster.local", u.service),
        port: u.port,
        protocol: u.protocol.unwrap_or(Protocol::HTTP),
    }
}

/// The upstreams a route's rules send to, by token: the router only sends the Service name, so
/// within a route one name must mean one host, port and protocol.
#[derive(Default)]
pub(super) struct Tokens(BTreeMap<String, (ResolvedUpstream, String)>);

impl Tokens {
    /// Records `u` (used at `path`), or reports it if its name already means another port.
    pub(super) fn claim(&mut self, cx: &mut Ctx, u: &ResolvedUpstream, path: String) {
        match self.0.get(&u.token) {
            Some((prev, prev_path))
                if prev.host != u.host || prev.port != u.port || prev.protocol != u.protocol =>
            {
                cx.bad(
                    path,
                    format!(
                        "upstream service {:?} is already {}:{} at {prev_path}; one service name, one port per route",
                        u.token, prev.host, prev.port
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.0.insert(u.token.clone(), (u.clone(), path));
            }
        }
    }
}
