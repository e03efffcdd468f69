//! One reconcile of one NexusRoute: finalizer, plan (once, from one snapshot), apply, status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use serde_json::json;
use tracing::Instrument;

use super::apply::{apply, prune_route_objects};
use super::groups::{apply_group, apply_now, Ticket};
use super::{AppliedSet, Context, Error};
use nexus_events::{Event, RouteStage};

use crate::crd::NexusRoute;
use crate::input::secret_data;
use crate::model::{self, SecretData, SecretLookup};
use crate::plan::{self, GroupPlan, Plan, Snapshot};
use crate::status;

pub const FINALIZER: &str = "nexus.datapunk.io/cleanup";

/// Secrets from the reflector, with fresh reads for the route being reconciled.
pub struct Secrets<'a> {
    store: &'a Store<Secret>,
    fresh: BTreeMap<(String, String), Option<SecretData>>,
}

impl<'a> Secrets<'a> {
    /// What the reflector holds, nothing read afresh.
    pub fn from_store(store: &'a Store<Secret>) -> Self {
        Self {
            store,
            fresh: BTreeMap::new(),
        }
    }
}

impl SecretLookup for Secrets<'_> {
    fn get(&self, namespace: &str, name: &str) -> Option<SecretData> {
        if let Some(v) = self.fresh.get(&(namespace.to_string(), name.to_string())) {
            return v.clone();
        }
        self.store
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| secret_data(&s))
    }
}

/// Reads the Secret the route references afresh: the reflector may lag the event that
/// woke this reconcile.
async fn secrets_for<'a>(ctx: &'a Context, route: &NexusRoute) -> Result<Secrets<'a>, Error> {
    let mut fresh = BTreeMap::new();
    if let Some(keys) = route.spec.auth.as_ref().and_then(|a| a.api_keys.as_ref()) {
        let ns = route.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let s = api.get_opt(&keys.secret_ref.name).await?;
        fresh.insert(
            (ns, keys.secret_ref.name.clone()),
            s.as_ref().map(secret_data),
        );
    }
    Ok(Secrets {
        store: &ctx.secrets,
        fresh,
    })
}

pub async fn reconcile(route: Arc<NexusRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let key = (route.namespace().unwrap_or_default(), route.name_any());
    let span = tracing::info_span!("reconcile", trace_id = %crate::telemetry::new_trace_id(), route = %format!("{}/{}", key.0, key.1));
    let result = run_finalized(route, &ctx).instrument(span.clone()).await;
    let secs = start.elapsed().as_secs_f64();
    ctx.state.metrics.observe_reconcile(secs, result.is_ok());
    let _g = span.enter();
    let duration_ms = (secs * 1000.0) as u64;
    match &result {
        Ok(_) => {
            tracing::info!(duration_ms, "reconciled");
            ctx.forget_failures(&key);
        }
        Err(e) => tracing::warn!(error = %e, duration_ms, "reconcile failed"),
    }
    result
}

/// The finalizer keeps a route until its share of its group is removed. It is added in
/// the same reconcile that programs the route (not by a reconcile of its own).
async fn run_finalized(route: Arc<NexusRoute>, ctx: &Context) -> Result<Action, Error> {
    let has_finalizer = route.finalizers().iter().any(|f| f == FINALIZER);
    if route.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            cleanup_route(&route, ctx).await?;
            remove_finalizer(ctx, &route).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        add_finalizer(ctx, &route).await?;
    }
    apply_route(route, ctx).await
}

/// JSON patches with a `test` of the current list, so a concurrent change of the
/// finalizers fails the patch instead of being overwritten.
async fn patch_finalizers(
    ctx: &Context,
    route: &NexusRoute,
    ops: serde_json::Value,
) -> Result<(), Error> {
    let api: Api<NexusRoute> =
        Api::namespaced(ctx.client.clone(), &route.namespace().unwrap_or_default());
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| Error::Other(e.to_string()))?;
    api.patch(
        &route.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

async fn add_finalizer(ctx: &Context, route: &NexusRoute) -> Result<(), Error> {
    let ops = match &route.metadata.finalizers {
        None => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ]),
        Some(list) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": list },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ]),
    };
    patch_finalizers(ctx, route, ops).await
}

async fn remove_finalizer(ctx: &Context, route: &NexusRoute) -> Result<(), Error> {
    let list = route.finalizers();
    let Some(index) = list.iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let ops = json!([
        { "op": "test", "path": "/metadata/finalizers", "value": list },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
    ]);
    patch_finalizers(ctx, route, ops).await
}

/// A ticket for the route's group, then the plan from a snapshot taken after it.
fn plan_route(
    ctx: &Context,
    route: &NexusRoute,
    secrets: &Secrets,
    previous_group: Option<&str>,
) -> Result<(Ticket, Plan), Error> {
    let key = model::group_key(route);
    let ticket = ctx.groups.ticket(&key.namespace, &key.name())?;
    Ok((ticket, plan_now(ctx, route, secrets, previous_group)))
}

