//! A NexusRoute's status: its conditions (pure, named reasons), written with server-side
//! apply under the controller's field manager, and a Kubernetes Event per transition.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{Condition, NexusRoute, NexusRouteStatus};
use crate::model::{CompiledRoute, Problem};
use crate::render::FIELD_MANAGER;

/// What the apply step did for a route: `None` when nothing was applied (not accepted),
/// `Some(Ok)` when every object applied, `Some(Err(msg))` otherwise.
pub type Programmed = Option<Result<(), String>>;

/// The route's new status. `group`: the group it was rendered into, when that apply
/// succeeded (else the previous value stays).
pub fn compute(
    route: &NexusRoute,
    outcome: &Result<CompiledRoute, Vec<Problem>>,
    programmed: Programmed,
    group: Option<String>,
    now: &str,
) -> NexusRouteStatus {
    let before = route.status.clone().unwrap_or_default();
    let generation = route.metadata.generation;
    // `Enforced` is the enforcement task's (crate::enforcement): kept while the route is
    // programmed, gone when nothing of this generation was applied.
    let programmed_ok = matches!(programmed, Some(Ok(())));
    let enforced = before
        .conditions
        .iter()
        .find(|c| c.type_ == "Enforced" && programmed_ok)
        .cloned();
    let mut conditions = conditions(&before.conditions, generation, outcome, programmed, now);
    conditions.extend(enforced);
    NexusRouteStatus {
        observed_generation: generation,
        rules: outcome.as_ref().ok().map(|c| c.rule_count),
        envoy_filter: group.or(before.envoy_filter),
        enforced: before.enforced.filter(|_| programmed_ok),
        conditions,
    }
}

/// Status conditions for an outcome. Keeps `lastTransitionTime` of conditions whose status
/// did not change.
pub fn conditions(
    previous: &[Condition],
    generation: Option<i64>,
    outcome: &Result<CompiledRoute, Vec<Problem>>,
    programmed: Programmed,
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
    let (accepted, resolved) = accepted_and_resolved(outcome);
    push("Accepted", accepted.0, accepted.1, accepted.2);
    push("ResolvedRefs", resolved.0, resolved.1, resolved.2);
    let (ok, reason, message) = programmed_condition(programmed);
    push("Programmed", ok, reason, message);
    out
}

type Verdict<'a> = (bool, &'a str, String);

/// `Accepted` (spec problems) and `ResolvedRefs` (reference problems) of an outcome.
fn accepted_and_resolved(
    outcome: &Result<CompiledRoute, Vec<Problem>>,
) -> (Verdict<'_>, Verdict<'_>) {
    let resolved_ok = (true, "ResolvedRefs", "all references resolved".to_string());
    let problems = match outcome {
        Ok(c) => {
            let accepted = (true, "Accepted", format!("{} rules accepted", c.rule_count));
            return (accepted, resolved_ok);
        }
        Err(problems) => problems,
    };
    let join = |ps: &[&Problem]| {
        ps.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let spec: Vec<&Problem> = problems.iter().filter(|p| !p.reason.is_ref()).collect();
    let refs: Vec<&Problem> = problems.iter().filter(|p| p.reason.is_ref()).collect();
    let accepted = match spec.first() {
        Some(first) => (false, first.reason.as_str(), join(&spec)),
        None => (true, "Accepted", "spec is valid".to_string()),
    };
    let resolved = match refs.first() {
        Some(first) => (false, first.reason.as_str(), join(&refs)),
        None => resolved_ok,
    };
    (accepted, resolved)
}

fn programmed_condition(programmed: Programmed) -> Verdict<'static> {
    match programmed {
        Some(Ok(())) => (
            true,
            "Programmed",
            "EnvoyFilter, VirtualService, DestinationRules and rate-limit config applied"
                .to_string(),
        ),
        Some(Err(e)) => (false, "ApplyFailed", e),
        None => (
            false,
            "Invalid",
            "nothing applied: the route is not accepted or its references are not resolved"
                .to_string(),
        ),
    }
}

/// A condition's time stamp: RFC 3339, now.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Writes `status` with server-side apply (the controller owns `.status` alone).
pub async fn write(
    client: &Client,
    route: &NexusRoute,
    status: &NexusRouteStatus,
) -> Result<(), kube::Error> {
    apply_status(client, route, status, None).await
}

/// [`write`], only if the route is still at the resourceVersion of `route` (409 otherwise).
pub async fn write_over(
    client: &Client,
    route: &NexusRoute,
    status: &NexusRouteStatus,
) -> Result<(), kube::Error> {
    apply_status(client, route, status, route.resource_version()).await
}

