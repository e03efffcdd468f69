//! The real nexus_guard.wasm under the strict wasmtime host: sanitization refusals, a request
//! with PII blocked, a response redacted (valid JSON, `content-length` removed: headers go out
//! before the body under Proxy-Wasm, Envoy frames the new body) or replaced, a
//! body over the scan cap passed and counted, detect counting a streamed body, and the fuel
//! the detect path spends per byte.

use proxy_wasm_test_host::{Action, Host};

const CONFIG: &str = r#"{"rules": [
  {"name": "pay", "match": {"path": {"prefix": "/pay/"}},
   "policy": {"methods": ["GET", "POST"], "max_scan_bytes": 8192,
              "request": {"action": "block"},
              "response": {"action": "redact", "fields": {"deny": ["password"]}}}},
  {"name": "strict", "match": {"path": {"prefix": "/strict/"}},
   "policy": {"response": {"action": "block", "detectors": ["card", "ssn"]}}},
  {"name": "watch", "match": {"path": {"prefix": "/watch/"}},
   "policy": {"request": {"action": "detect"}, "response": {"action": "detect"}}}
]}"#;

fn host() -> Host {
    let mut host = Host::builder()
        .plugin_config(CONFIG)
        .build_from_file(nexus_tests::filter_module("nexus_guard").unwrap())
        .unwrap();
    assert!(host.start().unwrap());
    host
}

fn req(method: &'static str, path: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", method),
        (":path", path),
        (":authority", "api.example"),
        ("content-type", "application/json"),
    ]
}

#[test]
fn ambiguous_paths_and_methods_are_refused_naming_the_rule() {
    let mut host = host();
    for (method, path, status, error) in [
        ("GET", "/pay/a%2Fb", 400, "encoded_slash"),
        ("GET", "/pay/%2e%2e/admin", 400, "dot_segment"),
        ("GET", "/pay/a%00", 400, "control_character"),
        ("DELETE", "/pay/x", 405, "method_not_allowed"),
    ] {
        let mut http = host.http_context().unwrap();
        assert_eq!(
            http.request_headers(&req(method, path), true).unwrap(),
            Action::Pause
        );
        let resp = http.local_response().unwrap();
        assert_eq!(resp.status, status, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["error"], error);
        http.finish().unwrap();
    }
    assert_eq!(host.metric("nexus_guard.refused.encoded_slash"), Some(1));
}

#[test]
fn a_request_body_with_pii_is_blocked_by_type_never_value() {
    let mut host = host();
    let mut http = host.http_context().unwrap();
    assert_eq!(
        http.request_headers(&req("POST", "/pay/charge"), false)
            .unwrap(),
        Action::Continue
    );
    let body = br#"{"amount": 12, "card": "4111 1111 1111 1111", "holder": "jane@example.com"}"#;
    let (a, b) = body.split_at(30);
    assert_eq!(http.request_body(a, false).unwrap(), Action::Pause);
    assert_eq!(http.request_body(b, true).unwrap(), Action::Pause);
    let resp = http.local_response().unwrap();
    assert_eq!(resp.status, 422);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["error"], "pii_detected");
    assert_eq!(v["types"], serde_json::json!(["email", "card"]));
    let text = String::from_utf8_lossy(&resp.body);
    assert!(!text.contains("4111") && !text.contains("jane"), "{text}");
    http.finish().unwrap();
    assert_eq!(host.metric("nexus_guard.request.blocked"), Some(1));
}

#[test]
fn a_response_is_redacted_with_valid_json_and_no_stale_length() {
    let mut host = host();
    let mut http = host.http_context().unwrap();
    assert_eq!(
        http.request_headers(&req("GET", "/pay/me"), true).unwrap(),
        Action::Continue
    );
    let body = br#"{"user": {"email": "jane@example.com", "ssn": "123-45-6789", "password": "hunter2"}, "n": 4111111111111111}"#;
    let len = body.len().to_string();
    let headers = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    assert_eq!(
        http.response_headers(&headers, false).unwrap(),
        Action::Continue
    );
    assert_eq!(http.response_header("content-length"), None);
    let (a, b) = body.split_at(40);
    assert_eq!(http.response_body(a, false).unwrap(), Action::Pause);
    assert_eq!(http.response_body(b, true).unwrap(), Action::Continue);
    let out = http.response_body_buffer();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["user"]["email"], "[REDACTED:email]");
    assert_eq!(v["user"]["ssn"], "[REDACTED:ssn]");
    assert_eq!(v["user"]["password"], "[REDACTED:field]");
    assert_eq!(v["n"], "[REDACTED:card]");
    http.finish().unwrap();
    assert_eq!(host.metric("nexus_guard.response.redacted"), Some(1));
}

