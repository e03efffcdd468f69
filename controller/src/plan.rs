//! Which objects to apply for which routes, and each route's outcome: the pure core the
//! controller and `nexus render` share.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::crd::{Condition, NexusRoute};
use crate::model::{self, age_key, CompiledRoute, Problem, SecretLookup};
use crate::render::{self, Settings};

pub type RouteId = (String, String);

/// Each route's compiled form or its problems.
pub type Outcomes = BTreeMap<RouteId, Result<CompiledRoute, Vec<Problem>>>;

pub fn id(route: &NexusRoute) -> RouteId {
    (
        route.metadata.namespace.clone().unwrap_or_default(),
        route.metadata.name.clone().unwrap_or_default(),
    )
}

/// Compiles every live route, with conflict losers rejected.
pub fn outcomes(routes: &[&NexusRoute], secrets: &dyn SecretLookup) -> Outcomes {
    let lost = model::conflicts(routes);
    routes
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .map(|r| {
            let key = id(r);
            let out = match lost.get(&key) {
                Some(p) => Err(vec![p.clone()]),
                None => model::compile(r, secrets),
            };
            (key, out)
        })
        .collect()
}

/// What reconciling one route needs: its outcome, and the objects of its group and its own.
pub struct RoutePlan {
    pub outcome: Result<CompiledRoute, Vec<Problem>>,
    /// EnvoyFilter + ConfigMap of the route's group (empty group: nothing; delete them).
    pub group_objects: Vec<Value>,
    pub group_name: String,
    /// VirtualService + DestinationRules (empty unless accepted).
    pub route_objects: Vec<Value>,
}

/// This route's outcome and its own objects (VirtualService, DestinationRules), without
/// compiling the rest of its group.
pub fn route_only(
    route: &NexusRoute,
    all: &[&NexusRoute],
    secrets: &dyn SecretLookup,
) -> RoutePlan {
    let lost = model::conflicts(all);
    let outcome = match lost.get(&id(route)) {
        Some(p) => Err(vec![p.clone()]),
        None => model::compile(route, secrets),
    };
    let route_objects = match (&outcome, route.metadata.deletion_timestamp.is_none()) {
        (Ok(c), true) => render::render_route(c),
        _ => Vec::new(),
    };
    RoutePlan {
        outcome,
        group_objects: Vec::new(),
        group_name: model::group_key(route).name(),
        route_objects,
    }
}

/// Plans one route against every route the controller knows (for conflicts and its group).
pub fn for_route(
    route: &NexusRoute,
    all: &[&NexusRoute],
    secrets: &dyn SecretLookup,
    settings: &Settings,
) -> anyhow::Result<RoutePlan> {
    let group = model::group_key(route);
    let lost = model::conflicts(all);
    let me = id(route);
    let mut members: Vec<&NexusRoute> = all
        .iter()
        .copied()
        .filter(|r| r.metadata.deletion_timestamp.is_none() && model::group_key(r) == group)
        .collect();
    members.sort_by_key(|r| age_key(r));
    let mut accepted = Vec::new();
    let mut outcome = None;
    for r in members {
        let key = id(r);
        let out = match lost.get(&key) {
            Some(p) => Err(vec![p.clone()]),
            None => model::compile(r, secrets),
        };
        if key == me {
            outcome = Some(out.clone());
        }
        if let Ok(c) = out {
            accepted.push(c);
        }
    }
    let outcome = match outcome {
        Some(o) => o,
        // Being deleted (or not in `all`): plan the group without it.
        None => model::compile(route, secrets),
    };
    let refs: Vec<&CompiledRoute> = accepted.iter().collect();
    let group_objects = if refs.is_empty() {
        Vec::new()
    } else {
        render::render_group(&group, &refs, settings)?
    };
    let route_objects = match (&outcome, route.metadata.deletion_timestamp.is_none()) {
        (Ok(c), true) => render::render_route(c),
        _ => Vec::new(),
    };
    Ok(RoutePlan {
        outcome,
        group_objects,
        group_name: group.name(),
        route_objects,
    })
}

