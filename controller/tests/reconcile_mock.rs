//! The reconciler against a mocked API server (kube-rs controller-rs's `ApiServerVerifier`
//! pattern): every request the reconcile makes is recorded, answered like the API server
//! would, and the exact sequence is asserted. The real-apiserver tests (`apiserver.rs`) show
//! the same behaviour end to end; these show what each reconcile costs in API round trips.

use std::path::Path;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::Client;
use nexus_controller::controller::{reconcile, Context, FINALIZER};
use nexus_controller::crd::NexusRoute;
use nexus_controller::render::Settings;
use nexus_controller::server::State;
use serde_json::{json, Value};

/// One request the reconcile made: method, path (no query), JSON body.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Answers like the API server; `fail_path` (if any) answers 500.
fn answer(call: &Call, route: &Value, fail_path: Option<&str>) -> (StatusCode, Value) {
    if fail_path == Some(call.path.as_str()) {
        let status = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500 });
        return (StatusCode::INTERNAL_SERVER_ERROR, status);
    }
    let meta_list = json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {}, "items": [] });
    match call.method {
        Method::GET
            if call.path.ends_with("envoyfilters")
                || call.path.ends_with("virtualservices")
                || call.path.ends_with("destinationrules") =>
        {
            (StatusCode::OK, meta_list)
        }
        Method::GET => {
            let name = call.path.rsplit('/').next().unwrap_or_default();
            let meta = json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": { "name": name, "resourceVersion": format!("rv-{name}") } });
            (StatusCode::OK, meta)
        }
        Method::PATCH if call.path.contains("/nexusroutes/") => (StatusCode::OK, route.clone()),
        Method::PATCH => {
            let mut obj = call.body.clone();
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            obj["metadata"]["resourceVersion"] = json!(format!("rv-{name}"));
            (StatusCode::OK, obj)
        }
        Method::DELETE => (
            StatusCode::OK,
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }),
        ),
        _ => (StatusCode::CREATED, call.body.clone()),
    }
}

/// A client whose API server is this process: records each call and answers it.
fn mock_client(route: Value, fail_path: Option<&'static str>) -> (Client, Arc<Mutex<Vec<Call>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call { method, path, body };
            let (status, reply) = answer(&call, &route, fail_path);
            recorded.lock().unwrap().push(call);
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), calls)
}

fn route(finalizers: &[&str], deleting: bool) -> Value {
    let mut metadata = json!({ "name": "shop", "namespace": "apps", "uid": "u-1", "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "7" });
    if !finalizers.is_empty() {
        metadata["finalizers"] = json!(finalizers);
    }
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
    }
    json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute", "metadata": metadata,
        "spec": {
            "target": { "kind": "Sidecar", "selector": { "app": "shop" } },
            "hosts": ["shop.apps.svc.cluster.local"],
            "rules": [{ "name": "orders", "match": { "path": { "prefix": "/orders/" } },
                        "category": "data_operations" }],
        },
    })
}

fn context(client: Client, route: &NexusRoute) -> Arc<Context> {
    let (routes, mut writer): (_, Writer<NexusRoute>) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(route.clone()));
    let (secrets, _) = reflector::store();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
    Arc::new(Context::new(
        client,
        routes,
        secrets,
        settings,
        state,
        "test".into(),
    ))
}

fn lines(calls: &Arc<Mutex<Vec<Call>>>) -> Vec<String> {
    calls.lock().unwrap().iter().map(Call::line).collect()
}

const ROUTE: &str = "/apis/nexus.datapunk.io/v1alpha1/namespaces/apps/nexusroutes/shop";
const ISTIO: &str = "/apis/networking.istio.io";

/// The group's EnvoyFilter name, as the first apply wrote it.
fn envoy_filter_path(calls: &[String]) -> String {
    let prefix = format!("PATCH {ISTIO}/v1alpha3/namespaces/apps/envoyfilters/");
    calls.iter().find(|c| c.starts_with(&prefix)).unwrap()[6..].to_string()
}

