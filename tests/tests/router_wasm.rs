//! The real nexus_router.wasm under the strict wasmtime host: same behaviour as the native core,
//! no unexpected hostcall, and the fuel each callback costs.

use proxy_wasm_test_host::{Action, Host, LogLevel};

const CONFIG: &str = r#"{"rules": [
  {"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}},
  {"name": "cortex", "category": "ai_inference",
   "match": {"path": {"regex": "/cortex/v[0-9]+/infer"}, "methods": ["POST"]}}
]}"#;

fn router(config: &str) -> Host {
    let module = nexus_tests::filter_module("nexus_router").unwrap();
    Host::builder()
        .plugin_config(config.as_bytes().to_vec())
        .build_from_file(module)
        .unwrap()
}

#[test]
fn routes_and_strips_spoofed_headers() {
    let mut host = router(CONFIG);
    assert!(host.start().unwrap());
    let mut http = host.http_context().unwrap();
    let action = http
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/lake/tables"),
                ("x-nexus-upstream", "forge"),
                ("x-nexus-client-id", "admin"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(
        http.request_header("x-nexus-upstream").as_deref(),
        Some("lake")
    );
    assert_eq!(
        http.request_header("x-nexus-category").as_deref(),
        Some("data_operations")
    );
    assert_eq!(
        http.request_header("x-envoy-upstream-rq-timeout-ms")
            .as_deref(),
        Some("30000")
    );
    assert_eq!(
        http.request_header("x-envoy-max-retries").as_deref(),
        Some("3")
    );
    assert_eq!(http.request_header("x-nexus-client-id"), None);
    let traceparent = http.request_header("traceparent").unwrap();
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent}"
    );
    http.finish().unwrap();
    assert_eq!(host.metric("nexus_router.routed.data_operations"), Some(1));
    assert_eq!(host.metric("nexus_router.spoofed_headers_removed"), Some(2));
    assert!(host.violations().is_empty(), "{:?}", host.violations());
}

#[test]
fn unmatched_request_gets_the_json_404() {
    let mut host = router(CONFIG);
    assert!(host.start().unwrap());
    let mut http = host.http_context().unwrap();
    let action = http
        .request_headers(&[(":method", "GET"), (":path", "/cortex/v1/infer")], true)
        .unwrap();
    assert_eq!(action, Action::Pause);
    let resp = http.local_response().unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(
        String::from_utf8(resp.body).unwrap(),
        r#"{"detail":"no route matches GET /cortex/v1/infer","error":"no_route"}"#
    );
    assert!(resp
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));
}

#[test]
fn invalid_configuration_is_refused_with_every_path_logged() {
    let mut host = router(
        r#"{"rules": [{"name": "x", "category": "nope", "match": {"path": {"prefix": "lake"}}}]}"#,
    );
    assert!(!host.start().unwrap(), "configure must return false");
    let errors: Vec<&str> = host
        .logs()
        .iter()
        .filter(|l| l.level == LogLevel::Error)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("nexus-router: invalid configuration: "),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("$.rules[0].category: unknown category \"nope\""),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("$.rules[0].match.path.prefix: path \"lake\" must start with '/'"));
}

#[test]
fn strict_host_rejects_what_the_router_never_needs() {
    // The router makes no callouts: if it ever did, strict mode would fail the request.
    let mut host = router(CONFIG);
    assert!(host.start().unwrap());
    let mut http = host.http_context().unwrap();
    http.request_headers(&[(":method", "GET"), (":path", "/lake/x")], true)
        .unwrap();
    assert!(host.http_calls().is_empty() && host.grpc_calls().is_empty());
}

#[test]
fn fuel_per_request_callback() {
    let mut host = router(CONFIG);
    assert!(host.start().unwrap());
    // Warm up once (first request defines metrics), then measure steady-state requests.
    for path in ["/lake/warm", "/lake/tables", "/cortex/v2/infer"] {
        let mut http = host.http_context().unwrap();
        let method = if path.starts_with("/cortex") {
            "POST"
        } else {
            "GET"
        };
        http.request_headers(
            &[
                (":method", method),
                (":path", path),
                ("user-agent", "curl/8"),
                ("accept", "*/*"),
            ],
            true,
        )
        .unwrap();
        http.finish().unwrap();
    }
    let per_callback: Vec<_> = host
        .fuel_log()
        .iter()
        .filter(|(name, _)| name == "proxy_on_request_headers")
        .map(|(_, fuel)| *fuel)
        .collect();
    println!(
        "nexus-router fuel: configure+start and per callback: {:?}",
        host.fuel_log()
    );
    println!("nexus-router fuel per on_request_headers (warm-up, prefix, regex): {per_callback:?}");
    assert_eq!(per_callback.len(), 3);
    assert!(per_callback.iter().all(|f| *f > 0));
}

