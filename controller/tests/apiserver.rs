//! Against a real kube-apiserver (started per test on fresh ports, stopped at the end), with
//! the real `nexus controller` binary.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nexus_config::auth::AuthConfig;
use nexus_config::router::RouterConfig;
use nexus_controller::controller::api_resource;
use nexus_controller::crd::NexusRoute;
use serde_json::{json, Value};
use support::bus::AMQP;
use support::*;

const NS: &str = "apps";
const WAIT: Duration = Duration::from_secs(60);

fn route(name: &str, spec: Value) -> NexusRoute {
    serde_json::from_value(json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1",
        "kind": "NexusRoute",
        "metadata": { "name": name, "namespace": NS },
        "spec": spec,
    }))
    .unwrap()
}

fn shop_spec(timeout: &str) -> Value {
    json!({
        "target": { "kind": "Sidecar", "selector": { "app": "shop" } },
        "hosts": ["shop.apps.svc.cluster.local"],
        "rules": [
            { "name": "orders", "match": { "path": { "prefix": "/orders/" } }, "category": "data_operations",
              "timeout": timeout, "rateLimits": [{ "by": "Client", "requests": 5, "per": "Second" }] },
            { "name": "ai", "match": { "path": { "prefix": "/ai/" }, "methods": ["POST"] }, "category": "ai_inference" },
        ],
    })
}

