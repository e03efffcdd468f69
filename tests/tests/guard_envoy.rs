//! nexus-guard in real Envoy: a request body with PII blocked before it reaches the upstream,
//! a response body redacted (valid JSON, framed right: the upstream's `content-length` is
//! removed and Envoy sends the new body chunked), a chunked response
//! redacted, a body over the scan cap passed unchanged and counted in Envoy's stats, and a
//! path Envoy leaves ambiguous refused; audit records kept while the audit service is down,
//! counted, and delivered when it comes back.

use nexus_tests::body_upstream::{BodyUpstream, PII_JSON};
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::upstream::Upstream;

const CONFIG: &str = r#"{"rules": [{"name": "api", "match": {"path": {"prefix": "/"}},
  "policy": {"max_scan_bytes": 8192,
             "request": {"action": "block", "detectors": ["card", "ssn", "iban", "jwt", "api_key"]},
             "response": {"action": "redact", "fields": {"allow": ["order_id"]}}}}]}"#;

fn start(upstream: &BodyUpstream) -> Envoy {
    Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-guard".into(),
            module: nexus_tests::filter_module("nexus_guard").unwrap(),
            config: CONFIG.into(),
        }],
        upstreams: vec![("api".into(), upstream.port())],
        ..Default::default()
    })
    .unwrap()
}

const UPSTREAM: (&str, &str) = ("x-nexus-upstream", "api");

#[test]
fn guard_in_envoy_blocks_redacts_and_counts_what_it_cannot_scan() {
    let upstream = BodyUpstream::start().unwrap();
    let envoy = start(&upstream);
    request_with_pii_is_blocked(&envoy, &upstream);
    response_is_redacted(&envoy, "/pii");
    response_is_redacted(&envoy, "/pii?chunked");
    over_the_cap_passes_and_is_counted(&envoy);
    ambiguous_path_is_refused(&envoy, &upstream);
}

fn request_with_pii_is_blocked(envoy: &Envoy, upstream: &BodyUpstream) {
    let before = upstream.served();
    let json = [UPSTREAM, ("content-type", "application/json")];
    let body = br#"{"amount": 10, "card": "4111-1111-1111-1111", "ssn": "123-45-6789"}"#;
    let resp = client::request(envoy.port, "POST", "/pay", &json, body)
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(resp.status, 422, "{}", resp.text());
    let v = resp.json().unwrap();
    assert_eq!(v["error"], "pii_detected");
    assert_eq!(v["types"], serde_json::json!(["card", "ssn"]));
    assert!(!resp.text().contains("4111"), "{}", resp.text());
    assert_eq!(
        upstream.served(),
        before,
        "a blocked request reached the upstream"
    );
    // The same request without PII goes through.
    let clean = br#"{"amount": 10, "note": "nothing to see"}"#;
    let resp = client::request(envoy.port, "POST", "/pay", &json, clean).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(upstream.served(), before + 1);
}

fn response_is_redacted(envoy: &Envoy, path: &str) {
    let resp = client::get(envoy.port, path, &[UPSTREAM]).unwrap();
    assert_eq!(resp.status, 200, "{path}");
    // The upstream's length is gone (it no longer holds); Envoy frames the new body.
    assert_eq!(resp.header("content-length"), None, "{path}");
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"), "{path}");
    let v = resp
        .json()
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", resp.text()));
    assert_eq!(v["user"]["email"], "[REDACTED:email]", "{path}");
    assert_eq!(v["user"]["phone"], "[REDACTED:phone]");
    assert_eq!(v["user"]["ssn"], "[REDACTED:ssn]");
    assert_eq!(v["payment"]["card"], "[REDACTED:card]");
    assert_eq!(v["payment"]["iban"], "[REDACTED:iban]");
    // Allow-listed, and untouched text.
    assert_eq!(v["order_id"], "4111111111111111");
    assert_eq!(v["user"]["name"], "Jane Doe");
    assert!(resp.body.len() != PII_JSON.len());
}

fn over_the_cap_passes_and_is_counted(envoy: &Envoy) {
    let stat = "wasmcustom.nexus_guard.response.unscanned";
    let before = envoy.stat(stat).unwrap().unwrap_or(0);
    for path in ["/bytes/20000", "/bytes/20000?chunked"] {
        let resp = client::get(envoy.port, path, &[UPSTREAM]).unwrap();
        assert_eq!(resp.status, 200);
        let text = resp.text();
        assert!(
            text.contains("user0@example.com"),
            "{path}: changed over the cap"
        );
        resp.json().unwrap();
    }
    assert_eq!(
        envoy.wait_for_stat_settled(stat, before + 2).unwrap(),
        before + 2
    );
}

fn ambiguous_path_is_refused(envoy: &Envoy, upstream: &BodyUpstream) {
    let before = upstream.served();
    let resp = client::get(envoy.port, "/files/a%2Fb", &[UPSTREAM]).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["error"], "encoded_slash");
    assert_eq!(upstream.served(), before);
}

