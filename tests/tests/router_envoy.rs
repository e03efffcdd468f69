//! nexus-router in real Envoy: routing headers reach the upstream, spoofing does not, and a bad
//! configuration stops Envoy with a path-precise error.

use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::upstream::Upstream;

const ROUTER_CONFIG: &str = r#"{"rules": [
  {"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}},
  {"name": "stream", "category": "stream_processing", "match": {"path": {"prefix": "/stream/"}}}
]}"#;

fn router(config: &str) -> WasmFilter {
    WasmFilter {
        name: "nexus-router".into(),
        module: nexus_tests::filter_module("nexus_router").unwrap(),
        config: config.into(),
    }
}

struct Setup {
    lake: Upstream,
    stream: Upstream,
    envoy: Envoy,
}

fn setup() -> Setup {
    let lake = Upstream::start("lake").unwrap();
    let stream = Upstream::start("stream").unwrap();
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![router(ROUTER_CONFIG)],
        upstreams: vec![
            ("lake".into(), lake.port()),
            ("stream".into(), stream.port()),
        ],
        ..Default::default()
    })
    .unwrap();
    Setup {
        lake,
        stream,
        envoy,
    }
}

#[test]
fn routed_requests_reach_their_upstream_with_injected_headers_and_no_spoofed_ones() {
    let s = setup();
    let resp = client::get(
        s.envoy.port,
        "/lake/tables?limit=1",
        &[
            ("x-nexus-upstream", "stream"),
            ("x-nexus-client-id", "admin"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["upstream"], "lake");

    let got = s.lake.requests();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.path, "/lake/tables?limit=1");
    assert_eq!(req.header("x-nexus-category"), Some("data_operations"));
    assert_eq!(req.header("x-nexus-upstream"), Some("lake"));
    assert_eq!(req.header("x-nexus-rule"), Some("lake"));
    assert_eq!(
        req.header("x-envoy-max-retries"),
        None,
        "Envoy consumes its control headers"
    );
    assert_eq!(
        req.header("x-nexus-client-id"),
        None,
        "spoofed identity must not arrive"
    );
    assert_eq!(
        req.headers
            .iter()
            .filter(|(k, _)| k == "x-nexus-upstream")
            .count(),
        1
    );
    assert_eq!(
        req.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let request_id = req.header("x-request-id").unwrap_or_default();
    assert!(nexus_router_id_is_valid(request_id), "{request_id:?}");
    assert!(
        s.stream.requests().is_empty(),
        "spoofed upstream must not be reached"
    );
}

/// HTTP allows `obs-text` (bytes 0x80-0xFF) in header values and Envoy passes them on. The
/// proxy-wasm SDK panics on such a value (its header decoding unwraps UTF-8), which kills the
/// VM and fails every later request on the worker; Nexus decodes lossily and routes on.
#[test]
fn a_header_value_that_is_not_utf8_is_routed_and_the_vm_survives() {
    let s = setup();
    for _ in 0..2 {
        let resp = client::raw(
            s.envoy.port,
            b"GET /lake/t HTTP/1.1\r\nhost: nexus.test\r\nx-note: caf\xe9\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), s.envoy.log());
        assert_eq!(resp.json().unwrap()["upstream"], "lake");
    }
    let got = s.lake.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("x-nexus-rule"), Some("lake"));
}

#[test]
fn timeout_header_is_what_envoy_enforces() {
    let s = setup();
    let resp = client::get(s.envoy.port, "/stream/events", &[]).unwrap();
    assert_eq!(resp.status, 200);
    // Envoy forwards the effective timeout to the upstream as x-envoy-expected-rq-timeout-ms.
    let got = s.stream.requests();
    assert_eq!(
        got[0].header("x-envoy-expected-rq-timeout-ms"),
        Some("5000")
    );
    assert_eq!(got[0].header("x-nexus-category"), Some("stream_processing"));
}

#[test]
fn unmatched_requests_get_a_json_404_from_the_filter() {
    let s = setup();
    let resp = client::get(s.envoy.port, "/nowhere", &[]).unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.json().unwrap(),
        serde_json::json!({"error": "no_route", "detail": "no route matches GET /nowhere"})
    );
    assert!(s.lake.requests().is_empty() && s.stream.requests().is_empty());
}

#[test]
fn invalid_configuration_fails_envoy_with_a_path_precise_error() {
    let log = Envoy::start_expecting_failure(&EnvoyConfig {
        filters: vec![router(
            r#"{"rules": [{"name": "bad", "category": "data_operations",
                "match": {"path": {"regex": "/lake/(unclosed"}}}]}"#,
        )],
        ..Default::default()
    })
    .unwrap();
    assert!(
        log.contains(
            "nexus-router: invalid configuration: $.rules[0].match.path.regex: invalid regex"
        ),
        "log did not carry the path-precise error:\n{log}"
    );
}

fn nexus_router_id_is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