async fn condition(
    api: &Api<NexusRoute>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let r = api.get_opt(name).await.ok()??;
    let st = r.status?;
    if st.observed_generation != r.metadata.generation {
        return None;
    }
    st.conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

async fn wait_condition(
    api: &Api<NexusRoute>,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String, String) {
    let mut last = None;
    let start = Instant::now();
    while start.elapsed() < WAIT {
        last = condition(api, name, type_).await;
        if let Some(c) = &last {
            if c.0 == status {
                return c.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: {type_} never became {status}; last {last:?}");
}

fn dyn_api(client: &Client, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &api_resource(kind))
}

async fn get_obj(client: &Client, kind: &str, name: &str) -> Option<Value> {
    let o = dyn_api(client, kind).get_opt(name).await.ok()??;
    Some(serde_json::to_value(o).unwrap())
}

fn filter_config(ef: &Value, filter: &str) -> Vec<u8> {
    ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["patch"]["value"]["name"] == format!("nexus.{filter}"))
        .unwrap()["patch"]["value"]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn group_name(route: &NexusRoute) -> String {
    nexus_controller::model::group_key(route).name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_routes_against_a_real_apiserver() {
    let env = TestEnv::start();
    let client = env.client().await;
    env.setup(&client, &["nexus-system", "istio-system", NS])
        .await;
    let modules = module_dir();
    let rls_port = free_port();
    let rls_addr = format!("127.0.0.1:{rls_port}");
    let ctrl = ControllerProcess::spawn(
        &env,
        modules.path(),
        "solo",
        &[
            "--lease-duration",
            "4",
            "--renew-interval",
            "1",
            "--ratelimit-addr",
            &rls_addr,
            "--amqp-url",
            AMQP,
            "--deployment",
            &format!("apiserver-test-{}", std::process::id()),
        ],
    );
    let start = Instant::now();
    while ctrl.get("/health/ready").0 != 200 {
        assert!(
            start.elapsed() < WAIT,
            "never ready: {:?}\n{}",
            ctrl.get("/health/ready"),
            ctrl.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, ready) = ctrl.get("/health/ready");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["components"]["apiserver"]["status"], "ok", "{ready}");
    assert_eq!(ready["components"]["modules"]["status"], "ok", "{ready}");
    assert_eq!(ctrl.get("/health/live").0, 200);
    assert_eq!(ctrl.get("/health/startup").0, 200);

    // Module server: by sha256, 404 otherwise.
    let sha = std::fs::read_to_string(modules.path().join("nexus_router.wasm.sha256")).unwrap();
    let sha = sha.split_whitespace().next().unwrap();
    let (code, body) = ctrl.get(&format!("/modules/{sha}.wasm"));
    assert_eq!(code, 200);
    assert!(body.contains("nexus-test-router"));
    assert_eq!(
        ctrl.get(&format!("/modules/{}.wasm", "0".repeat(64))).0,
        404
    );
    assert_eq!(ctrl.get("/modules/../../etc/passwd").0, 404);

    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), NS);
    let bus = route_events("shop").await;

    // 1. Create: every object exists, owned by the route; Programmed=True.
    let t0 = Instant::now();
    let shop = routes
        .create(&PostParams::default(), &route("shop", shop_spec("30s")))
        .await
        .unwrap();
    let (_, reason, _) = wait_condition(&routes, "shop", "Programmed", "True").await;
    println!(
        "reconcile latency, 1 route (create -> Programmed=True observed): {:?}",
        t0.elapsed()
    );
    assert_eq!(reason, "Programmed");
    assert_eq!(
        wait_condition(&routes, "shop", "Accepted", "True").await.1,
        "Accepted"
    );
    assert_eq!(
        wait_condition(&routes, "shop", "ResolvedRefs", "True")
            .await
            .1,
        "ResolvedRefs"
    );
    let uid = shop.uid().unwrap();
    let group = group_name(&shop);
    let ef = get_obj(&client, "EnvoyFilter", &group)
        .await
        .expect("EnvoyFilter");
    // Group objects may cross namespaces, where owner references cannot: labels name the
    // group and the route's finalizer removes it.
    assert!(ef["metadata"]["ownerReferences"].is_null(), "{ef}");
    assert_eq!(
        ef["metadata"]["labels"]["nexus.datapunk.io/group"],
        group.as_str()
    );
    assert!(ef["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == "nexus-controller" && m["operation"] == "Apply"));
    let router: RouterConfig = nexus_config::parse(&filter_config(&ef, "router")).unwrap();
    assert_eq!(router.rules.len(), 2);
    let vs = get_obj(&client, "VirtualService", "nexus-shop")
        .await
        .expect("VirtualService");
    assert_eq!(vs["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(vs["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(vs["spec"]["http"][0]["timeout"], "30s");
    for dr in ["nexus-shop-lake", "nexus-shop-cortex"] {
        let dr = get_obj(&client, "DestinationRule", dr)
            .await
            .expect("DestinationRule");
        assert_eq!(
            dr["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
            5
        );
        assert_eq!(dr["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    }
    // Rate-limit ConfigMaps live in the controller's namespace, the only one it writes them in.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "nexus-system");
    let cm = cms
        .get(&format!("nexus-ratelimit.{NS}.{group}"))
        .await
        .unwrap();
    let config_yaml = cm.data.unwrap()["config.yaml"].clone();
    assert!(config_yaml.contains("client_id"));
    assert_eq!(
        cm.metadata.labels.unwrap()["nexus.datapunk.io/group-namespace"],
        NS
    );

    // The controller's own rate-limit service serves the limits of that ConfigMap.
    let domain = config_yaml
        .lines()
        .find_map(|l| l.strip_prefix("domain: "))
        .unwrap()
        .to_string();
    let mut rls =
        nexus_proto::ratelimit::rate_limit_service_client::RateLimitServiceClient::connect(
            format!("http://{rls_addr}"),
        )
        .await
        .unwrap();
    let request = |client: &str| nexus_proto::ratelimit::RateLimitRequest {
        domain: domain.clone(),
        descriptors: vec![nexus_proto::ratelimit::RateLimitDescriptor {
            entries: vec![
                nexus_proto::ratelimit::rate_limit_descriptor::Entry {
                    key: "route".into(),
                    value: "shop.orders".into(),
                },
                nexus_proto::ratelimit::rate_limit_descriptor::Entry {
                    key: "client_id".into(),
                    value: client.into(),
                },
            ],
            limit: None,
        }],
        hits_addend: 0,
    };
    let mut limit = None;
    let start = Instant::now();
    while limit.is_none() && start.elapsed() < WAIT {
        let resp = rls
            .should_rate_limit(request("carol"))
            .await
            .unwrap()
            .into_inner();
        limit = resp.statuses[0].current_limit.clone();
        if limit.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        limit
            .expect("the service never loaded the rendered limits")
            .requests_per_unit,
        5
    );

    // 1b. Someone else's edit of a generated object is undone, and one deleted by hand comes
    // back: their watch events name a manager other than the controller (managedFields) or a
    // deletion, which wake the owner; the controller's own applies do not.
    let edited = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    dyn_api(&client, "VirtualService")
        .patch(
            "nexus-shop",
            &edited,
            &Patch::Merge(json!({ "spec": { "http": [{ "route": [], "timeout": "99s" }] } })),
        )
        .await
        .unwrap();
    wait_for(WAIT, || {
        let client = client.clone();
        async move {
            get_obj(&client, "VirtualService", "nexus-shop")
                .await
                .is_some_and(|vs| vs["spec"]["http"][0]["timeout"] == "30s")
        }
    })
    .await;
    let rules = dyn_api(&client, "DestinationRule")
        .list(&Default::default())
        .await
        .unwrap();
    let rule = rules.items.first().expect("a DestinationRule").name_any();
    dyn_api(&client, "DestinationRule")
        .delete(&rule, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, || {
        let (client, rule) = (client.clone(), rule.clone());
        async move { get_obj(&client, "DestinationRule", &rule).await.is_some() }
    })
    .await;

    // 2. Update: objects follow.
    routes
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": shop_spec("12s") })),
        )
        .await
        .unwrap();
    wait_for(WAIT, || {
        let client = client.clone();
        async move {
            get_obj(&client, "VirtualService", "nexus-shop")
                .await
                .is_some_and(|vs| vs["spec"]["http"][0]["timeout"] == "12s")
        }
    })
    .await;
    wait_condition(&routes, "shop", "Programmed", "True").await;
    let ef = get_obj(&client, "EnvoyFilter", &group).await.unwrap();
    let router: RouterConfig = nexus_config::parse(&filter_config(&ef, "router")).unwrap();
    assert_eq!(router.rules[0].timeout_ms, Some(12_000));

    // 2b. Moving to other workloads: the new group gets the filters, the old one goes away.
    let mut moved = shop_spec("12s");
    moved["target"]["selector"]["app"] = json!("shop-v2");
    routes
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": moved })),
        )
        .await
        .unwrap();
    wait_condition(&routes, "shop", "Programmed", "True").await;
    let old_group = group.clone();
    let group = group_name(&routes.get("shop").await.unwrap());
    assert_ne!(group, old_group);
    wait_for(WAIT, || {
        let (client, old_group, group) = (client.clone(), old_group.clone(), group.clone());
        async move {
            get_obj(&client, "EnvoyFilter", &old_group).await.is_none()
                && get_obj(&client, "EnvoyFilter", &group).await.is_some()
        }
    })
    .await;
    let st = routes.get("shop").await.unwrap().status.unwrap();
    assert_eq!(st.envoy_filter.as_deref(), Some(group.as_str()));

    // 3. Invalid: Accepted=False with the JSON path; nothing applied.
    let mut bad = shop_spec("1s");
    bad["target"]["selector"]["app"] = json!("broken");
    bad["hosts"] = json!(["broken.apps.svc.cluster.local"]);
    bad["rules"][0]["match"]["path"] = json!({ "regex": "(unclosed" });
    routes
        .create(&PostParams::default(), &route("broken", bad))
        .await
        .unwrap();
    let (_, reason, message) = wait_condition(&routes, "broken", "Accepted", "False").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("$.spec.rules[0].match.path.regex"),
        "{message}"
    );
    let (_, reason, _) = wait_condition(&routes, "broken", "Programmed", "False").await;
    assert_eq!(reason, "Invalid");
    assert!(get_obj(&client, "VirtualService", "nexus-broken")
        .await
        .is_none());
    let broken = routes.get("broken").await.unwrap();
    assert!(get_obj(&client, "EnvoyFilter", &group_name(&broken))
        .await
        .is_none());
    // ... with a Warning event.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    wait_for(WAIT, || {
        let events = events.clone();
        async move {
            events.list(&Default::default()).await.is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.reason.as_deref() == Some("InvalidSpec")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
                        && e.type_.as_deref() == Some("Warning")
                })
            })
        }
    })
    .await;

    // 4. A Secret that appears later: SecretNotFound, then the route recovers.
    let keys_spec = json!({
        "target": { "kind": "Sidecar", "selector": { "app": "keys" } },
        "hosts": ["keys.apps.svc.cluster.local"],
        "auth": { "apiKeys": { "secretRef": { "name": "api-keys" } } },
        "rules": [{ "name": "k", "match": { "path": { "prefix": "/k/" } }, "category": "data_operations",
                    "auth": { "apiKey": { "scopes": ["k:read"] } } }],
    });
    let keys = routes
        .create(&PostParams::default(), &route("keys", keys_spec))
        .await
        .unwrap();
    let (_, reason, message) = wait_condition(&routes, "keys", "ResolvedRefs", "False").await;
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains("$.spec.auth.apiKeys.secretRef"),
        "{message}"
    );
    wait_condition(&routes, "keys", "Programmed", "False").await;
    let hash = "fae753df059d1aaa02b5fce22fbc90ba2d91df1c1908d333c1346f81b16b4499";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "api-keys", "namespace": NS },
        "stringData": { hash: "{\"clientId\":\"billing\",\"scopes\":[\"k:read\"]}" },
    }))
    .unwrap();
    let t1 = Instant::now();
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    wait_condition(&routes, "keys", "Programmed", "True").await;
    println!(
        "Secret created -> route Programmed=True: {:?}",
        t1.elapsed()
    );
    wait_condition(&routes, "keys", "ResolvedRefs", "True").await;
    let ef = get_obj(&client, "EnvoyFilter", &group_name(&keys))
        .await
        .unwrap();
    let auth: AuthConfig = nexus_config::parse(&filter_config(&ef, "auth")).unwrap();
    assert_eq!(auth.api_keys.unwrap().keys[0].client_id, "billing");

    // 5. Conflict: a newer route claiming the same host and path loses.
    let mut copy = shop_spec("5s");
    copy["target"]["selector"]["app"] = json!("shop-canary");
    routes
        .create(&PostParams::default(), &route("shop-copy", copy))
        .await
        .unwrap();
    let (_, reason, message) = wait_condition(&routes, "shop-copy", "Accepted", "False").await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("apps/shop"), "{message}");
    assert!(message.contains("$.spec.rules[0].match.path"), "{message}");
    assert_eq!(
        wait_condition(&routes, "shop", "Accepted", "True").await.1,
        "Accepted"
    );

    // 6. Delete: the finalizer removes the generated objects (no GC in this apiserver).
    routes
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, || {
        let (client, routes) = (client.clone(), routes.clone());
        let group = group.clone();
        async move {
            routes.get_opt("shop").await.unwrap().is_none()
                && get_obj(&client, "VirtualService", "nexus-shop")
                    .await
                    .is_none()
                && get_obj(&client, "DestinationRule", "nexus-shop-lake")
                    .await
                    .is_none()
                && get_obj(&client, "EnvoyFilter", &group).await.is_none()
        }
    })
    .await;
    // With the older route gone, the copy is accepted now.
    wait_condition(&routes, "shop-copy", "Programmed", "True").await;

    gateway_routes_attach_where_their_gateway_allows(&client).await;
    // The event bus heard the route's life in order: programmed (generation 1), its changes,
    // and its deletion last.
    let heard = bus.await.unwrap();
    assert_eq!(
        heard.first().map(|e| (e.0.as_str(), e.1)),
        Some(("nexus.route.programmed", Some(1))),
        "{heard:?}"
    );
    assert_eq!(
        heard.last().map(|e| e.0.as_str()),
        Some("nexus.route.deleted"),
        "{heard:?}"
    );
    assert!(
        heard.windows(2).all(|w| w[0].1 <= w[1].1),
        "generations in order: {heard:?}"
    );
    assert!(
        heard
            .iter()
            .any(|e| e.0 == "nexus.route.programmed" && e.1 > Some(1)),
        "{heard:?}"
    );

    let (_, metrics) = ctrl.get("/metrics");
    assert!(
        metrics.contains("nexus_controller_reconcile_duration_seconds_count"),
        "{metrics}"
    );
    // The bus's counters are in /metrics too: route events were published.
    let published = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nexus_events_published_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(published.is_some_and(|n| n > 0), "{metrics}");
    assert!(ctrl.reconciles() > 0);
    // JSON logs with the required keys.
    let logs = ctrl.logs();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "reconciled")
        .unwrap_or_else(|| panic!("no reconcile log line:\n{logs}"));
    for key in ["timestamp", "level", "service", "trace_id"] {
        assert!(!line[key].is_null(), "{key} missing in {line}");
    }
    assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
    // And every other line is in the same format.
    for l in logs.lines() {
        let line = nexus_telemetry::parse_line(l).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(line["service"], "nexus-controller", "{l}");
    }
}

