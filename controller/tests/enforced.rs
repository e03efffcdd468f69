//! `Enforced` against a real kube-apiserver and real Envoys: two gateway Pods (created
//! directly; no kubelet runs) and two Envoy processes standing in for them, each with its pod's
//! name as node id and its pod's IP as source address, loading the filters of the EnvoyFilter
//! the controller wrote (modules fetched from the controller by sha256). Status goes 0/2 →
//! 2/2 as they start, names the stale one when one keeps an old configuration after a route
//! change, and recovers when it reloads; a report for a pod from elsewhere counts for nothing.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use nexus_controller::controller::api_resource;
use nexus_controller::crd::NexusRoute;
use nexus_controller::enforcement::{expected_of, verdict::config_id};
use serde_json::{json, Value};
use support::proxy::{ControllerPorts, PodProxy};
use support::*;

const NS: &str = "apps";
const GATEWAY_NS: &str = "istio-system";
const WAIT: Duration = Duration::from_secs(60);

fn route_spec(extra_rule: bool) -> Value {
    let mut rules = vec![
        json!({ "name": "lake", "match": { "path": { "prefix": "/lake/" } },
                                 "category": "data_operations" }),
    ];
    if extra_rule {
        rules.push(
            json!({ "name": "forge", "match": { "path": { "prefix": "/forge/" } },
                           "category": "data_operations" }),
        );
    }
    json!({
        "target": { "kind": "Gateway", "selector": { "istio": "ingressgateway" } },
        "gateways": ["istio-system/nexus-gateway"],
        "hosts": ["api.example.com"],
        "rules": rules,
    })
}

