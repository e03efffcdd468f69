//! The audit log in the mesh: a real kube-apiserver, the controller with `--audit-port` (its
//! chain in Redis), and a real Envoy standing in for a gateway pod, built from the EnvoyFilter
//! the controller wrote. An API-key route's deny and allow become records of one hash chain in
//! the Redis stream, and `nexus audit verify --redis` checks it, naming a record removed.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use nexus_controller::crd::NexusRoute;
use nexus_tests::client;
use serde_json::{json, Value};
use support::proxy::{ControllerPorts, PodProxy};
use support::*;

const NS: &str = "apps";
const GATEWAY_NS: &str = "istio-system";
const WAIT: Duration = Duration::from_secs(60);
/// The machine's shared Redis; this test writes only its own stream.
const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_auth_decisions_are_chained_in_redis_and_verified() {
    let env = TestEnv::start();
    let client = env.client().await;
    env.setup(&client, &["nexus-system", GATEWAY_NS, NS]).await;
    let modules = repo_root().join("target/filters");
    let audit_port = free_port();
    let stream = format!("nexus:audit:mesh-test:{}", std::process::id());
    let ctrl = ControllerProcess::spawn(
        &env,
        &modules,
        "solo",
        &[
            "--audit-port",
            &audit_port.to_string(),
            "--redis-url",
            REDIS,
            "--audit-stream",
            &stream,
        ],
    );
    let route = create_route(&client).await;
    let envoy_filter = envoy_filter_of(&client, &route, GATEWAY_NS, &ctrl).await;
    let sink = format!("outbound|{audit_port}||nexus-controller.nexus-system.svc.cluster.local");
    assert!(
        envoy_filter.to_string().contains(&sink),
        "the filters' audit sink is the controller's Service: {envoy_filter}"
    );
    let ports = ControllerPorts {
        http: ctrl.http_port,
        modules: ctrl.modules_port,
        access_log: None,
        audit: Some(audit_port),
    };
    let gw = PodProxy::start(env.dir.path(), "gw-a", "127.0.0.1", &envoy_filter, &ports);

    // Until the filters run, the listener answers 200 itself; then a request without a key
    // is nexus-auth's 401.
    let host = ("host", "api.example.com");
    let start = Instant::now();
    while client::get(gw.port, "/lake/tables", &[host]).map_or(0, |r| r.status) != 401 {
        assert!(
            start.elapsed() < WAIT,
            "the filters never ran:\n{}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let keyed = [host, ("x-api-key", "billing-key-1")];
    assert_eq!(
        client::get(gw.port, "/lake/tables", &keyed).unwrap().status,
        200
    );

    let entries = wait_for_entries(&stream, |e| {
        has(e, "auth.deny", Value::Null) && has(e, "auth.allow", json!("billing"))
    })
    .await;
    // The leader's configuration change is in the same chain, before the requests'.
    let programmed = entries
        .iter()
        .position(|e| e["record"]["event"] == "route.programmed")
        .unwrap_or_else(|| panic!("no route.programmed in {entries:?}"));
    let r = &entries[programmed]["record"];
    assert_eq!(
        (r["source"].as_str(), r["subject"].as_str()),
        (Some("nexus-controller"), Some("apps/lake"))
    );
    assert!(
        programmed
            < entries
                .iter()
                .position(|e| e["record"]["event"] == "auth.deny")
                .unwrap()
    );
    let deny = entries.iter().find(|e| e["record"]["event"] == "auth.deny");
    assert_eq!(deny.unwrap()["record"]["rule"], "lake.lake", "{entries:?}");
    let (_, metrics) = ctrl.get("/metrics");
    assert!(
        !metrics.contains("nexus_audit_records_appended_total 0\n"),
        "{metrics}"
    );

    let (ok, report) = verify(&stream);
    assert!(ok, "{report}");
    assert!(report.contains("chain intact"), "{report}");
    // One record removed from the stream: verify fails naming where it is missing.
    xdel_first(&stream).await;
    let (ok, report) = verify(&stream);
    cleanup(&stream).await;
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "{stream}: broken at record 1 (line 1): the stream starts at record 2"
        )) && report.contains("records 1 to 1 were removed, not trimmed"),
        "{report}"
    );
    drop(gw);
}

/// Without a Redis there is nowhere to keep the chain: the controller refuses to start.
#[test]
fn an_audit_port_without_redis_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["controller", "--modules"])
        .arg(repo_root().join("target/filters"))
        .args(["--audit-port", "8085"])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--audit-port needs --redis-url: the audit chain lives in Redis"),
        "{stderr}"
    );
}

async fn create_route(client: &kube::Client) -> NexusRoute {
    // sha256("billing-key-1")
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "api-keys", "namespace": NS },
        "stringData": {
            "fae753df059d1aaa02b5fce22fbc90ba2d91df1c1908d333c1346f81b16b4499":
                r#"{"clientId":"billing","scopes":["lake:read"]}"#,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let route: NexusRoute = serde_json::from_value(json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
        "metadata": { "name": "lake", "namespace": NS },
        "spec": {
            "target": { "kind": "Gateway", "selector": { "istio": "ingressgateway" } },
            "gateways": ["istio-system/nexus-gateway"],
            "hosts": ["api.example.com"],
            "auth": { "apiKeys": { "secretRef": { "name": "api-keys" } } },
            "rules": [{ "name": "lake", "match": { "path": { "prefix": "/lake/" } },
                        "category": "data_operations", "auth": { "apiKey": {} } }],
        },
    }))
    .unwrap();
    Api::<NexusRoute>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &route)
        .await
        .unwrap()
}

/// Whether a record of `event` with that `client` (none on a deny) is among `entries`.
fn has(entries: &[Value], event: &str, client: Value) -> bool {
    entries
        .iter()
        .any(|e| e["record"]["event"] == event && e["record"]["client"] == client)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn read_stream(stream: &str) -> Vec<(String, Value)> {
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    reply
        .into_iter()
        .map(|(id, f)| (id, serde_json::from_str(&f[0].1).unwrap()))
        .collect()
}

/// The stream's entries once `done` holds for them (the filters flush every second).
async fn wait_for_entries(stream: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let entries: Vec<Value> = read_stream(stream).await.into_iter().map(|e| e.1).collect();
        if done(&entries) {
            return entries;
        }
        assert!(start.elapsed() < WAIT, "records never arrived: {entries:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn xdel_first(stream: &str) {
    let (id, _) = read_stream(stream).await.remove(0);
    let _: () = redis::cmd("XDEL")
        .arg(stream)
        .arg(id)
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

async fn cleanup(stream: &str) {
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .arg(format!("{{{stream}}}:head"))
        .query_async(&mut redis().await)
        .await
        .unwrap();
}

/// `nexus audit verify --redis`: whether it passed, and what it printed.
fn verify(stream: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["audit", "verify", "--redis", REDIS, "--stream", stream])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