/// A gateway route's EnvoyFilter lands in the gateway's namespace (istio-system) and goes
/// when the route does; a gateway namespace that allows only its own routes refuses others.
async fn gateway_routes_attach_where_their_gateway_allows(client: &Client) {
    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), NS);
    let spec = |gateway_ns: &str, host: &str| {
        json!({
            "target": { "kind": "Gateway", "namespace": gateway_ns, "selector": { "istio": "ingressgateway" } },
            "gateways": ["istio-system/nexus-gateway"],
            "hosts": [host],
            "rules": [{ "name": "all", "match": { "path": { "prefix": "/" } }, "category": "data_operations" }],
        })
    };
    let edge = routes
        .create(
            &PostParams::default(),
            &route("edge", spec("istio-system", "edge.example.com")),
        )
        .await
        .unwrap();
    wait_condition(&routes, "edge", "Programmed", "True").await;
    let group = group_name(&edge);
    let efs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "istio-system", &api_resource("EnvoyFilter"));
    assert!(
        efs.get_opt(&group).await.unwrap().is_some(),
        "EnvoyFilter in istio-system"
    );
    assert!(
        get_obj(client, "EnvoyFilter", &group).await.is_none(),
        "none in the route's namespace"
    );

    routes
        .create(
            &PostParams::default(),
            &route("elsewhere", spec("edge-gateways", "other.example.com")),
        )
        .await
        .unwrap();
    let (_, reason, message) = wait_condition(&routes, "elsewhere", "Accepted", "False").await;
    assert_eq!(reason, "NotAllowedByGateway", "{message}");
    assert!(message.contains("edge-gateways"), "{message}");

    routes
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    routes
        .delete("elsewhere", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(WAIT, || {
        let (efs, group) = (efs.clone(), group.clone());
        async move { efs.get_opt(&group).await.unwrap().is_none() }
    })
    .await;
}