async fn apply_status(
    client: &Client,
    route: &NexusRoute,
    status: &NexusRouteStatus,
    resource_version: Option<String>,
) -> Result<(), kube::Error> {
    let api: Api<NexusRoute> =
        Api::namespaced(client.clone(), &route.namespace().unwrap_or_default());
    let mut patch = json!({
        "apiVersion": crate::crd::api_version(),
        "kind": "NexusRoute",
        "status": status,
    });
    if let Some(rv) = resource_version {
        // A precondition of the apply: the API server answers 409 if the object moved on.
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&route.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// One Kubernetes Event per condition whose status or reason changed: `Normal` named after
/// the condition when it became true, `Warning` named after the reason otherwise. A first
/// `ResolvedRefs=True` says nothing new and is not published.
pub async fn publish_transitions(
    recorder: &Recorder,
    route: &NexusRoute,
    before: &NexusRouteStatus,
    after: &NexusRouteStatus,
) {
    for c in &after.conditions {
        let prev = before.conditions.iter().find(|p| p.type_ == c.type_);
        if prev.map(|p| (&p.status, &p.reason)) == Some((&c.status, &c.reason)) {
            continue;
        }
        if c.type_ == "ResolvedRefs" && c.status == "True" && prev.is_none() {
            continue;
        }
        let (type_, reason) = match c.status.as_str() {
            "True" => (EventType::Normal, c.type_.clone()),
            _ => (EventType::Warning, c.reason.clone()),
        };
        let ev = KubeEvent {
            type_,
            reason,
            note: Some(truncate(&c.message, 1000)),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &route.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing event failed");
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The event-bus events of a status change (`nexus.route.programmed` when a generation became
/// programmed, `nexus.route.rejected` with the reason when one became not accepted): one per
/// transition, never one per reconcile.
pub fn bus_events(
    namespace: &str,
    name: &str,
    before: &NexusRouteStatus,
    after: &NexusRouteStatus,
) -> Vec<nexus_events::Event> {
    use nexus_events::{Event, RouteStage};
    let find = |s: &NexusRouteStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let generation = after.observed_generation;
    let new_generation = before.observed_generation != generation;
    let mut out = Vec::new();
    let programmed = find(after, "Programmed").filter(|c| c.0 == "True");
    if programmed.is_some() && (new_generation || find(before, "Programmed") != programmed) {
        out.push(Event::route(
            RouteStage::Programmed,
            namespace,
            name,
            generation,
        ));
    }
    let refused = find(after, "Accepted").filter(|c| c.0 == "False");
    if let Some((_, reason, message)) = &refused {
        if new_generation || find(before, "Accepted") != refused {
            let why = format!("{reason}: {message}");
            out.push(Event::route_rejected(namespace, name, generation, &why));
        }
    }
    out
}

/// How many of `routes` have `Programmed=True` in a status written for their current
/// generation (benchmarks and tests use it to tell when everything is programmed).
pub fn programmed_count(routes: &[NexusRoute]) -> usize {
    routes
        .iter()
        .filter(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
                    && s.observed_generation == r.metadata.generation
            })
        })
        .count()
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

    #[test]
    fn the_bus_hears_each_transition_once() {
        let status = |generation, programmed: Option<Result<(), String>>| NexusRouteStatus {
            observed_generation: Some(generation),
            conditions: conditions(&[], Some(generation), &Err(vec![]), programmed, "T"),
            ..Default::default()
        };
        let kinds = |events: Vec<nexus_events::Event>| -> Vec<String> {
            events.iter().map(|e| e.routing_key()).collect()
        };
        let none = NexusRouteStatus::default();
        let first = status(1, Some(Ok(())));
        assert_eq!(
            kinds(bus_events("ns", "r", &none, &first)),
            ["nexus.route.programmed.ns.r"]
        );
        assert!(
            bus_events("ns", "r", &first, &first).is_empty(),
            "no transition, no event"
        );
        let changed = status(2, Some(Ok(())));
        assert_eq!(
            kinds(bus_events("ns", "r", &first, &changed)).len(),
            1,
            "a new generation is news"
        );
        let refused = NexusRouteStatus {
            observed_generation: Some(3),
            conditions: conditions(
                &[],
                Some(3),
                &Err(vec![problem(Reason::InvalidSpec, "$.spec.rules")]),
                None,
                "T",
            ),
            ..Default::default()
        };
        let events = bus_events("ns", "r", &changed, &refused);
        assert_eq!(kinds(events.clone()), ["nexus.route.rejected.ns.r"]);
        assert!(events[0].data()["reason"]
            .as_str()
            .unwrap()
            .starts_with("InvalidSpec: $.spec.rules"));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
