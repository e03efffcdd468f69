//! Conflicts between routes: the older route keeps a host and path, a younger one claiming the
//! same is not accepted.

use std::collections::BTreeMap;

use crate::crd::{NexusRoute, TargetKind};

use super::problem::{Problem, Reason};

/// Creation time (RFC 3339) used to order routes; missing (offline) sorts first.
pub fn created(route: &NexusRoute) -> String {
    route
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// Sort key: older first; equal times by namespace/name.
pub fn age_key(route: &NexusRoute) -> (String, String, String) {
    (
        created(route),
        route.metadata.namespace.clone().unwrap_or_default(),
        route.metadata.name.clone().unwrap_or_default(),
    )
}

/// The route's claims: (host, path with what narrows it, rule index). Rules without a path
/// claim nothing; a route without hosts claims `*`.
fn claims(route: &NexusRoute) -> Vec<(String, String, usize)> {
    let hosts: Vec<String> = if route.spec.hosts.is_empty() {
        vec!["*".to_string()]
    } else {
        route.spec.hosts.clone()
    };
    let mut out = Vec::new();
    for (i, r) in route.spec.rules.iter().enumerate() {
        let Some(p) = &r.matcher.path else { continue };
        let path = if let Some(v) = &p.prefix {
            format!("prefix:{v}")
        } else if let Some(v) = &p.exact {
            format!("exact:{v}")
        } else if let Some(v) = &p.regex {
            format!("regex:{v}")
        } else {
            continue;
        };
        // Methods, headers and gRPC services narrow the claim.
        let narrow = format!(
            "{path} methods={:?} headers={:?} grpc={:?}/{:?}",
            r.matcher.methods, r.matcher.headers, r.matcher.grpc_service, r.matcher.grpc_method
        );
        for h in &hosts {
            out.push((h.clone(), narrow.clone(), i));
        }
    }
    out
}

/// For every route that claims a host and path an older route (on the same target kind)
/// already claims, a `Conflict` problem (at its first such claim). A losing route claims
/// nothing, so it blocks no younger route. Deleted routes are ignored.
pub fn conflicts(routes: &[&NexusRoute]) -> BTreeMap<(String, String), Problem> {
    let mut sorted: Vec<&&NexusRoute> = routes
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    sorted.sort_by_key(|r| age_key(r));
    let mut owner: BTreeMap<(TargetKind, String, String), (String, usize)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in sorted {
        let id = (
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone().unwrap_or_default(),
        );
        let mut lost = None;
        let mut mine = Vec::new();
        for (host, path, i) in claims(r) {
            let key = (r.spec.target.kind, host.clone(), path.clone());
            if let Some((winner, _)) = owner.get(&key) {
                if lost.is_none() {
                    lost = Some(Problem {
                        reason: Reason::Conflict,
                        path: format!("$.spec.rules[{i}].match.path"),
                        message: format!(
                            "host {host:?} with this path is already claimed by the older NexusRoute {winner}"
                        ),
                    });
                }
            } else {
                mine.push((key, i));
            }
        }
        match lost {
            Some(p) => {
                out.insert(id, p);
            }
            None => {
                for (key, i) in mine {
                    owner
                        .entry(key)
                        .or_insert((format!("{}/{}", id.0, id.1), i));
                }
            }
        }
    }
    out
}
