//! The request metrics in the mesh: a real kube-apiserver, the controller with
//! `--access-log-port`, and a real Envoy standing in for a gateway pod, built from the
//! EnvoyFilter the controller wrote (its filters, fetched by sha256, and its access-log patch).
//! A known request mix through that Envoy shows up on the controller's `/metrics`, counted by
//! the same code as `nexus up`'s file access log.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use nexus_controller::crd::NexusRoute;
use nexus_tests::client;
use serde_json::json;
use support::proxy::{ControllerPorts, PodProxy};
use support::*;

const NS: &str = "apps";
const GATEWAY_NS: &str = "istio-system";
const WAIT: Duration = Duration::from_secs(60);

/// The sum of the `/metrics` samples of `name` whose labels include every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_requests_are_counted_on_the_controllers_metrics() {
    let env = TestEnv::start();
    let client = env.client().await;
    env.setup(&client, &["nexus-system", GATEWAY_NS, NS]).await;
    let modules = repo_root().join("target/filters");
    assert!(
        modules.join("nexus_router.wasm").is_file(),
        "run `cargo xtask build-filters` first"
    );
    let access_log = free_port();
    let ctrl = ControllerProcess::spawn(
        &env,
        &modules,
        "solo",
        &["--access-log-port", &access_log.to_string()],
    );
    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), NS);
    let lake: NexusRoute = serde_json::from_value(json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
        "metadata": { "name": "lake", "namespace": NS },
        "spec": {
            "target": { "kind": "Gateway", "selector": { "istio": "ingressgateway" } },
            "gateways": ["istio-system/nexus-gateway"],
            "hosts": ["api.example.com"],
            "rules": [{ "name": "lake", "match": { "path": { "prefix": "/lake/" } },
                        "category": "data_operations" }],
        },
    }))
    .unwrap();
    let lake = routes.create(&PostParams::default(), &lake).await.unwrap();
    let envoy_filter = envoy_filter_of(&client, &lake, GATEWAY_NS, &ctrl).await;
    let ports = ControllerPorts {
        http: ctrl.http_port,
        modules: ctrl.modules_port,
        access_log: Some(access_log),
        audit: None,
    };
    let gw = PodProxy::start(env.dir.path(), "gw-a", "127.0.0.1", &envoy_filter, &ports);

    // Every route of this Envoy answers 200 itself; a 404 is nexus-router's: the filters run.
    // Requests before that count too (200, no category), so only the 404s are counted here.
    let start = Instant::now();
    let mut no_route = 0;
    while no_route == 0 {
        if let Ok(r) = client::get(gw.port, "/nowhere", &[]) {
            if r.status == 404 {
                no_route += 1;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "the filters never ran:\n{}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The mix: 5 reads and 3 writes of the lake, 2 more requests no rule matches.
    let host = [("host", "api.example.com")];
    for _ in 0..5 {
        let r = client::get(gw.port, "/lake/tables", &host).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..3 {
        let r = client::request(gw.port, "POST", "/lake/tables", &host, b"{}").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        assert_eq!(client::get(gw.port, "/nowhere", &[]).unwrap().status, 404);
        no_route += 1;
    }

    let lake = |class| {
        [
            r#"category="data_operations""#,
            r#"rule="lake.lake""#,
            class,
            r#"status_class="2xx""#,
        ]
    };
    let start = Instant::now();
    loop {
        let (_, metrics) = ctrl.get("/metrics");
        let duration = "request_duration_seconds_count";
        let seen = (
            sample(&metrics, duration, &lake(r#"method_class="read""#)),
            sample(&metrics, duration, &lake(r#"method_class="write""#)),
            sample(
                &metrics,
                "error_rate_total",
                &[r#"category="none""#, r#"reason="no_route""#],
            ),
        );
        if seen == (5.0, 3.0, f64::from(no_route)) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "want (5, 3, {no_route}), counted {seen:?}:\n{metrics}\ncontroller:\n{}\ngateway:\n{}",
            ctrl.logs(),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