/// One steady-state lake request through a router whose host logs at `level`: the hostcalls
/// of its `on_request_headers`, what it logged and the fuel it took.
fn request_at(level: LogLevel) -> (Vec<&'static str>, Vec<String>, u64) {
    let module = nexus_tests::filter_module("nexus_router").unwrap();
    let mut host = Host::builder()
        .plugin_config(CONFIG.as_bytes().to_vec())
        .log_level(level)
        .build_from_file(module)
        .unwrap();
    assert!(host.start().unwrap());
    let request = [(":method", "GET"), (":path", "/lake/tables")];
    // The first request defines the metric; the second is the steady state.
    let mut http = host.http_context().unwrap();
    http.request_headers(&request, true).unwrap();
    http.finish().unwrap();
    let before = host.hostcall_log().len();
    host.take_logs();
    let mut http = host.http_context().unwrap();
    http.request_headers(&request, true).unwrap();
    http.finish().unwrap();
    let calls = host.hostcall_log()[before..].to_vec();
    let logs = host.take_logs().into_iter().map(|l| l.message).collect();
    let fuel = host
        .fuel_log()
        .iter()
        .rev()
        .find(|(name, _)| name == "proxy_on_request_headers")
        .map_or(0, |(_, fuel)| *fuel);
    (calls, logs, fuel)
}

/// The per-request log line costs one hostcall when Envoy's level hides it (the level is
/// asked, nothing is read or formatted), and is one debug line with the ids when shown.
#[test]
fn the_request_line_costs_one_hostcall_when_off_and_carries_the_ids_when_on() {
    let (quiet, quiet_logs, quiet_fuel) = request_at(LogLevel::Info);
    assert!(quiet_logs.is_empty(), "{quiet_logs:?}");
    assert_eq!(
        quiet
            .iter()
            .filter(|c| **c == "proxy_get_log_level")
            .count(),
        1,
        "{quiet:?}"
    );
    let (loud, loud_logs, loud_fuel) = request_at(LogLevel::Debug);
    assert_eq!(loud_logs.len(), 1, "{loud_logs:?}");
    let line = &loud_logs[0];
    assert!(
        line.starts_with(r#"[Tags: "correlation_id":""#) && line.ends_with("] routed"),
        "{line}"
    );
    assert!(
        line.contains(r#""trace_id":""#) && line.contains(r#""rule":"lake""#),
        "{line}"
    );
    // Logging adds the log call and nothing else: the ids are the ones the router set.
    let mut extra = loud.clone();
    for c in &quiet {
        if let Some(i) = extra.iter().position(|x| x == c) {
            extra.remove(i);
        }
    }
    assert_eq!(extra, ["proxy_log"], "info: {quiet:?}\ndebug: {loud:?}");
    println!(
        "nexus-router per request, line off / on: {} / {} hostcalls, {quiet_fuel} / {loud_fuel} fuel",
        quiet.len(),
        loud.len()
    );
}

/// With the root ticking (reports on, as in the mesh and `nexus up`), Envoy's level is read at
/// each tick, not per request: a request asks nothing, and a level changed at runtime applies
/// from the next tick.
#[test]
fn with_reports_on_the_level_is_read_per_tick_not_per_request() {
    const SINK: &str = "outbound|8080||nexus-controller-leader.nexus-system.svc.cluster.local";
    let vm = format!(
        r#"{{"report":{{"cluster":"{SINK}","module_sha256":"{}","interval_ms":10000}}}}"#,
        "ab".repeat(32)
    );
    let module = nexus_tests::filter_module("nexus_router").unwrap();
    let mut host = Host::builder()
        .vm_config(vm.into_bytes())
        .plugin_config(CONFIG.as_bytes().to_vec())
        .allow_cluster(SINK)
        .log_level(LogLevel::Info)
        .build_from_file(module)
        .unwrap();
    assert!(host.start().unwrap());
    host.tick().unwrap();
    let request = [(":method", "GET"), (":path", "/lake/tables")];
    let one = |host: &mut Host| {
        let before = host.hostcall_log().len();
        host.take_logs();
        let mut http = host.http_context().unwrap();
        http.request_headers(&request, true).unwrap();
        http.finish().unwrap();
        let asked = host.hostcall_log()[before..]
            .iter()
            .filter(|c| **c == "proxy_get_log_level")
            .count();
        (asked, host.take_logs().len())
    };
    assert_eq!(one(&mut host), (0, 0), "info: no level read, no line");
    host.set_log_level(LogLevel::Debug);
    assert_eq!(
        one(&mut host),
        (0, 0),
        "until the next tick the level read at the last holds"
    );
    host.tick().unwrap();
    assert_eq!(
        one(&mut host),
        (0, 1),
        "debug from the next tick: the request's line"
    );
}

/// A GraphQL POST is held at its headers, then routed by its body under the strict host.
#[test]
fn a_graphql_post_is_held_then_routed_by_its_body() {
    let config = r#"{"rules": [{"name": "gql", "category": "data_operations",
      "match": {"path": {"exact": "/graphql"}},
      "graphql": {"fields": {"streams": "stream"}}}]}"#;
    let mut host = router(config);
    assert!(host.start().unwrap());
    let mut http = host.http_context().unwrap();
    let headers = [(":method", "POST"), (":path", "/graphql")];
    assert_eq!(
        http.request_headers(&headers, false).unwrap(),
        Action::Pause
    );
    let body = br#"{"query": "query Live { streams { id } }"}"#;
    assert_eq!(http.request_body(body, true).unwrap(), Action::Continue);
    assert_eq!(
        http.request_header("x-nexus-upstream").as_deref(),
        Some("stream")
    );
    assert_eq!(
        http.request_header("x-nexus-graphql-operation").as_deref(),
        Some("Live")
    );
    http.finish().unwrap();
}
