//! Reconcile latency against a real kube-apiserver (`nexus_toolenv::kube`; `cargo xtask setup`
//! provisions it), with the
//! controller running in-process:
//!
//!   cargo run --release -p nexus-controller --example reconcile_latency [-- N]
//!
//! Prints: create → `Programmed=True` for 1 route; for N routes (default 500) merged into one
//! gateway EnvoyFilter; for N routes on N separate sidecar selectors; plus the controller's
//! own reconcile count and mean duration. No assertions: numbers depend on the machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use nexus_controller::controller::{self, api_resource, programmed_count};
use nexus_controller::crd::NexusRoute;
use nexus_controller::render::Settings;
use nexus_controller::server::State;
use serde::Deserialize;
use serde_json::json;

fn route(ns: &str, i: usize, shared: bool) -> NexusRoute {
    let (kind, selector) = if shared {
        ("Gateway", json!({ "istio": "ingressgateway" }))
    } else {
        ("Sidecar", json!({ "app": format!("svc-{i}") }))
    };
    serde_json::from_value(json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1",
        "kind": "NexusRoute",
        "metadata": { "name": format!("r{i}"), "namespace": ns },
        "spec": {
            "target": { "kind": kind, "selector": selector },
            "gateways": ["istio-system/nexus-gateway"],
            "hosts": [format!("r{i}.{ns}.example.com")],
            "rules": [
                { "name": "read", "match": { "path": { "prefix": "/data/" }, "methods": ["GET"] },
                  "category": "data_operations", "rateLimits": [{ "by": "Client", "requests": 10, "per": "Second" }] },
                { "name": "infer", "match": { "path": { "prefix": "/ai/" } }, "category": "ai_inference" },
            ],
        },
    }))
    .unwrap()
}

async fn wait_programmed(api: &Api<NexusRoute>, n: usize) {
    loop {
        let list = api.list(&ListParams::default()).await.unwrap();
        if programmed_count(&list.items) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reconciles so far, their summed seconds, and the seconds spent planning and rendering.
struct Totals {
    reconciles: f64,
    seconds: f64,
    plan: f64,
    render: f64,
    applies: f64,
}

fn totals(state: &State) -> Totals {
    let text = state.metrics.render(true);
    let get = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim().parse::<f64>().unwrap_or(0.0))
            })
            .unwrap_or(0.0)
    };
    Totals {
        reconciles: get("nexus_controller_reconcile_duration_seconds_count "),
        seconds: get("nexus_controller_reconcile_duration_seconds_sum "),
        plan: get("nexus_controller_plan_seconds_total "),
        render: get("nexus_controller_render_seconds_total "),
        applies: get("nexus_controller_applies_total "),
    }
}

fn metrics(state: &State) -> (u64, f64) {
    let t = totals(state);
    let mean = if t.reconciles > 0.0 {
        t.seconds / t.reconciles
    } else {
        0.0
    };
    (t.reconciles as u64, mean)
}

/// Where the reconciles between two readings spent their time.
fn breakdown(before: &Totals, after: &Totals, routes: usize) {
    let n = after.reconciles - before.reconciles;
    let total = after.seconds - before.seconds;
    let plan = after.plan - before.plan;
    let render = after.render - before.render;
    println!(
        "  {n} reconciles ({:.2} per route), mean {:.1} ms: planning {:.1} ms, rendering {:.1} ms, \
         API round trips and waiting for the group's apply {:.1} ms; {} objects applied",
        n / routes as f64,
        1000.0 * total / n.max(1.0),
        1000.0 * plan / n.max(1.0),
        1000.0 * render / n.max(1.0),
        1000.0 * (total - plan - render) / n.max(1.0),
        after.applies - before.applies,
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let server = nexus_toolenv::kube::ApiServer::start(dir.path())
        .unwrap_or_else(|e| panic!("starting etcd + kube-apiserver: {e:#}"));
    let result = tokio::spawn(run(server.kubeconfig.clone(), root, n)).await;
    drop(server);
    result.unwrap();
}

async fn run(kubeconfig: PathBuf, root: PathBuf, n: usize) {
    let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(cfg).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in [
        root.join("../charts/nexus/crds/nexusroutes.yaml"),
        root.join("tests/fixtures/istio-crds.yaml"),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let docs: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| CustomResourceDefinition::deserialize(doc).unwrap())
            .collect();
        for crd in docs {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["nexus-system", "istio-system", "one", "shared", "separate"] {
        let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
        namespaces.create(&PostParams::default(), &n).await.unwrap();
    }
    for kind in ["EnvoyFilter", "VirtualService", "DestinationRule"] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
        while api.list(&ListParams::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let routes_all: Api<NexusRoute> = Api::all(client.clone());
    while routes_all.list(&ListParams::default()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settings = Settings {
        controller_namespace: "nexus-system".into(),
        module_port: 8082,
        modules: Settings::load_modules(&root.join("tests/fixtures/modules")).unwrap(),
        allowed_routes: Default::default(),
        report_interval_ms: nexus_config::report::DEFAULT_INTERVAL_MS,
        access_log_port: None,
        audit_port: None,
        audit_on_unavailable: Default::default(),
    };
    let state = Arc::new(State::new(None));
    let (_, commands) = controller::reconcile_commands(Arc::new(|| true));
    tokio::spawn(controller::run(
        client.clone(),
        settings,
        state.clone(),
        "bench".into(),
        nexus_events::Events::disabled(),
        commands,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1 route.
    let api: Api<NexusRoute> = Api::namespaced(client.clone(), "one");
    let t = Instant::now();
    api.create(&PostParams::default(), &route("one", 0, false))
        .await
        .unwrap();
    wait_programmed(&api, 1).await;
    println!("1 route: create -> Programmed=True in {:?}", t.elapsed());
    let (c0, mean0) = metrics(&state);
    println!(
        "  controller: {c0} reconciles so far, mean {:.1} ms",
        mean0 * 1000.0
    );

    for (ns, shared) in [("shared", true), ("separate", false)] {
        let api: Api<NexusRoute> = Api::namespaced(client.clone(), ns);
        let before = totals(&state);
        let t = Instant::now();
        for i in 0..n {
            api.create(&PostParams::default(), &route(ns, i, shared))
                .await
                .unwrap();
        }
        let created = t.elapsed();
        let last_create = Instant::now();
        wait_programmed(&api, n).await;
        println!(
            "{n} routes, {}: created in {created:?}, all Programmed=True {:?} after the first create, {:?} after the last",
            if shared { "one shared gateway EnvoyFilter" } else { "one EnvoyFilter each" },
            t.elapsed(),
            last_create.elapsed(),
        );
        breakdown(&before, &totals(&state), n);
        if shared {
            // A gateway's EnvoyFilter lives where the gateway runs (istio-system).
            let efs: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), "istio-system", &api_resource("EnvoyFilter"));
            let list = efs.list(&ListParams::default()).await.unwrap();
            let size: usize = list
                .items
                .iter()
                .map(|o| serde_json::to_string(o).unwrap().len())
                .sum();
            println!(
                "  {} EnvoyFilter(s), {size} bytes of JSON",
                list.items.len()
            );
        }
    }
}