/// Every object for a set of routes (what `nexus render` prints), sorted by kind/ns/name.
pub fn render_all(
    routes: &[&NexusRoute],
    secrets: &dyn SecretLookup,
    settings: &Settings,
) -> anyhow::Result<(Vec<Value>, Outcomes)> {
    let outs = outcomes(routes, secrets);
    let mut groups: BTreeMap<model::GroupKey, Vec<&CompiledRoute>> = BTreeMap::new();
    let mut objects = Vec::new();
    for c in outs.values().flatten() {
        groups.entry(c.group.clone()).or_default().push(c);
        objects.extend(render::render_route(c));
    }
    for (g, mut members) in groups {
        members.sort_by(|a, b| {
            (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
        });
        objects.extend(render::render_group(&g, &members, settings)?);
    }
    objects.sort_by_key(|o| {
        (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    Ok((objects, outs))
}

/// Status conditions for an outcome. `programmed`: `None` when nothing was applied (not
/// accepted), `Some(Ok)` when every object applied, `Some(Err(msg))` otherwise. Keeps
/// `lastTransitionTime` of conditions whose status did not change.
pub fn conditions(
    previous: &[Condition],
    generation: Option<i64>,
    outcome: &Result<CompiledRoute, Vec<Problem>>,
    programmed: Option<Result<(), String>>,
    now: &str,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let mut push = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        out.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: last,
        });
    };
    let join = |ps: &[&Problem]| {
        ps.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    match outcome {
        Ok(c) => {
            push(
                "Accepted",
                true,
                "Accepted",
                format!("{} rules accepted", c.rule_count),
            );
            push(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved".to_string(),
            );
        }
        Err(problems) => {
            let spec: Vec<&Problem> = problems.iter().filter(|p| !p.reason.is_ref()).collect();
            let refs: Vec<&Problem> = problems.iter().filter(|p| p.reason.is_ref()).collect();
            match spec.first() {
                Some(first) => push("Accepted", false, first.reason.as_str(), join(&spec)),
                None => push("Accepted", true, "Accepted", "spec is valid".to_string()),
            }
            match refs.first() {
                Some(first) => push("ResolvedRefs", false, first.reason.as_str(), join(&refs)),
                None => push(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "all references resolved".to_string(),
                ),
            }
        }
    }
    match programmed {
        Some(Ok(())) => push(
            "Programmed",
            true,
            "Programmed",
            "EnvoyFilter, VirtualService, DestinationRules and rate-limit config applied"
                .to_string(),
        ),
        Some(Err(e)) => push("Programmed", false, "ApplyFailed", e),
        None => push(
            "Programmed",
            false,
            "Invalid",
            "nothing applied: the route is not accepted or its references are not resolved"
                .to_string(),
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Problem, Reason};

    fn problem(reason: Reason, path: &str) -> Problem {
        Problem {
            reason,
            path: path.into(),
            message: "bad".into(),
        }
    }

    #[test]
    fn spec_and_ref_problems_land_in_their_conditions() {
        let out = Err(vec![
            problem(Reason::SecretNotFound, "$.spec.auth.apiKeys.secretRef"),
            problem(Reason::InvalidSpec, "$.spec.rules[0].timeout"),
        ]);
        let c = conditions(&[], Some(3), &out, None, "T1");
        let find = |t: &str| c.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(
            (
                find("Accepted").status.as_str(),
                find("Accepted").reason.as_str()
            ),
            ("False", "InvalidSpec")
        );
        assert!(find("Accepted")
            .message
            .starts_with("$.spec.rules[0].timeout: "));
        assert_eq!(find("ResolvedRefs").reason, "SecretNotFound");
        assert_eq!(find("Programmed").status, "False");
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn transition_time_only_moves_when_the_status_does() {
        let refs = Err(vec![problem(
            Reason::SecretNotFound,
            "$.spec.auth.apiKeys.secretRef",
        )]);
        let first = conditions(&[], Some(1), &refs, None, "T1");
        let again = conditions(&first, Some(1), &refs, None, "T2");
        assert!(again.iter().all(|c| c.last_transition_time == "T1"));
        let accepted = first.iter().find(|c| c.type_ == "Accepted").unwrap();
        assert_eq!(
            accepted.status, "True",
            "a missing Secret does not make the spec invalid"
        );
        let programmed = conditions(&again, Some(1), &refs, Some(Err("boom".into())), "T3");
        let p = programmed.iter().find(|c| c.type_ == "Programmed").unwrap();
        assert_eq!(
            (p.reason.as_str(), p.last_transition_time.as_str()),
            ("ApplyFailed", "T1")
        );
    }
}
