//! The kube-runtime side: watch NexusRoutes, generated objects and Secrets; plan with
//! [`crate::plan`]; apply with server-side apply; write status and events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::crd::{NexusRoute, NexusRouteStatus};
use crate::input::secret_data;
use crate::model::{self, SecretData, SecretLookup};
use crate::plan;
use crate::render::{Settings, FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_ROUTE};
use crate::server::State;

pub const FINALIZER: &str = "nexus.datapunk.io/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// The API resources of every kind the controller writes.
pub fn api_resource(kind: &str) -> ApiResource {
    let (group, version, plural) = match kind {
        "EnvoyFilter" => ("networking.istio.io", "v1alpha3", "envoyfilters"),
        "VirtualService" => ("networking.istio.io", "v1beta1", "virtualservices"),
        "DestinationRule" => ("networking.istio.io", "v1beta1", "destinationrules"),
        _ => ("", "v1", "configmaps"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub struct Context {
    pub client: Client,
    pub routes: Store<NexusRoute>,
    pub secrets: Store<Secret>,
    pub settings: Settings,
    pub state: Arc<State>,
    pub recorder: Recorder,
    failures: Mutex<BTreeMap<(String, String), u32>>,
    groups: Mutex<BTreeMap<String, Arc<GroupSlot>>>,
    /// Route uid → what this process last applied for it.
    applied: Mutex<BTreeMap<String, AppliedSet>>,
}

/// A route's share of the last apply: its group, and its own objects as (kind, name).
#[derive(Clone, PartialEq)]
struct AppliedSet {
    group: String,
    objects: BTreeSet<(String, String)>,
}

/// Secrets from the reflector, with fresh reads for the route being reconciled.
struct Secrets<'a> {
    store: &'a Store<Secret>,
    fresh: BTreeMap<(String, String), Option<SecretData>>,
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

/// Server-side applies `obj`; returns its new resourceVersion.
async fn apply(client: &Client, obj: &Value) -> Result<String, kube::Error> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(kind));
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|o| o.metadata.resource_version.unwrap_or_default())
}

async fn delete_if_exists(
    client: &Client,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(kind));
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes this route's VirtualService/DestinationRules not in `keep`.
async fn prune_route_objects(
    client: &Client,
    ns: &str,
    route: &str,
    keep: &BTreeSet<(String, String)>,
) -> Result<(), kube::Error> {
    for kind in ["VirtualService", "DestinationRule"] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(kind));
        let lp = ListParams::default().match_any().labels(&format!(
            "{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_ROUTE}={route}"
        ));
        let list = match api.list_metadata(&lp).await {
            Ok(l) => l,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for o in list {
            let name = o.name_any();
            if !keep.contains(&(kind.to_string(), name.clone())) {
                delete_if_exists(client, kind, ns, &name).await?;
            }
        }
    }
    Ok(())
}

