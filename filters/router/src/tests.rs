use super::*;
use nexus_filter_core::testing::{MemHeaders, MemLog, MemMetrics};

const DATAPUNK: &str = r#"{
  "rules": [
    {"name": "lake-grpc", "category": "data_operations",
     "match": {"grpc_service": "datapunk.lake.v1.Lake"}},
    {"name": "stream", "category": "stream_processing", "match": {"path": {"prefix": "/stream/"}}},
    {"name": "cortex-infer", "category": "ai_inference",
     "match": {"path": {"regex": "/cortex/v[0-9]+/infer"}, "methods": ["POST"]}},
    {"name": "forge-admin", "category": "model_management", "timeout_ms": 60000,
     "retry": {"max_retries": 0, "retry_on": "connect-failure"},
     "match": {"path": {"prefix": "/forge/"}, "headers": [{"name": "x-tenant", "exact": "admin"}]}},
    {"name": "forge", "category": "model_management", "match": {"path": {"prefix": "/forge/"}}},
    {"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}}
  ]
}"#;

fn route(config: &str, headers: &[(&str, &str)]) -> (Action, MemHeaders, MemMetrics) {
    let router = Router::from_json(config.as_bytes()).unwrap();
    let mut h = MemHeaders::new(headers);
    let metrics = MemMetrics::default();
    let log = MemLog::default();
    let action = router.on_request_headers(&mut h, &mut IdGenerator::new(7), &metrics, &log);
    (action, h, metrics)
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":path", path), (":authority", "nexus")]
}

#[test]
fn lake_path_gets_category_upstream_timeout_and_retries() {
    let (action, h, m) = route(DATAPUNK, &get("/lake/tables?limit=3"));
    assert_eq!(action, Action::Continue);
    assert_eq!(h.get(HEADER_CATEGORY).as_deref(), Some("data_operations"));
    assert_eq!(h.get(HEADER_UPSTREAM).as_deref(), Some("lake"));
    assert_eq!(h.get(HEADER_RULE).as_deref(), Some("lake"));
    assert_eq!(h.get(HEADER_TIMEOUT).as_deref(), Some("30000"));
    assert_eq!(h.get(HEADER_MAX_RETRIES).as_deref(), Some("3"));
    assert_eq!(
        h.get(HEADER_RETRY_ON).as_deref(),
        Some("5xx,reset,connect-failure,refused-stream")
    );
    assert_eq!(m.value("nexus_router.routed.data_operations"), 1);
}

/// A POST may have reached the upstream and taken effect before a 5xx or a reset: it is
/// retried only when the upstream cannot have seen it, unless the rule says it may be.
#[test]
fn non_idempotent_methods_are_retried_only_before_the_upstream_saw_them() {
    for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
        let (_, h, _) = route(DATAPUNK, &[(":method", method), (":path", "/lake/t")]);
        assert_eq!(
            h.get(HEADER_RETRY_ON).as_deref(),
            Some("5xx,reset,connect-failure,refused-stream"),
            "{method}"
        );
    }
    for method in ["POST", "PATCH", "CONNECT", "get"] {
        let (_, h, _) = route(DATAPUNK, &[(":method", method), (":path", "/lake/t")]);
        assert_eq!(
            h.get(HEADER_RETRY_ON).as_deref(),
            Some("connect-failure,refused-stream"),
            "{method}"
        );
        assert_eq!(h.get(HEADER_MAX_RETRIES).as_deref(), Some("3"), "{method}");
    }
    let allowed = DATAPUNK.replace(
        r#""timeout_ms": 60000,
     "retry": {"max_retries": 0, "retry_on": "connect-failure"},"#,
        r#""retry": {"max_retries": 2, "retry_on": "5xx", "non_idempotent": true},"#,
    );
    let admin = [
        (":method", "POST"),
        (":path", "/forge/x"),
        ("x-tenant", "admin"),
    ];
    let (_, h, _) = route(&allowed, &admin);
    assert_eq!(
        h.get(HEADER_RETRY_ON).as_deref(),
        Some("5xx"),
        "the rule allows it"
    );
    // Nothing safe to retry on: no retries, and no x-envoy-retry-on a client could have sent.
    let unsafe_only = DATAPUNK.replace(r#""retry_on": "connect-failure""#, r#""retry_on": "5xx""#);
    let post = [
        (":method", "POST"),
        (":path", "/forge/x"),
        ("x-tenant", "admin"),
        (HEADER_RETRY_ON, "5xx"),
    ];
    let (_, h, _) = route(&unsafe_only, &post);
    assert_eq!(h.get(HEADER_MAX_RETRIES).as_deref(), Some("0"));
    assert_eq!(h.get(HEADER_RETRY_ON), None);
}