/// Collects (type, generation) of the bus events about route `name` in [`NS`], from now until
/// it is deleted.
async fn route_events(name: &str) -> tokio::task::JoinHandle<Vec<(String, Option<i64>)>> {
    let pattern = format!("nexus.route.*.{NS}.{name}");
    let heard = support::bus::listen(&pattern, "nexus.route.deleted", WAIT * 3).await;
    tokio::spawn(async move {
        let heard = heard.await.unwrap();
        heard
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["data"]["generation"].as_i64(),
                )
            })
            .collect()
    })
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "nexus-system");
    leases
        .get_opt("nexus-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_reconciles_and_the_other_takes_over() {
    let env = TestEnv::start();
    let client = env.client().await;
    env.setup(&client, &["nexus-system", NS]).await;
    let modules = module_dir();
    let lease = ["--lease-duration", "4", "--renew-interval", "1"];
    let mut a = ControllerProcess::spawn(&env, modules.path(), "replica-a", &lease);
    wait_for(WAIT, || {
        let client = client.clone();
        async move { lease_holder(&client).await.as_deref() == Some("replica-a") }
    })
    .await;
    let b = ControllerProcess::spawn(&env, modules.path(), "replica-b", &lease);
    wait_for(WAIT, || async { b.get("/health/ready").0 == 200 }).await;

    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), NS);
    routes
        .create(&PostParams::default(), &route("one", shop_spec("30s")))
        .await
        .unwrap();
    wait_condition(&routes, "one", "Programmed", "True").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        a.reconciles() > 0,
        "the leader reconciled nothing:\n{}",
        a.logs()
    );
    assert_eq!(b.reconciles(), 0, "the standby reconciled:\n{}", b.logs());
    assert_eq!(lease_holder(&client).await.as_deref(), Some("replica-a"));
    let (_, ready) = b.get("/health/ready");
    assert!(ready.contains("\"leader\":false"), "{ready}");

    // Kill the leader without letting it release the Lease: b takes over once it expires.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    wait_for(Duration::from_secs(15), || {
        let client = client.clone();
        async move { lease_holder(&client).await.as_deref() == Some("replica-b") }
    })
    .await;
    println!(
        "standby took over {:?} after the leader was killed (lease 4s)",
        killed.elapsed()
    );
    let mut two = shop_spec("30s");
    two["target"]["selector"]["app"] = json!("two");
    two["hosts"] = json!(["two.apps.svc.cluster.local"]);
    routes
        .create(&PostParams::default(), &route("two", two))
        .await
        .unwrap();
    wait_condition(&routes, "two", "Programmed", "True").await;
    assert!(b.reconciles() > 0, "{}", b.logs());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "nexus-system");
    let spec = leases.get("nexus-controller").await.unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(1));
}