#[test]
fn a_response_with_pii_under_block_has_its_body_replaced_by_the_refusal() {
    let mut host = host();
    let mut http = host.http_context().unwrap();
    http.request_headers(&req("GET", "/strict/x"), true)
        .unwrap();
    let headers = [(":status", "200"), ("content-type", "text/plain")];
    assert_eq!(
        http.response_headers(&headers, false).unwrap(),
        Action::Continue
    );
    assert_eq!(
        http.response_body(b"ssn 123-45-6789, mail a@example.com", true)
            .unwrap(),
        Action::Continue
    );
    let v: serde_json::Value = serde_json::from_slice(&http.response_body_buffer()).unwrap();
    assert_eq!(v["error"], "pii_in_response");
    assert_eq!(v["types"], serde_json::json!(["ssn"]));
}

#[test]
fn bodies_over_the_cap_pass_unscanned_and_are_counted() {
    let mut host = host();
    let big = format!(
        r#"{{"email": "jane@example.com", "pad": "{}"}}"#,
        "x".repeat(9000)
    );
    // Declared: decided on the headers.
    let mut http = host.http_context().unwrap();
    http.request_headers(&req("GET", "/pay/big"), true).unwrap();
    let len = big.len().to_string();
    let headers = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    assert_eq!(
        http.response_headers(&headers, false).unwrap(),
        Action::Continue
    );
    assert_eq!(
        http.response_body(big.as_bytes(), true).unwrap(),
        Action::Continue
    );
    assert_eq!(http.response_body_buffer(), big.as_bytes());
    http.finish().unwrap();
    // Chunked: found out while buffering.
    let mut http = host.http_context().unwrap();
    http.request_headers(&req("GET", "/pay/big"), true).unwrap();
    let headers = [(":status", "200"), ("content-type", "application/json")];
    assert_eq!(
        http.response_headers(&headers, false).unwrap(),
        Action::Continue
    );
    let (a, b) = big.as_bytes().split_at(5000);
    assert_eq!(http.response_body(a, false).unwrap(), Action::Pause);
    assert_eq!(http.response_body(b, true).unwrap(), Action::Continue);
    http.finish().unwrap();
    assert_eq!(host.metric("nexus_guard.response.unscanned"), Some(2));
    assert_eq!(host.metric("nexus_guard.response.redacted"), None);
}

#[test]
fn detect_streams_the_body_and_counts_findings_with_its_fuel_per_byte() {
    let mut host = host();
    let body = nexus_tests::body_upstream::sample_json(64 * 1024);
    let mut http = host.http_context().unwrap();
    assert_eq!(
        http.request_headers(&req("GET", "/watch/x"), true).unwrap(),
        Action::Continue
    );
    let headers = [(":status", "200"), ("content-type", "application/json")];
    assert_eq!(
        http.response_headers(&headers, false).unwrap(),
        Action::Continue
    );
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(16 * 1024).collect();
    let mut fuel = 0;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(
            http.response_body(c, i + 1 == chunks.len()).unwrap(),
            Action::Continue
        );
        fuel += http.last_fuel().unwrap();
    }
    http.finish().unwrap();
    let emails = body.matches("@example.com").count() as u64;
    assert_eq!(
        host.metric("nexus_guard.response.findings.email"),
        Some(emails)
    );
    println!(
        "detect: {} bytes, {fuel} fuel, {:.1} fuel/byte",
        body.len(),
        fuel as f64 / body.len() as f64
    );
}

/// CPU seconds this thread has used, from /proc (the machine may be shared).
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f[11] + f[12]) / 100.0
}

/// Prints the detect path's rate in wasmtime (fuel off): informational, never asserted;
/// `cargo xtask bench guard` measures it in Envoy's V8.
#[test]
fn detect_rate_in_wasmtime_is_reported() {
    let mut host = Host::builder()
        .plugin_config(CONFIG)
        .fuel(false)
        .build_from_file(nexus_tests::filter_module("nexus_guard").unwrap())
        .unwrap();
    assert!(host.start().unwrap());
    let body = nexus_tests::body_upstream::sample_json(1024 * 1024);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(64 * 1024).collect();
    let (mut spent, rounds) = (0.0, 20);
    for _ in 0..rounds {
        let mut http = host.http_context().unwrap();
        http.request_headers(&req("GET", "/watch/x"), true).unwrap();
        let headers = [(":status", "200"), ("content-type", "application/json")];
        http.response_headers(&headers, false).unwrap();
        let start = thread_cpu_seconds();
        for (i, c) in chunks.iter().enumerate() {
            let eos = i + 1 == chunks.len();
            assert_eq!(http.response_body(c, eos).unwrap(), Action::Continue);
        }
        spent += thread_cpu_seconds() - start;
        http.finish().unwrap();
    }
    let mb = (body.len() * rounds) as f64 / 1e6;
    println!(
        "detect in wasmtime: {mb:.0} MB in {spent:.2} CPU s = {:.0} MB/s",
        mb / spent.max(0.01)
    );
}