#[test]
fn each_seed_category_has_its_timeout() {
    for (path, method, upstream, timeout) in [
        ("/stream/events", "GET", "stream", "5000"),
        ("/cortex/v2/infer", "POST", "cortex", "10000"),
        ("/forge/models", "GET", "forge", "20000"),
        ("/lake/x", "GET", "lake", "30000"),
    ] {
        let (_, h, _) = route(DATAPUNK, &[(":method", method), (":path", path)]);
        assert_eq!(h.get(HEADER_UPSTREAM).as_deref(), Some(upstream), "{path}");
        assert_eq!(h.get(HEADER_TIMEOUT).as_deref(), Some(timeout), "{path}");
    }
}

#[test]
fn first_matching_rule_wins_and_rule_overrides_category() {
    let mut headers = get("/forge/models");
    headers.push(("x-tenant", "admin"));
    let (_, h, _) = route(DATAPUNK, &headers);
    assert_eq!(h.get(HEADER_RULE).as_deref(), Some("forge-admin"));
    assert_eq!(h.get(HEADER_TIMEOUT).as_deref(), Some("60000"));
    assert_eq!(h.get(HEADER_MAX_RETRIES).as_deref(), Some("0"));
    assert_eq!(h.get(HEADER_RETRY_ON).as_deref(), Some("connect-failure"));
}

#[test]
fn method_and_regex_must_both_match() {
    let (action, _, _) = route(DATAPUNK, &get("/cortex/v2/infer"));
    assert!(matches!(action, Action::Respond(ref r) if r.status == 404));
    // The regex is anchored like Envoy's safe_regex: a longer path does not match.
    let (action, _, _) = route(
        DATAPUNK,
        &[(":method", "POST"), (":path", "/cortex/v2/infer/x")],
    );
    assert!(matches!(action, Action::Respond(ref r) if r.status == 404));
}

#[test]
fn grpc_service_matches_only_grpc_requests() {
    let grpc = [
        (":method", "POST"),
        (":path", "/datapunk.lake.v1.Lake/Query"),
        ("content-type", "application/grpc+proto"),
    ];
    let (_, h, _) = route(DATAPUNK, &grpc);
    assert_eq!(h.get(HEADER_RULE).as_deref(), Some("lake-grpc"));
    let (action, _, _) = route(
        DATAPUNK,
        &[
            (":method", "POST"),
            (":path", "/datapunk.lake.v1.Lake/Query"),
        ],
    );
    assert!(
        matches!(action, Action::Respond(_)),
        "plain HTTP is not gRPC"
    );
}

#[test]
fn spoofed_nexus_headers_are_removed_and_never_matched() {
    let config = r#"{"rules": [
        {"name": "spoofable", "category": "ai_inference",
         "match": {"headers": [{"name": "x-nexus-client-id"}]}},
        {"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}}]}"#;
    let mut headers = get("/lake/x");
    headers.extend([
        ("x-nexus-upstream", "forge"),
        ("x-nexus-client-id", "admin"),
        ("x-nexus-anything", "1"),
    ]);
    let (_, h, m) = route(config, &headers);
    assert_eq!(h.get(HEADER_UPSTREAM).as_deref(), Some("lake"));
    assert_eq!(h.get("x-nexus-client-id"), None);
    assert_eq!(h.get("x-nexus-anything"), None);
    assert_eq!(m.value("nexus_router.spoofed_headers_removed"), 3);
}

#[test]
fn no_match_is_a_json_404_by_default() {
    let (action, h, m) = route(DATAPUNK, &get("/nowhere?q=1"));
    let Action::Respond(resp) = action else {
        panic!("expected a local response")
    };
    assert_eq!(resp.status, 404);
    assert_eq!(
        String::from_utf8(resp.body).unwrap(),
        r#"{"detail":"no route matches GET /nowhere","error":"no_route"}"#
    );
    assert_eq!(h.get(HEADER_UPSTREAM), None);
    assert_eq!(m.value("nexus_router.no_route"), 1);
}

#[test]
fn no_match_can_fall_back_to_a_default_category() {
    let config = r#"{"on_no_match": {"action": "default", "category": "data_operations"}}"#;
    let (action, h, _) = route(config, &get("/anything"));
    assert_eq!(action, Action::Continue);
    assert_eq!(h.get(HEADER_UPSTREAM).as_deref(), Some("lake"));
    assert_eq!(h.get(HEADER_RULE).as_deref(), Some("default"));
}

#[test]
fn valid_correlation_headers_are_kept() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = get("/lake/x");
    headers.extend([
        ("x-request-id", "abc-123"),
        ("traceparent", tp),
        ("tracestate", "a=b"),
    ]);
    let (_, h, _) = route(DATAPUNK, &headers);
    assert_eq!(h.get("x-request-id").as_deref(), Some("abc-123"));
    assert_eq!(h.get("traceparent").as_deref(), Some(tp));
    assert_eq!(h.get("tracestate").as_deref(), Some("a=b"));
}

