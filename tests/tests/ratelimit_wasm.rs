//! The real nexus_ratelimit.wasm under the strict wasmtime host: local buckets, the RLS gRPC
//! call it dispatches, each service verdict and each failure mode.

use nexus_proto::ratelimit::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use nexus_proto::ratelimit::{RateLimitRequest, RateLimitResponse};
use prost::Message;
use proxy_wasm_test_host::{Action, Host};

const LIMITS: &str = r#"{"domain": "nexus", "descriptors": [{"key": "route", "value": "lake",
    "descriptors": [{"key": "client_id", "rate_limit": {"unit": "minute", "requests_per_unit": 2}}]}]}"#;

fn host(extra: &str) -> Host {
    let config = format!(r#"{{"limits": {LIMITS}{extra}}}"#);
    let mut host = Host::builder()
        .plugin_config(config.into_bytes())
        .allow_cluster("rls")
        .build_from_file(nexus_tests::filter_module("nexus_ratelimit").unwrap())
        .unwrap();
    assert!(host.start().unwrap());
    host
}

const REQUEST: [(&str, &str); 4] = [
    (":method", "GET"),
    (":path", "/lake/t"),
    ("x-nexus-rule", "lake"),
    ("x-nexus-client-id", "alice"),
];

#[test]
fn local_buckets_admit_the_limit_then_429() {
    let mut host = host("");
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        let mut http = host.http_context().unwrap();
        let action = http.request_headers(&REQUEST, true).unwrap();
        verdicts.push(action);
        if action == Action::Continue {
            http.response_headers(&[(":status", "200")], true).unwrap();
            assert_eq!(
                http.response_header("ratelimit-policy").as_deref(),
                Some("\"client_id\";q=2;w=60")
            );
        } else {
            let resp = http.local_response().unwrap();
            assert_eq!(resp.status, 429);
            assert!(String::from_utf8_lossy(&resp.body).contains("\"error\":\"rate_limited\""));
            assert!(resp
                .headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "30"));
        }
    }
    assert_eq!(
        verdicts,
        [Action::Continue, Action::Continue, Action::Pause]
    );
    assert_eq!(host.metric("nexus_ratelimit.denied.local"), Some(1));
    let fuel: Vec<u64> = host
        .fuel_log()
        .iter()
        .filter(|(n, _)| n == "proxy_on_request_headers")
        .map(|(_, f)| *f)
        .collect();
    println!("nexus-ratelimit fuel per on_request_headers (local bucket): {fuel:?}");
}

fn global(mode: &str) -> Host {
    host(&format!(
        r#", "service": {{"cluster": "rls", "timeout_ms": 25}}, "failure_mode": "{mode}""#
    ))
}

fn answer(code: Code, remaining: u32) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code as i32,
        statuses: vec![DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: 2,
                unit: 2,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(prost_types_duration(17)),
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

fn prost_types_duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

#[test]
fn global_mode_pauses_on_the_rls_call_and_follows_its_verdict() {
    let mut host = global("fail_closed");
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&REQUEST, true).unwrap(), Action::Pause);
    let call = http.grpc_calls().pop().unwrap();
    assert_eq!(call.cluster, "rls");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout, Some(std::time::Duration::from_millis(25)));
    let req = RateLimitRequest::decode(call.messages[0].as_slice()).unwrap();
    assert_eq!(req.domain, "nexus");
    assert_eq!(req.descriptors[0].entries[1].value, "alice");

    http.grpc_receive(call.token, &answer(Code::Ok, 1)).unwrap();
    assert!(http.request_resumed(), "an OK verdict resumes the request");
    http.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(
        http.response_header("ratelimit").as_deref(),
        Some("\"client_id\";r=1;t=17")
    );

    let mut http = host.http_context().unwrap();
    http.request_headers(&REQUEST, true).unwrap();
    let token = http.grpc_calls().last().unwrap().token;
    http.grpc_receive(token, &answer(Code::OverLimit, 0))
        .unwrap();
    let resp = http.local_response().unwrap();
    assert_eq!(resp.status, 429);
    assert!(resp
        .headers
        .iter()
        .any(|(k, v)| k == "retry-after" && v == "17"));
}