/// Group objects (EnvoyFilter/ConfigMap) in the namespace that list `uid` as an owner but
/// belong to another group than `current`: re-render those groups (or delete them if empty).
/// If the route's group changed since it was last programmed (`previous`, from its status),
/// re-render the group it left (or delete that group's objects if it is empty now).
async fn fix_other_groups(
    ctx: &Context,
    route: &NexusRoute,
    current: &str,
    previous: Option<&str>,
    all: &[&NexusRoute],
    secrets: &dyn SecretLookup,
) -> Result<(), Error> {
    let ns = route.namespace().unwrap_or_default();
    let uid = route.uid().unwrap_or_default();
    if let Some(name) = previous.filter(|p| *p != current) {
        let member = all.iter().find(|r| {
            r.metadata.deletion_timestamp.is_none()
                && r.uid() != Some(uid.clone())
                && model::group_key(r).name() == name
                && r.namespace().as_deref() == Some(ns.as_str())
        });
        let objects = match member {
            Some(m) => {
                plan::for_route(m, all, secrets, &ctx.settings)
                    .map_err(|e| Error::Other(e.to_string()))?
                    .group_objects
            }
            None => Vec::new(),
        };
        if objects.is_empty() {
            delete_if_exists(&ctx.client, "EnvoyFilter", &ns, name).await?;
            delete_if_exists(&ctx.client, "ConfigMap", &ns, &format!("{name}-ratelimit")).await?;
        }
        for o in &objects {
            apply(&ctx.client, o).await?;
        }
    }
    Ok(())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

async fn write_status(
    ctx: &Context,
    route: &NexusRoute,
    status: &NexusRouteStatus,
) -> Result<(), kube::Error> {
    let api: Api<NexusRoute> =
        Api::namespaced(ctx.client.clone(), &route.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        "kind": "NexusRoute",
        "status": status,
    });
    api.patch_status(
        &route.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish_transitions(
    ctx: &Context,
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
        let ev = KubeEvent {
            type_: if c.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if c.status == "True" {
                c.type_.clone()
            } else {
                c.reason.clone()
            },
            note: Some(truncate(&c.message, 1000)),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &route.object_ref(&())).await {
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

async fn apply_route(route: Arc<NexusRoute>, ctx: &Context) -> Result<Action, Error> {
    let ns = route.namespace().unwrap_or_default();
    let name = route.name_any();
    // Fresh read of the Secret this route references (the reflector may lag the event).
    let mut fresh = BTreeMap::new();
    if let Some(keys) = route.spec.auth.as_ref().and_then(|a| a.api_keys.as_ref()) {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let s = api.get_opt(&keys.secret_ref.name).await?;
        fresh.insert(
            (ns.clone(), keys.secret_ref.name.clone()),
            s.as_ref().map(secret_data),
        );
    }
    let secrets = Secrets {
        store: &ctx.secrets,
        fresh,
    };
    let snapshot = ctx.routes.state();
    let mut all: Vec<&NexusRoute> = snapshot
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| r.uid() != route.uid())
        .collect();
    all.push(&route);
    let p = plan::route_only(&route, &all, &secrets);

    let mut programmed = None;
    let mut apply_err = None;
    let result: Result<(), Error> = async {
        apply_group(ctx, &route, &secrets).await?;
        for o in &p.route_objects {
            apply(&ctx.client, o).await?;
            ctx.state.metrics.applies.fetch_add(1, Ordering::Relaxed);
        }
        let keep: BTreeSet<(String, String)> = p
            .route_objects
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or_default().to_string(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        // Stale objects can only exist if what we apply changed since this process last
        // applied this route (or we never did): only then list (from the watch cache).
        let uid = route.uid().unwrap_or_default();
        let now_applied = AppliedSet {
            group: p.group_name.clone(),
            objects: keep,
        };
        let known = ctx.applied.lock().ok().and_then(|a| a.get(&uid).cloned());
        if known.as_ref() != Some(&now_applied) {
            let keep = &now_applied.objects;
            prune_route_objects(&ctx.client, &ns, &name, keep).await?;
            let previous = route.status.as_ref().and_then(|s| s.envoy_filter.clone());
            fix_other_groups(
                ctx,
                &route,
                &p.group_name,
                previous.as_deref(),
                &all,
                &secrets,
            )
            .await?;
            if let Ok(mut a) = ctx.applied.lock() {
                a.insert(uid, now_applied);
            }
        }
        Ok(())
    }
    .await;
    let group_applied = result.is_ok();
    match (&p.outcome, result) {
        (Ok(_), Ok(())) => programmed = Some(Ok(())),
        (Ok(_), Err(e)) => {
            programmed = Some(Err(format!("applying generated objects failed: {e}")));
            apply_err = Some(e);
        }
        (Err(_), Err(e)) => apply_err = Some(e),
        (Err(_), Ok(())) => {}
    }
    let before = route.status.clone().unwrap_or_default();
    let status = NexusRouteStatus {
        observed_generation: route.metadata.generation,
        rules: p.outcome.as_ref().ok().map(|c| c.rule_count),
        envoy_filter: if group_applied {
            Some(p.group_name.clone())
        } else {
            before.envoy_filter.clone()
        },
        conditions: plan::conditions(
            &before.conditions,
            route.metadata.generation,
            &p.outcome,
            programmed,
            &now(),
        ),
    };
    if status != before {
        write_status(ctx, &route, &status).await?;
        publish_transitions(ctx, &route, &before, &status).await;
    }
    if let Some(e) = apply_err {
        return Err(e);
    }
    Ok(match &p.outcome {
        Ok(_) => Action::requeue(Duration::from_secs(300)),
        // Missing Secrets are watched, but poll too in case the watch lags.
        Err(problems) if problems.iter().any(|p| p.reason.is_ref()) => {
            Action::requeue(Duration::from_secs(30))
        }
        Err(_) => Action::await_change(),
    })
}

async fn cleanup_route(route: Arc<NexusRoute>, ctx: &Context) -> Result<Action, Error> {
    let ns = route.namespace().unwrap_or_default();
    let secrets = Secrets {
        store: &ctx.secrets,
        fresh: BTreeMap::new(),
    };
    apply_group(ctx, &route, &secrets).await?;
    prune_route_objects(&ctx.client, &ns, &route.name_any(), &BTreeSet::new()).await?;
    if let Ok(mut a) = ctx.applied.lock() {
        a.remove(&route.uid().unwrap_or_default());
    }
    Ok(Action::await_change())
}

/// Applies the EnvoyFilter and ConfigMap of `route`'s group, rendered from the routes the
/// controller knows now (with `route` as given). Concurrent reconciles of one group are
/// batched: whoever gets the group's lock renders from a fresh snapshot, which covers every
/// request made before it; requests it covers take its result instead of applying again.
async fn apply_group(
    ctx: &Context,
    route: &NexusRoute,
    secrets: &Secrets<'_>,
) -> Result<(), Error> {
    let ns = route.namespace().unwrap_or_default();
    let group = model::group_key(route).name();
    let slot = ctx
        .groups
        .lock()
        .map_err(|_| Error::Other("group table poisoned".into()))?
        .entry(format!("{ns}/{group}"))
        .or_default()
        .clone();
    let mine = slot.requested.fetch_add(1, Ordering::SeqCst) + 1;
    let mut done = slot.done.lock().await;
    if done.covered >= mine {
        return done.result.clone().map_err(Error::Other);
    }
    let covers = slot.requested.load(Ordering::SeqCst);
    let snapshot = ctx.routes.state();
    let mut all: Vec<&NexusRoute> = snapshot
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| r.uid() != route.uid())
        .collect();
    all.push(route);
    let result: Result<(), Error> = async {
        let p = plan::for_route(route, &all, secrets, &ctx.settings)
            .map_err(|e| Error::Other(e.to_string()))?;
        if p.group_objects.is_empty() {
            delete_if_exists(&ctx.client, "EnvoyFilter", &ns, &group).await?;
            delete_if_exists(&ctx.client, "ConfigMap", &ns, &format!("{group}-ratelimit")).await?;
            done.last_apply = None;
            return Ok(());
        }
        // Unchanged since our last apply, and nobody touched the objects since: skip the
        // (expensive, for a big group) no-op apply.
        let hash = {
            use sha2::{Digest, Sha256};
            let bytes = serde_json::to_vec(&p.group_objects).unwrap_or_default();
            Sha256::digest(&bytes).to_vec()
        };
        if let Some(last) = &done.last_apply {
            if last.hash == hash
                && live_versions(&ctx.client, &p.group_objects).await? == last.versions
            {
                return Ok(());
            }
        }
        let mut versions = Vec::new();
        for o in &p.group_objects {
            versions.push(apply(&ctx.client, o).await?);
            ctx.state.metrics.applies.fetch_add(1, Ordering::Relaxed);
        }
        done.last_apply = Some(LastApply { hash, versions });
        Ok(())
    }
    .await;
    if result.is_err() {
        done.last_apply = None;
    }
    done.covered = covers;
    done.result = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    result
}

/// What the last apply of a group did.
struct GroupDone {
    /// The highest request it covered.
    covered: u64,
    result: Result<(), String>,
    /// What it applied, if it succeeded.
    last_apply: Option<LastApply>,
}

/// The hash of the objects applied, with the resourceVersions the apply returned: unchanged
/// objects whose versions still match need no apply.
struct LastApply {
    hash: Vec<u8>,
    versions: Vec<String>,
}

/// The resourceVersions of these objects now ("" for a missing one).
async fn live_versions(client: &Client, objects: &[Value]) -> Result<Vec<String>, kube::Error> {
    let mut out = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(kind));
        let rv = match api.get_metadata_opt(name).await? {
            Some(m) => m.metadata.resource_version.unwrap_or_default(),
            None => String::new(),
        };
        out.push(rv);
    }
    Ok(out)
}

/// Batching state of one group's objects (see [`apply_group`]).
struct GroupSlot {
    requested: AtomicU64,
    done: tokio::sync::Mutex<GroupDone>,
}

impl Default for GroupSlot {
    fn default() -> Self {
        Self {
            requested: AtomicU64::new(0),
            done: tokio::sync::Mutex::new(GroupDone {
                covered: 0,
                result: Ok(()),
                last_apply: None,
            }),
        }
    }
}

async fn reconcile(route: Arc<NexusRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let ns = route.namespace().unwrap_or_default();
    let key = (ns.clone(), route.name_any());
    let span = tracing::info_span!("reconcile", trace_id = %crate::telemetry::new_trace_id(), route = %format!("{}/{}", key.0, key.1));
    let api: Api<NexusRoute> = Api::namespaced(ctx.client.clone(), &ns);
    let result = async {
        finalizer(&api, FINALIZER, route, |event| async {
            match event {
                Finalizer::Apply(r) => apply_route(r, &ctx).await,
                Finalizer::Cleanup(r) => cleanup_route(r, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(e.to_string()))
    }
    .instrument(span.clone())
    .await;
    let secs = start.elapsed().as_secs_f64();
    ctx.state.metrics.observe_reconcile(secs, result.is_ok());
    let _g = span.enter();
    match &result {
        Ok(_) => {
            tracing::info!(duration_ms = (secs * 1000.0) as u64, "reconciled");
            if let Ok(mut f) = ctx.failures.lock() {
                f.remove(&key);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, duration_ms = (secs * 1000.0) as u64, "reconcile failed")
        }
    }
    result
}

fn error_policy(route: Arc<NexusRoute>, _err: &Error, ctx: Arc<Context>) -> Action {
    let key = (route.namespace().unwrap_or_default(), route.name_any());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    // 1s, 2s, 4s ... capped at 5 minutes.
    Action::requeue(Duration::from_secs((1u64 << n.min(9)).min(300) / 2 + 1))
}

/// Routes whose `auth.apiKeys.secretRef` names this Secret.
fn routes_for_secret(store: &Store<NexusRoute>, secret: &Secret) -> Vec<ObjectRef<NexusRoute>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str())
                && r.spec
                    .auth
                    .as_ref()
                    .and_then(|a| a.api_keys.as_ref())
                    .map(|k| k.secret_ref.name.as_str())
                    == Some(name.as_str())
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Other routes sharing a host with `route` (the winner or loser of a conflict with it):
/// when it changes or goes away, they are re-checked.
fn routes_sharing_hosts(
    store: &Store<NexusRoute>,
    route: &NexusRoute,
) -> Vec<ObjectRef<NexusRoute>> {
    let hosts = |r: &NexusRoute| -> BTreeSet<String> {
        if r.spec.hosts.is_empty() {
            BTreeSet::from(["*".to_string()])
        } else {
            r.spec.hosts.iter().cloned().collect()
        }
    };
    let mine = hosts(route);
    store
        .state()
        .iter()
        .filter(|r| r.uid() != route.uid() && r.spec.target.kind == route.spec.target.kind)
        .filter(|r| !hosts(r).is_disjoint(&mine))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Runs the controller until the stream ends (it does not, short of a shutdown).
pub async fn run(
    client: Client,
    settings: Settings,
    state: Arc<State>,
    identity: String,
) -> anyhow::Result<()> {
    let routes: Api<NexusRoute> = Api::all(client.clone());
    let secrets_api: Api<Secret> = Api::all(client.clone());
    let (secret_store, writer) = reflector::store();
    let secret_reflector = reflector(
        writer,
        watcher(secrets_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(secret_reflector);

    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
    let controller = Controller::new(routes, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(32));
    let store = controller.store();
    let store_for_secrets = store.clone();
    let store_for_neighbours = store.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        routes: store.clone(),
        secrets: secret_store,
        settings,
        state: state.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_string(),
                instance: Some(identity),
            },
        ),
        failures: Mutex::new(BTreeMap::new()),
        groups: Mutex::new(BTreeMap::new()),
        applied: Mutex::new(BTreeMap::new()),
    });
    let vs = api_resource("VirtualService");
    let dr = api_resource("DestinationRule");
    let ef = api_resource("EnvoyFilter");
    // Group objects have many owners: wake one (by uid order), which re-renders the group.
    let first_owner = |obj: DynamicObject| {
        let ns = obj.namespace();
        let mut owners: Vec<_> = obj.owner_references().to_vec();
        owners.sort_by(|a, b| a.uid.cmp(&b.uid));
        owners
            .into_iter()
            .filter(|o| o.kind == "NexusRoute")
            .take(1)
            .map(move |o| {
                let r = ObjectRef::<NexusRoute>::new(&o.name);
                match &ns {
                    Some(ns) => r.within(ns),
                    None => r,
                }
            })
    };
    state.set("controller", true, "running");
    controller
        .owns_with(
            Api::<DynamicObject>::all_with(client.clone(), &vs),
            vs,
            managed.clone(),
        )
        .owns_with(
            Api::<DynamicObject>::all_with(client.clone(), &dr),
            dr,
            managed.clone(),
        )
        .watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &ef),
            ef,
            managed.clone(),
            first_owner,
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            managed,
            move |cm: ConfigMap| {
                let ns = cm.namespace();
                let mut owners: Vec<_> = cm.owner_references().to_vec();
                owners.sort_by(|a, b| a.uid.cmp(&b.uid));
                owners
                    .into_iter()
                    .filter(|o| o.kind == "NexusRoute")
                    .take(1)
                    .map(move |o| {
                        let r = ObjectRef::<NexusRoute>::new(&o.name);
                        match &ns {
                            Some(ns) => r.within(ns),
                            None => r,
                        }
                    })
            },
        )
        .watches(
            Api::<NexusRoute>::all(client.clone()),
            watcher::Config::default(),
            move |r: NexusRoute| routes_sharing_hosts(&store_for_neighbours, &r),
        )
        .watches(secrets_api, watcher::Config::default(), move |s: Secret| {
            routes_for_secret(&store_for_secrets, &s)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    Ok(())
}

/// How many of `routes` are `Programmed=True` for their current generation (benchmarks use
/// it to tell when everything is programmed).
pub fn programmed_count(routes: &[NexusRoute]) -> usize {
    routes
        .iter()
        .filter(|r| {
            r.status
                .as_ref()
                .map(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Programmed" && c.status == "True")
                        && s.observed_generation == r.metadata.generation
                })
                .unwrap_or(false)
        })
        .count()
}