/// The route's plan from the routes the controller knows now.
fn plan_now(
    ctx: &Context,
    route: &NexusRoute,
    secrets: &Secrets,
    previous_group: Option<&str>,
) -> Plan {
    let started = Instant::now();
    let store = ctx.routes.state();
    let mut routes: Vec<&NexusRoute> = store
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| r.uid() != route.uid())
        .collect();
    routes.push(route);
    let snapshot = Snapshot::new(routes, &ctx.settings.allowed_routes);
    let plan = plan::reconcile(
        route,
        &snapshot,
        &ctx.compiler,
        secrets,
        previous_group,
        &ctx.settings,
    );
    let micros = started.elapsed().as_micros() as u64;
    ctx.state
        .metrics
        .plan_micros
        .fetch_add(micros, Ordering::Relaxed);
    plan
}

async fn apply_route(route: Arc<NexusRoute>, ctx: &Context) -> Result<Action, Error> {
    let secrets = secrets_for(ctx, &route).await?;
    let before = route.status.clone().unwrap_or_default();
    let previous = before.envoy_filter.as_deref();
    let (ticket, plan) = plan_route(ctx, &route, &secrets, previous)?;
    let replan = || plan_now(ctx, &route, &secrets, previous).group;
    let applied = apply_plan(ctx, &route, &plan, ticket, replan).await;
    let programmed = match (plan.outcome.is_ok(), &applied) {
        (true, Ok(())) => Some(Ok(())),
        (true, Err(e)) => Some(Err(format!("applying generated objects failed: {e}"))),
        (false, _) => None,
    };
    let group = applied.is_ok().then(|| plan.group.name.clone());
    let status = status::compute(&route, &plan.outcome, programmed, group, &status::now());
    if status != before {
        status::write(&ctx.client, &route, &status).await?;
        // A newly programmed generation: which proxies run it is worth asking now.
        ctx.state.reports.wake();
        status::publish_transitions(&ctx.recorder, &route, &before, &status).await;
        let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
        announce(ctx, status::bus_events(&ns, &name, &before, &status));
    }
    applied?;
    Ok(requeue(&plan))
}

fn requeue(plan: &Plan) -> Action {
    match plan.outcome.as_ref() {
        Ok(_) => Action::requeue(Duration::from_secs(300)),
        // Missing Secrets are watched, but poll too in case the watch lags.
        Err(problems) if problems.iter().any(|p| p.reason.is_ref()) => {
            Action::requeue(Duration::from_secs(30))
        }
        Err(_) => Action::await_change(),
    }
}

/// Applies the group (planned again by `replan` if this reconcile is the one to apply it),
/// then the route's own objects. Stale objects can only exist if what is applied changed
/// since this process last applied this route (or it never did): only then does it list
/// (to prune) and fix the group the route left.
async fn apply_plan(
    ctx: &Context,
    route: &NexusRoute,
    plan: &Plan,
    ticket: Ticket,
    replan: impl FnOnce() -> GroupPlan,
) -> Result<(), Error> {
    apply_group(ctx, ticket, replan).await?;
    for o in &plan.route_objects {
        apply(ctx, o).await?;
    }
    let now_applied = AppliedSet {
        group: plan.group.name.clone(),
        objects: plan
            .route_objects
            .iter()
            .map(|o| (o.kind(), o.name().to_string()))
            .collect(),
    };
    let uid = route.uid().unwrap_or_default();
    if ctx.last_applied(&uid).as_ref() != Some(&now_applied) {
        let ns = route.namespace().unwrap_or_default();
        prune_route_objects(ctx, &ns, &route.name_any(), &now_applied.objects).await?;
        if let Some(left) = &plan.left_group {
            apply_now(ctx, left).await?;
        }
        ctx.remember_applied(uid, now_applied);
    }
    Ok(())
}

/// Re-renders the route's group without it and removes its own objects.
async fn cleanup_route(route: &NexusRoute, ctx: &Context) -> Result<(), Error> {
    let secrets = Secrets {
        store: &ctx.secrets,
        fresh: BTreeMap::new(),
    };
    let (ticket, _) = plan_route(ctx, route, &secrets, None)?;
    apply_group(ctx, ticket, || plan_now(ctx, route, &secrets, None).group).await?;
    let ns = route.namespace().unwrap_or_default();
    prune_route_objects(ctx, &ns, &route.name_any(), &BTreeSet::new()).await?;
    ctx.forget_route(&route.uid().unwrap_or_default());
    let generation = route.metadata.generation;
    let deleted = Event::route(RouteStage::Deleted, &ns, &route.name_any(), generation);
    announce(ctx, vec![deleted]);
    Ok(())
}

/// Configuration changes applied: audit records (when this replica serves the audit service)
/// and events on the bus. Neither waits.
fn announce(ctx: &Context, events: Vec<Event>) {
    if let Some(audit) = ctx.state.audit.get() {
        let records = events
            .iter()
            .map(|e| crate::audit::config_record(e, "nexus-controller"));
        audit.record(records.collect());
    }
    for event in events {
        ctx.events.publish(event);
    }
}