/// A gateway pod with `ip`, as the kubelet would report it running.
async fn create_pod(client: &Client, name: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), GATEWAY_NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "istio": "ingressgateway" } },
        "spec": { "serviceAccountName": "gateway", "automountServiceAccountToken": false,
                  "containers": [{ "name": "istio-proxy", "image": "istio/proxyv2" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({ "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] } });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// (Enforced status, reason, message, status.enforced) for the current generation.
async fn enforced(routes: &Api<NexusRoute>) -> Option<(String, String, String, String)> {
    let r = routes.get_opt("lake").await.ok()??;
    let st = r.status?;
    let c = st.conditions.iter().find(|c| c.type_ == "Enforced")?;
    Some((
        c.status.clone(),
        c.reason.clone(),
        c.message.clone(),
        st.enforced.clone().unwrap_or_default(),
    ))
}

/// Waits until the Enforced condition satisfies `ok`; panics with the last one (and the
/// proxies' logs) otherwise.
async fn wait_enforced(
    (routes, ctrl): (&Api<NexusRoute>, &ControllerProcess),
    what: &str,
    ok: impl Fn(&(String, String, String, String)) -> bool,
    proxies: &[&PodProxy],
) -> (String, String, String, String) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < WAIT {
        last = enforced(routes).await;
        if let Some(e) = last.as_ref().filter(|e| ok(e)) {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = proxies
        .iter()
        .map(|p| format!("{}:\n{}", p.node, p.logs()))
        .collect();
    let (_, metrics) = ctrl.get("/metrics");
    let reports: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nexus_proxy_reports"))
        .collect();
    panic!(
        "never {what}; last {last:?}\n{reports:?}\ncontroller:\n{}\n{}",
        ctrl.logs(),
        logs.join("\n")
    );
}

async fn envoy_filter(client: &Client, name: &str) -> Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), GATEWAY_NS, &api_resource("EnvoyFilter"));
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

fn post_report(port: u16, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /proxies/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_confirm_what_they_enforce() {
    let env = TestEnv::start();
    let client = env.client().await;
    env.setup(&client, &["nexus-system", GATEWAY_NS, NS]).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), GATEWAY_NS);
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "gateway" } })).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    create_pod(&client, "gw-a", "127.0.0.1").await;
    create_pod(&client, "gw-b", "127.0.0.2").await;

    let modules = repo_root().join("target/filters");
    assert!(
        modules.join("nexus_router.wasm").is_file(),
        "run `cargo xtask build-filters` first"
    );
    let ctrl = ControllerProcess::spawn(
        &env,
        &modules,
        "solo",
        &[
            "--lease-duration",
            "4",
            "--renew-interval",
            "1",
            "--proxy-report-interval-ms",
            "1000",
        ],
    );
    let ports = ControllerPorts {
        http: ctrl.http_port,
        modules: ctrl.modules_port,
        access_log: None,
        audit: None,
    };
    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), NS);
    let lake: NexusRoute = serde_json::from_value(json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
        "metadata": { "name": "lake", "namespace": NS }, "spec": route_spec(false),
    }))
    .unwrap();
    let lake = routes.create(&PostParams::default(), &lake).await.unwrap();
    let group = nexus_controller::model::group_key(&lake).name();

    // No proxy runs yet: 0/2, both missing.
    let (status, reason, message, count) =
        wait_enforced((&routes, &ctrl), "0/2", |e| e.3 == "0/2", &[]).await;
    let first = envoy_filter(&client, &group).await;
    let first_id = config_id(&expected_of(&first));
    assert_eq!(
        (status.as_str(), reason.as_str(), count.as_str()),
        ("False", "ProxiesMissing", "0/2")
    );
    assert_eq!(
        message,
        format!("0/2 proxies run configuration {first_id}; missing: gw-a, gw-b")
    );

    // Bad reports are refused with the reason and change nothing.
    assert_eq!(post_report(ctrl.http_port, "{not json"), 400);
    assert_eq!(
        post_report(
            ctrl.http_port,
            r#"{"filter":"nexus.router","config_sha256":"00","node_id":"gw-b"}"#
        ),
        400
    );

    let a = PodProxy::start(env.dir.path(), "gw-a", "127.0.0.1", &first, &ports);
    let (_, _, message, _) = wait_enforced((&routes, &ctrl), "1/2", |e| e.3 == "1/2", &[&a]).await;
    assert!(message.ends_with("; missing: gw-b"), "{message}");

    // A report for gw-b sent from gw-a's address (the test process) proves nothing.
    let router_sha = expected_of(&first)["nexus.router"].clone();
    let forged =
        json!({ "filter": "nexus.router", "config_sha256": router_sha, "node_id": "gw-b" });
    assert_eq!(post_report(ctrl.http_port, &forged.to_string()), 204);
    let (_, _, message, count) = wait_enforced(
        (&routes, &ctrl),
        "gw-b unverified",
        |e| e.2.contains("unverified: gw-b"),
        &[&a],
    )
    .await;
    assert_eq!(count, "1/2", "{message}");
    assert!(
        message.contains(
            "unverified: gw-b (report from 127.0.0.1, not the pod's address or identity)"
        ),
        "{message}"
    );

    let b = PodProxy::start(env.dir.path(), "gw-b", "127.0.0.2", &first, &ports);
    let (status, reason, message, _) =
        wait_enforced((&routes, &ctrl), "2/2", |e| e.3 == "2/2", &[&a, &b]).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Enforced"));
    assert_eq!(message, format!("2/2 proxies run configuration {first_id}"));

    // The route changes: gw-a reloads, gw-b keeps the old configuration.
    routes
        .patch(
            "lake",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": route_spec(true) })),
        )
        .await
        .unwrap();
    let mut second = first.clone();
    let start = Instant::now();
    while config_id(&expected_of(&second)) == first_id {
        assert!(start.elapsed() < WAIT, "the EnvoyFilter never changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        second = envoy_filter(&client, &group).await;
    }
    let second_id = config_id(&expected_of(&second));
    drop(a);
    let a = PodProxy::start(env.dir.path(), "gw-a", "127.0.0.1", &second, &ports);
    let (status, reason, message, _) = wait_enforced(
        (&routes, &ctrl),
        "gw-b stale",
        |e| e.3 == "1/2" && e.2.contains(&second_id) && e.2.contains("stale: gw-b"),
        &[&a, &b],
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProxiesStale")
    );
    assert_eq!(
        message,
        format!("1/2 proxies run configuration {second_id}; stale: gw-b (config {first_id})")
    );

    drop(b);
    let b = PodProxy::start(env.dir.path(), "gw-b", "127.0.0.2", &second, &ports);
    let (status, _, message, _) = wait_enforced(
        (&routes, &ctrl),
        "2/2 on the new configuration",
        |e| e.2 == format!("2/2 proxies run configuration {second_id}"),
        &[&a, &b],
    )
    .await;
    assert_eq!(status, "True");

    // A proxy that stops reporting is missing after three intervals.
    drop(b);
    let (_, _, message2, _) =
        wait_enforced((&routes, &ctrl), "gw-b missing", |e| e.3 == "1/2", &[&a]).await;
    assert!(
        message2.ends_with("; missing: gw-b"),
        "{message} → {message2}"
    );
    assert!(
        !ctrl.logs().contains("\"level\":\"ERROR\""),
        "{}",
        ctrl.logs()
    );
}