#[tokio::test]
async fn a_new_route_is_finalized_programmed_and_reported_in_one_reconcile() {
    let value = route(&[], false);
    let r: NexusRoute = serde_json::from_value(value.clone()).unwrap();
    let (client, calls) = mock_client(value, None);
    let ctx = context(client, &r);
    reconcile(Arc::new(r), ctx).await.unwrap();
    let got = lines(&calls);
    let ef = envoy_filter_path(&got);
    let group = ef.rsplit('/').next().unwrap();
    let expected = vec![
        format!("PATCH {ROUTE}"),
        format!("PATCH {ef}"),
        // The rate-limit ConfigMap lives in the controller's namespace.
        format!("PATCH /api/v1/namespaces/nexus-system/configmaps/nexus-ratelimit.apps.{group}"),
        format!("PATCH {ISTIO}/v1beta1/namespaces/apps/virtualservices/nexus-shop"),
        format!("PATCH {ISTIO}/v1beta1/namespaces/apps/destinationrules/nexus-shop-lake"),
        format!("GET {ISTIO}/v1beta1/namespaces/apps/virtualservices"),
        format!("GET {ISTIO}/v1beta1/namespaces/apps/destinationrules"),
        format!("PATCH {ROUTE}/status"),
        "POST /apis/events.k8s.io/v1/namespaces/apps/events".to_string(),
        "POST /apis/events.k8s.io/v1/namespaces/apps/events".to_string(),
    ];
    assert_eq!(got, expected);
    let recorded = calls.lock().unwrap().clone();
    assert_eq!(
        recorded[0].body,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ]),
        "the finalizer is added with a test of the list it had"
    );
    let status = &recorded[7].body["status"];
    let programmed = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(
        (programmed["status"].as_str(), programmed["reason"].as_str()),
        (Some("True"), Some("Programmed"))
    );
    assert_eq!(status["envoyFilter"], group);
}

#[tokio::test]
async fn an_unchanged_route_costs_two_reads_and_its_own_applies() {
    let value = route(&[FINALIZER], false);
    let r: NexusRoute = serde_json::from_value(value.clone()).unwrap();
    let (client, calls) = mock_client(value, None);
    let ctx = context(client, &r);
    reconcile(Arc::new(r.clone()), ctx.clone()).await.unwrap();
    // The second reconcile sees the status the first one wrote.
    let mut again = r.clone();
    let status_body = calls
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body
        .clone();
    again.status = Some(serde_json::from_value(status_body["status"].clone()).unwrap());
    calls.lock().unwrap().clear();
    reconcile(Arc::new(again), ctx).await.unwrap();
    let got = lines(&calls);
    assert!(
        got.iter().all(|c| !c.contains("nexusroutes")),
        "no finalizer or status write: {got:#?}"
    );
    assert_eq!(
        got.iter().filter(|c| c.starts_with("GET")).count(),
        2,
        "{got:#?}"
    );
    assert_eq!(
        got.iter().filter(|c| c.starts_with("PATCH")).count(),
        2,
        "VS + DR only: {got:#?}"
    );
    assert!(!got
        .iter()
        .any(|c| c.contains("envoyfilters") && c.starts_with("PATCH")));
}

#[tokio::test]
async fn a_failed_apply_says_so_in_status_and_stops_before_the_route_objects() {
    let value = route(&[FINALIZER], false);
    let r: NexusRoute = serde_json::from_value(value.clone()).unwrap();
    // Find the EnvoyFilter's path from a clean run first.
    let (client, calls) = mock_client(value.clone(), None);
    reconcile(Arc::new(r.clone()), context(client, &r))
        .await
        .unwrap();
    let ef = envoy_filter_path(&lines(&calls));
    let ef: &'static str = Box::leak(ef.into_boxed_str());

    let (client, calls) = mock_client(value, Some(ef));
    let err = reconcile(Arc::new(r.clone()), context(client, &r))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("request timed out"), "{err}");
    let recorded = calls.lock().unwrap().clone();
    assert!(
        !recorded.iter().any(|c| c.path.contains("virtualservices")),
        "stopped at the EnvoyFilter"
    );
    let status = &recorded
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    let programmed = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["reason"], "ApplyFailed");
    assert!(programmed["message"]
        .as_str()
        .unwrap()
        .starts_with("applying generated objects failed"));
}

#[tokio::test]
async fn a_deleted_route_takes_its_group_objects_and_then_its_finalizer_away() {
    let value = route(&["other.io/keep", FINALIZER], true);
    let r: NexusRoute = serde_json::from_value(value.clone()).unwrap();
    let (client, calls) = mock_client(value, None);
    reconcile(Arc::new(r.clone()), context(client, &r))
        .await
        .unwrap();
    let recorded = calls.lock().unwrap().clone();
    let got: Vec<String> = recorded.iter().map(Call::line).collect();
    assert!(
        got[0].starts_with(&format!(
            "DELETE {ISTIO}/v1alpha3/namespaces/apps/envoyfilters/"
        )),
        "{got:#?}"
    );
    assert!(
        got[1]
            .starts_with("DELETE /api/v1/namespaces/nexus-system/configmaps/nexus-ratelimit.apps."),
        "{got:#?}"
    );
    assert_eq!(
        got[2..4],
        [
            format!("GET {ISTIO}/v1beta1/namespaces/apps/virtualservices"),
            format!("GET {ISTIO}/v1beta1/namespaces/apps/destinationrules")
        ]
    );
    assert_eq!(got[4], format!("PATCH {ROUTE}"));
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(
        recorded[4].body,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": ["other.io/keep", FINALIZER] },
            { "op": "remove", "path": "/metadata/finalizers/1" },
        ]),
        "only Nexus's own finalizer goes"
    );
}
