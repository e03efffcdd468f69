//! The kube-runtime side: watch NexusRoutes, generated objects and Secrets; plan with
//! [`crate::plan`]; apply with server-side apply; write status with [`crate::status`].
//!
//! [`reconcile`] is one route's reconcile, [`groups`] batches the applies of objects many
//! routes share, [`apply`] holds the API writes, [`triggers`] decides what wakes a reconcile.

mod apply;
mod groups;
mod reconcile;
pub mod scope;
pub mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use crate::crd::NexusRoute;
use crate::objects::Kind;
use crate::plan::Compiler;
use crate::policy::WatchScope;
use crate::render::{Settings, FIELD_MANAGER, LABEL_MANAGED_BY};
use crate::server::State;
use nexus_events::command::ReconcileArgs;
use nexus_events::services::Reconcile;

pub use reconcile::{reconcile, Secrets, FINALIZER};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// The API resource of a kind the controller writes, by name (tests and benchmarks).
pub fn api_resource(kind: &str) -> kube::core::ApiResource {
    match Kind::parse(kind) {
        Some(k) => k.api_resource(),
        None => panic!("Nexus writes no {kind}"),
    }
}

/// Everything a reconcile reads and the bookkeeping reconciles share.
pub struct Context {
    pub client: Client,
    pub routes: Store<NexusRoute>,
    pub secrets: Store<Secret>,
    pub settings: Settings,
    pub state: Arc<State>,
    pub recorder: Recorder,
    /// Route accepted / programmed / rejected / deleted go to the event bus (a disabled
    /// handle drops them).
    pub events: nexus_events::Events,
    compiler: Compiler,
    groups: groups::Groups,
    failures: Mutex<BTreeMap<(String, String), u32>>,
    /// Route uid → what this process last applied for it.
    applied: Mutex<BTreeMap<String, AppliedSet>>,
}

/// A route's share of the last apply: its group, and its own objects.
#[derive(Clone, PartialEq)]
struct AppliedSet {
    group: String,
    objects: BTreeSet<(Kind, String)>,
}

impl Context {
    pub fn new(
        client: Client,
        routes: Store<NexusRoute>,
        secrets: Store<Secret>,
        settings: Settings,
        state: Arc<State>,
        identity: String,
    ) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: Some(identity),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            routes,
            secrets,
            settings,
            state,
            events: nexus_events::Events::disabled(),
            compiler: Compiler::default(),
            groups: groups::Groups::default(),
            failures: Mutex::default(),
            applied: Mutex::default(),
        }
    }

    /// Publishes route events through `events`.
    pub fn with_events(mut self, events: nexus_events::Events) -> Context {
        self.events = events;
        self
    }

    fn last_applied(&self, uid: &str) -> Option<AppliedSet> {
        self.applied.lock().ok()?.get(uid).cloned()
    }

    fn remember_applied(&self, uid: String, set: AppliedSet) {
        if let Ok(mut a) = self.applied.lock() {
            a.insert(uid, set);
        }
    }

    fn forget_route(&self, uid: &str) {
        if let Ok(mut a) = self.applied.lock() {
            a.remove(uid);
        }
        self.compiler.forget(uid);
    }

    fn forget_failures(&self, key: &(String, String)) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// Retry delay after the n-th failure in a row: 1 s, 2 s, 3 s, 5 s, 9 s … capped at
    /// 257 s (2^(n-1)/2 + 1, n capped at 9).
    fn backoff(&self, key: (String, String)) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key).or_insert(0);
                *n += 1;
                *n
            })
            .unwrap_or(1);
        Duration::from_secs((1u64 << n.min(9)) / 2 + 1)
    }
}

fn error_policy(route: Arc<NexusRoute>, _err: &Error, ctx: Arc<Context>) -> Action {
    let key = (route.namespace().unwrap_or_default(), route.name_any());
    Action::requeue(ctx.backoff(key))
}

/// `route.reconcile` commands from the event bus, for the leader's controller.
pub struct ReconcileCommands(futures::channel::mpsc::UnboundedReceiver<ReconcileArgs>);

/// The bus's `route.reconcile` handler (every replica has one) and what the leader's controller
/// reads from it. A replica that is not the leader answers "not yet" (the command is requeued
/// for another replica), so the command is carried out where routes are reconciled.
pub fn reconcile_commands(
    is_leader: Arc<dyn Fn() -> bool + Send + Sync>,
) -> (Reconcile, ReconcileCommands) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let handler: Reconcile = Arc::new(move |args: ReconcileArgs| {
        if !is_leader() {
            return Err("this replica is not the leader; requeued for the one that is".into());
        }
        let what = match (&args.namespace, &args.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (Some(ns), None) => format!("every route in {ns}"),
            _ => "every route".to_string(),
        };
        tx.unbounded_send(args)
            .map(|()| format!("{what}: reconcile queued"))
            .map_err(|_| "the controller is not running".to_string())
    });
    (handler, ReconcileCommands(rx))
}