#[test]
fn invalid_correlation_headers_are_replaced() {
    let mut headers = get("/lake/x");
    headers.extend([
        ("x-request-id", "bad id\r\nx: y"),
        (
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
        ("tracestate", "a=b"),
    ]);
    let (_, h, _) = route(DATAPUNK, &headers);
    let id = h.get("x-request-id").unwrap();
    assert!(
        is_valid_request_id(&id) && id.len() == 36 && &id[14..15] == "4",
        "{id}"
    );
    let tp = h.get("traceparent").unwrap();
    assert!(is_valid_traceparent(&tp), "{tp}");
    assert_eq!(h.get("tracestate"), None);
}

#[test]
fn generated_ids_differ_between_requests() {
    let router = Router::from_json(b"{}").unwrap();
    let mut ids = IdGenerator::new(1);
    let metrics = MemMetrics::default();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let mut h = MemHeaders::new(&get("/lake/x"));
        router.on_request_headers(&mut h, &mut ids, &metrics, &MemLog::default());
        assert!(seen.insert(h.get("x-request-id").unwrap()));
    }
}

#[test]
fn traceparent_validation_follows_w3c() {
    assert!(is_valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ));
    assert!(!is_valid_traceparent(
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
    ));
    assert!(!is_valid_traceparent(
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ));
    assert!(!is_valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
    ));
    assert!(!is_valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"
    ));
    assert!(is_valid_traceparent(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"
    ));
}

#[test]
fn invalid_config_reports_every_problem() {
    let err = Router::from_json(
        br#"{"rules":[{"name":"r","category":"data_operations","match":{"path":{"regex":"a("}}}],
             "default_timeout_ms": 0}"#,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("$.default_timeout_ms: timeout 0 ms"),
        "{text}"
    );
    assert!(
        text.contains("$.rules[0].match.path.regex: invalid regex"),
        "{text}"
    );
}

/// The tags of a request line, as a log reader lifts them, and its message.
fn request_line(log: &MemLog) -> (serde_json::Value, String) {
    let lines = log.0.borrow();
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    let (level, line) = &lines[0];
    assert_eq!(*level, nexus_filter_core::Level::Debug);
    let rest = line.strip_prefix("[Tags: ").unwrap();
    let (tags, message) = rest.split_once("] ").unwrap();
    (
        serde_json::from_str(&format!("{{{tags}}}")).unwrap(),
        message.to_string(),
    )
}

#[test]
fn a_routed_request_logs_its_ids_and_decision_in_one_line() {
    let router = Router::from_json(DATAPUNK.as_bytes()).unwrap();
    let log = MemLog::default();
    let mut h = MemHeaders::new(&get("/lake/tables"));
    router.on_request_headers(
        &mut h,
        &mut IdGenerator::new(3),
        &MemMetrics::default(),
        &log,
    );
    let (tags, message) = request_line(&log);
    assert_eq!(message, "routed");
    // The ids it made are the ones the upstream receives.
    assert_eq!(
        tags["correlation_id"],
        h.get("x-request-id").unwrap().as_str()
    );
    let tp = h.get("traceparent").unwrap();
    assert_eq!(tags["trace_id"], tp.split('-').nth(1).unwrap());
    assert_eq!(tags["category"], "data_operations");
    assert_eq!(tags["rule"], "lake");
    assert_eq!(tags["upstream"], "lake");

    // Ids a client sent, valid, are kept and logged.
    let log = MemLog::default();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = get("/nowhere");
    headers.extend([("x-request-id", "client-42"), ("traceparent", tp)]);
    let mut h = MemHeaders::new(&headers);
    let action = router.on_request_headers(
        &mut h,
        &mut IdGenerator::new(3),
        &MemMetrics::default(),
        &log,
    );
    assert!(matches!(action, Action::Respond(_)));
    let (tags, message) = request_line(&log);
    assert_eq!(message, "no route");
    assert_eq!(tags["correlation_id"], "client-42");
    assert_eq!(tags["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(tags["path"], "/nowhere");
}