/// With `on_unavailable: buffer`, a record waits (each failed send counted) while the audit
/// service is down, and is delivered, in a batch of JSON lines, once it is up.
#[test]
fn audit_records_wait_for_a_service_that_is_down_and_are_counted() {
    let upstream = BodyUpstream::start().unwrap();
    let audit_port = nexus_toolenv::ports::free_port().unwrap();
    let config = CONFIG.replacen(
        r#"{"rules": ["#,
        r#"{"audit": {"cluster": "audit", "flush_ms": 100, "timeout_ms": 500},
            "rules": ["#,
        1,
    );
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-guard".into(),
            module: nexus_tests::filter_module("nexus_guard").unwrap(),
            config,
        }],
        upstreams: vec![
            ("api".into(), upstream.port()),
            ("audit".into(), audit_port),
        ],
        ..Default::default()
    })
    .unwrap();
    let json = [UPSTREAM, ("content-type", "application/json")];
    let body = br#"{"card": "4111-1111-1111-1111"}"#;
    let resp = client::request(envoy.port, "POST", "/pay", &json, body).unwrap();
    assert_eq!(resp.status, 422, "{}", resp.text());

    // Retried at every tick: the count keeps growing while the service is down.
    let failures = "wasmcustom.nexus_audit.send_failures";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while envoy.stat(failures).unwrap().unwrap_or(0) < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", envoy.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        envoy
            .stat("wasmcustom.nexus_audit.dropped")
            .unwrap()
            .unwrap_or(0),
        0
    );
    assert_eq!(
        envoy
            .stat("wasmcustom.nexus_audit.sent")
            .unwrap()
            .unwrap_or(0),
        0
    );

    let service = Upstream::start_on("audit", audit_port).unwrap();
    assert_eq!(
        envoy
            .wait_for_stat_settled("wasmcustom.nexus_audit.sent", 1)
            .unwrap(),
        1
    );
    let batches = service.requests();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(
        (batches[0].method.as_str(), batches[0].path.as_str()),
        ("POST", "/audit/v1/records")
    );
    let text = String::from_utf8_lossy(&batches[0].body);
    let record: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(record["event"], "guard.blocked");
    assert_eq!(record["types"], serde_json::json!(["card"]));
    assert!(!text.contains("4111"), "{text}");
}

/// With `on_unavailable: refuse`, a guarded request is answered 503 `audit_unavailable`
/// (counted, never reaching the upstream) from the first batch the audit service does not
/// take; once the service takes the retried batch, requests go through again and the records
/// kept meanwhile are delivered.
#[test]
fn audit_refuse_fails_closed_while_the_service_is_down_and_recovers() {
    let upstream = BodyUpstream::start().unwrap();
    let audit_port = nexus_toolenv::ports::free_port().unwrap();
    let config = CONFIG.replacen(
        r#"{"rules": ["#,
        r#"{"audit": {"cluster": "audit", "flush_ms": 100, "timeout_ms": 500,
                      "on_unavailable": "refuse"},
            "rules": ["#,
        1,
    );
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-guard".into(),
            module: nexus_tests::filter_module("nexus_guard").unwrap(),
            config,
        }],
        upstreams: vec![
            ("api".into(), upstream.port()),
            ("audit".into(), audit_port),
        ],
        // One worker: each worker's queue learns of the outage from its own batches.
        concurrency: 1,
        ..Default::default()
    })
    .unwrap();
    let stat = |name: &str| envoy.stat(name).unwrap().unwrap_or(0);
    let json = [UPSTREAM, ("content-type", "application/json")];
    let (pii, clean) = (
        &br#"{"card": "4111-1111-1111-1111"}"#[..],
        &br#"{"note": "nothing to see"}"#[..],
    );
    // Nothing has failed yet: the request is decided (blocked) and its record queued.
    let resp = client::request(envoy.port, "POST", "/pay", &json, pii).unwrap();
    assert_eq!(resp.status, 422, "{}", resp.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stat("wasmcustom.nexus_audit.send_failures") < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", envoy.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The service is down: guarded requests are refused before the upstream sees them.
    let served = upstream.served();
    for body in [clean, pii] {
        let resp = client::request(envoy.port, "POST", "/pay", &json, body).unwrap();
        assert_eq!(resp.status, 503, "{}", resp.text());
        let v = resp.json().unwrap();
        assert_eq!(v["error"], "audit_unavailable");
        assert!(
            v["detail"].as_str().unwrap().contains("did not take"),
            "{v}"
        );
    }
    assert_eq!(
        upstream.served(),
        served,
        "a refused request reached the upstream"
    );
    assert_eq!(stat("wasmcustom.nexus_audit.refused"), 2);
    assert_eq!(stat("wasmcustom.nexus_audit.dropped"), 0);

    // Back up: the kept record is delivered, and requests go through again.
    let service = Upstream::start_on("audit", audit_port).unwrap();
    assert_eq!(
        envoy
            .wait_for_stat_settled("wasmcustom.nexus_audit.sent", 1)
            .unwrap(),
        1
    );
    let resp = client::request(envoy.port, "POST", "/pay", &json, clean).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(upstream.served(), served + 1);
    let batches = service.requests();
    let text = String::from_utf8_lossy(&batches[0].body);
    let record: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(record["event"], "guard.blocked");
    assert_eq!(stat("wasmcustom.nexus_audit.refused"), 2);
}