/// Runs the controller until the stream ends (it does not, short of a shutdown).
pub async fn run(
    client: Client,
    settings: Settings,
    state: Arc<State>,
    identity: String,
    events: nexus_events::Events,
    commands: ReconcileCommands,
) -> anyhow::Result<()> {
    let scope = settings.allowed_routes.scope.clone();
    let (route_store, route_writer) = reflector::store();
    let routes = reflector(
        route_writer,
        scope.watch::<NexusRoute>(&client, &(), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(triggers::plan_inputs, Default::default());
    let (secret_store, secret_writer) = reflector::store();
    let secret_reflector = reflector(
        secret_writer,
        scope.watch::<Secret>(&client, &(), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(secret_reflector);
    let ctx = Context::new(
        client.clone(),
        route_store.clone(),
        secret_store,
        settings,
        state.clone(),
        identity,
    );
    let ctx = Arc::new(ctx.with_events(events));
    let enforcer = crate::enforcement::Enforcer {
        client: client.clone(),
        routes: ctx.routes.clone(),
        reports: state.reports.clone(),
        interval: Duration::from_millis(u64::from(ctx.settings.report_interval_ms.max(100))),
    };
    let enforcement = tokio::spawn(enforcer.run());
    let controller = Controller::for_stream(routes, route_store)
        .with_config(controller::Config::default().concurrency(32));
    let controller = watch_generated(controller, &client, &ctx.routes, &ctx.settings);
    let controller = watch_inputs(controller, &client, &ctx.routes, &scope);
    let named = ctx.routes.clone();
    let controller = controller.reconcile_on(
        commands
            .0
            .flat_map(move |args| futures::stream::iter(triggers::routes_named(&named, &args))),
    );
    state.set("controller", true, "running");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    enforcement.abort();
    Ok(())
}

/// Generated objects changed or deleted by someone else wake a route that re-applies
/// them: the owner of a route's own objects, a member of a group's.
fn watch_generated(
    c: Controller<NexusRoute>,
    client: &Client,
    store: &Store<NexusRoute>,
    settings: &Settings,
) -> Controller<NexusRoute> {
    let scope = &settings.allowed_routes.scope;
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
    let changes = |scope: &WatchScope, ar: &ApiResource| {
        triggers::foreign_changes(
            scope
                .watch::<DynamicObject>(client, ar, managed.clone())
                .default_backoff(),
        )
    };
    let mut c = c;
    for kind in [Kind::VirtualService, Kind::DestinationRule] {
        let ar = kind.api_resource();
        c = c.watches_stream_with(changes(scope, &ar), |o| triggers::owner_of(&o), ar);
    }
    let ar = Kind::EnvoyFilter.api_resource();
    let members = store.clone();
    c = c.watches_stream_with(
        changes(&scope.for_envoy_filters(), &ar),
        move |o| triggers::group_member_of(&members, &o),
        ar,
    );
    let store = store.clone();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &settings.controller_namespace);
    let config_map_changes =
        triggers::foreign_changes(watcher(config_maps, managed.clone()).default_backoff());
    c.watches_stream(config_map_changes, move |cm: ConfigMap| {
        triggers::group_member_of(&store, &cm)
    })
}

/// Routes sharing a host with a changed route, and routes referencing a changed Secret.
fn watch_inputs(
    c: Controller<NexusRoute>,
    client: &Client,
    store: &Store<NexusRoute>,
    scope: &WatchScope,
) -> Controller<NexusRoute> {
    let neighbours = store.clone();
    let route_changes = triggers::plan_changes(
        scope
            .watch::<NexusRoute>(client, &(), watcher::Config::default())
            .default_backoff(),
    );
    let for_secrets = store.clone();
    let secret_changes = scope
        .watch::<Secret>(client, &(), watcher::Config::default())
        .default_backoff()
        .touched_objects();
    c.watches_stream(route_changes, move |r: NexusRoute| {
        triggers::routes_sharing_hosts(&neighbours, &r)
    })
    .watches_stream(secret_changes, move |s: Secret| {
        triggers::routes_for_secret(&for_secrets, &s)
    })
}

/// How many of `routes` are `Programmed=True` for their current generation.
pub use crate::status::programmed_count;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn only_the_leader_takes_reconcile_commands() {
        let leader = Arc::new(AtomicBool::new(false));
        let is_leader = leader.clone();
        let (handler, mut commands) =
            reconcile_commands(Arc::new(move || is_leader.load(Ordering::Relaxed)));
        let args = ReconcileArgs {
            namespace: Some("shop".into()),
            name: Some("orders".into()),
        };
        let refused = handler(args.clone()).unwrap_err();
        assert!(refused.contains("not the leader"), "{refused}");
        leader.store(true, Ordering::Relaxed);
        assert_eq!(
            handler(args.clone()).unwrap(),
            "shop/orders: reconcile queued"
        );
        assert_eq!(commands.0.try_recv().unwrap(), args);
        drop(commands);
        let stopped = handler(ReconcileArgs::default()).unwrap_err();
        assert!(stopped.contains("not running"), "{stopped}");
    }
}