#[test]
fn each_failure_mode_decides_when_the_service_fails() {
    // fail_closed: 500 JSON
    let mut host = global("fail_closed");
    let mut http = host.http_context().unwrap();
    http.request_headers(&REQUEST, true).unwrap();
    let token = http.grpc_calls()[0].token;
    http.grpc_close(token, 14, "upstream connect error")
        .unwrap();
    let resp = http.local_response().unwrap();
    assert_eq!(resp.status, 500);
    assert!(String::from_utf8_lossy(&resp.body).contains("rate_limit_unavailable"));
    assert_eq!(host.metric("nexus_ratelimit.degraded.fail_closed"), Some(1));

    // fail_open: resumes, counted, logged once
    let mut host = global("fail_open");
    for _ in 0..3 {
        let mut http = host.http_context().unwrap();
        http.request_headers(&REQUEST, true).unwrap();
        let token = http.grpc_calls().last().unwrap().token;
        http.grpc_close(token, 4, "timeout").unwrap();
        assert!(http.request_resumed());
        assert!(http.local_response().is_none());
    }
    assert_eq!(host.metric("nexus_ratelimit.degraded.fail_open"), Some(3));
    assert_eq!(
        host.logs()
            .iter()
            .filter(|l| l.message.contains("applying fail_open"))
            .count(),
        1
    );

    // local_fallback: the same limits, enforced in this Envoy
    let mut host = global("local_fallback");
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let mut http = host.http_context().unwrap();
        http.request_headers(&REQUEST, true).unwrap();
        let token = http.grpc_calls().last().unwrap().token;
        http.grpc_close(token, 14, "unavailable").unwrap();
        outcomes.push(http.local_response().map(|r| r.status));
    }
    assert_eq!(outcomes, [None, None, Some(429)]);
}

#[test]
fn invalid_configuration_is_refused_with_paths() {
    let mut host = Host::builder()
        .plugin_config(
            br#"{"limits": {"domain": "", "descriptors": [{"key": "client_id"}]}}"#.to_vec(),
        )
        .build_from_file(nexus_tests::filter_module("nexus_ratelimit").unwrap())
        .unwrap();
    assert!(!host.start().unwrap());
    assert!(host.logged("$.limits.domain: must not be empty"));
    assert!(host.logged("$.limits.descriptors[0].key: top-level descriptors are keyed by route"));
}

#[test]
fn an_over_limit_client_is_answered_locally_until_the_window_resets() {
    let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    let config = format!(
        r#"{{"limits": {LIMITS}, "service": {{"cluster": "rls", "timeout_ms": 25}}, "failure_mode": "fail_closed"}}"#
    );
    let mut host = Host::builder()
        .plugin_config(config.into_bytes())
        .allow_cluster("rls")
        .time(t0)
        .build_from_file(nexus_tests::filter_module("nexus_ratelimit").unwrap())
        .unwrap();
    assert!(host.start().unwrap());

    // The service says alice is over limit for 17 s.
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&REQUEST, true).unwrap(), Action::Pause);
    let token = http.grpc_calls()[0].token;
    http.grpc_receive(token, &answer(Code::OverLimit, 0))
        .unwrap();
    assert_eq!(http.local_response().unwrap().status, 429);

    // 5 s later: a 429 with 12 s left, and no gRPC call.
    host.set_time(t0 + std::time::Duration::from_secs(5));
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&REQUEST, true).unwrap(), Action::Pause);
    assert_eq!(http.grpc_calls().len(), 1, "answered without the service");
    let resp = http.local_response().unwrap();
    assert_eq!(resp.status, 429);
    assert!(String::from_utf8_lossy(&resp.body).contains("\"error\":\"rate_limited\""));
    assert!(resp
        .headers
        .iter()
        .any(|(k, v)| k == "retry-after" && v == "12"));
    assert!(resp
        .headers
        .iter()
        .any(|(k, v)| k == "ratelimit" && v == "\"client_id\";r=0;t=12"));
    assert_eq!(host.metric("nexus_ratelimit.over_limit_local"), Some(1));

    // Another client still asks the service.
    let mut http = host.http_context().unwrap();
    let mut bob = REQUEST;
    bob[3] = ("x-nexus-client-id", "bob");
    assert_eq!(http.request_headers(&bob, true).unwrap(), Action::Pause);
    assert_eq!(http.grpc_calls().len(), 2);

    // The window has reset: alice's request goes to the service again.
    host.set_time(t0 + std::time::Duration::from_secs(17));
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&REQUEST, true).unwrap(), Action::Pause);
    assert_eq!(http.grpc_calls().len(), 3);
    assert!(http.local_response().is_none());
    assert_eq!(host.metric("nexus_ratelimit.over_limit_local"), Some(1));
}
