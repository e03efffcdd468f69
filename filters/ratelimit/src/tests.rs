use super::*;
use nexus_filter_core::testing::{MemHeaders, MemLog, MemMetrics, MemSharedData};
use nexus_proto::ratelimit::rate_limit_response::{DescriptorStatus, RateLimit};

const SEC: u64 = 1_000_000;
const T0: u64 = 1_800_000_000 * SEC;

fn config(extra: &str) -> String {
    format!(
        r#"{{"limits": {{"domain": "nexus", "descriptors": [
            {{"key": "route", "value": "lake", "rate_limit": {{"unit": "minute", "requests_per_unit": 100}},
              "descriptors": [
                {{"key": "client_id", "rate_limit": {{"unit": "minute", "requests_per_unit": 2}}}},
                {{"key": "client_id", "value": "ops", "rate_limit": {{"unlimited": true, "unit": "second"}}}},
                {{"key": "header.x-tenant", "rate_limit": {{"unit": "second", "requests_per_unit": 50}}}}]}}]}}
            {extra}}}"#
    )
}

fn request(client: Option<&str>) -> MemHeaders {
    let mut h = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/lake/x?y=1"),
        ("x-nexus-rule", "lake"),
    ]);
    if let Some(c) = client {
        h.set("x-nexus-client-id", c);
    }
    h
}

struct Env {
    shared: MemSharedData,
    metrics: MemMetrics,
    log: MemLog,
}

fn env() -> Env {
    Env {
        shared: MemSharedData::default(),
        metrics: MemMetrics::default(),
        log: MemLog::default(),
    }
}

#[test]
fn descriptors_come_from_route_identity_and_headers() {
    let rl = RateLimiter::from_json(config("").as_bytes()).unwrap();
    let mut h = request(Some("alice"));
    h.set("x-tenant", "acme");
    let (route, limited) = descriptors::for_request(&rl.config.limits, &h).unwrap();
    assert_eq!(route, "lake");
    let entries: Vec<Vec<(String, String)>> = limited.iter().map(|l| l.entries.clone()).collect();
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        entries,
        [
            vec![s("route", "lake")],
            vec![s("route", "lake"), s("client_id", "alice")],
            vec![s("route", "lake"), s("header.x-tenant", "acme")],
        ]
    );
    assert_eq!(limited[1].key, "nexus|route=lake|client_id=alice");
}

#[test]
fn unlimited_clients_and_unrouted_requests_send_nothing_extra() {
    let rl = RateLimiter::from_json(config("").as_bytes()).unwrap();
    let (_, limited) = descriptors::for_request(&rl.config.limits, &request(Some("ops"))).unwrap();
    assert_eq!(
        limited.len(),
        1,
        "ops is unlimited: only the route descriptor remains"
    );
    let unrouted = MemHeaders::new(&[(":path", "/x")]);
    assert!(descriptors::for_request(&rl.config.limits, &unrouted).is_none());
}

#[test]
fn anonymous_requests_share_one_counter() {
    let rl = RateLimiter::from_json(config("").as_bytes()).unwrap();
    let (_, limited) = descriptors::for_request(&rl.config.limits, &request(None)).unwrap();
    assert_eq!(
        limited[1].entries[1],
        ("client_id".to_string(), "anonymous".to_string())
    );
}

#[test]
fn local_limit_denies_with_429_json_retry_after_and_policy_headers() {
    let rl = RateLimiter::from_json(config("").as_bytes()).unwrap();
    let e = env();
    let h = request(Some("alice"));
    for i in 0..2 {
        let Step::Allow(headers) = rl.on_request(&h, &e.shared, &e.metrics, T0) else {
            panic!("request {i} must pass")
        };
        let r = if i == 0 { "1" } else { "0" };
        assert_eq!(
            headers,
            [
                (
                    "ratelimit-policy".to_string(),
                    "\"client_id\";q=2;w=60".to_string()
                ),
                (
                    "ratelimit".to_string(),
                    format!("\"client_id\";r={r};t={}", if i == 0 { 30 } else { 60 })
                ),
            ]
        );
    }
    let Step::Deny(resp) = rl.on_request(&h, &e.shared, &e.metrics, T0) else {
        panic!("third request must be denied")
    };
    assert_eq!(resp.status, 429);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&resp.body).unwrap(),
        serde_json::json!({"error": "rate_limited",
            "detail": "limit of 2 requests per minute for client_id=alice on route lake exceeded; retry after 30 s"})
    );
    assert!(resp
        .headers
        .contains(&("retry-after".to_string(), "30".to_string())));
    assert_eq!(e.metrics.value("nexus_ratelimit.denied.local"), 1);
    // Other clients have their own bucket; alice's refills at 2 per minute.
    assert!(matches!(
        rl.on_request(&request(Some("bob")), &e.shared, &e.metrics, T0),
        Step::Allow(_)
    ));
    assert!(matches!(
        rl.on_request(&h, &e.shared, &e.metrics, T0 + 30 * SEC),
        Step::Allow(_)
    ));
}

fn service_config(mode: &str) -> String {
    config(&format!(
        r#", "service": {{"cluster": "rls", "timeout_ms": 20}}, "failure_mode": "{mode}",
           "failure_mode_by_route": {{"forge": "fail_closed"}}"#
    ))
}

fn status(code: Code, rpu: u32, remaining: u32, reset_s: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: String::new(),
            requests_per_unit: rpu,
            unit: 2,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(prost_types::Duration {
            seconds: reset_s,
            nanos: 0,
        }),
    }
}

fn call(rl: &RateLimiter, e: &Env, client: &str) -> (Vec<u8>, Pending) {
    match rl.on_request(&request(Some(client)), &e.shared, &e.metrics, T0) {
        Step::CallService { message, pending } => (message, pending),
        other => panic!("expected a service call, got {other:?}"),
    }
}

#[test]
fn global_mode_sends_the_envoy_rls_request() {
    let rl = RateLimiter::from_json(service_config("fail_open").as_bytes()).unwrap();
    let e = env();
    let (message, _) = call(&rl, &e, "alice");
    let req = RateLimitRequest::decode(message.as_slice()).unwrap();
    assert_eq!(req.domain, "nexus");
    assert_eq!(req.hits_addend, 1);
    let keys: Vec<Vec<(&str, &str)>> = req
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect()
        })
        .collect();
    assert_eq!(
        keys,
        [
            vec![("route", "lake")],
            vec![("route", "lake"), ("client_id", "alice")]
        ]
    );
}

#[test]
fn service_verdicts_become_responses() {
    let rl = RateLimiter::from_json(service_config("fail_open").as_bytes()).unwrap();
    let e = env();
    let (_, pending) = call(&rl, &e, "alice");
    let ok = RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![status(Code::Ok, 100, 97, 40), status(Code::Ok, 2, 1, 40)],
        ..Default::default()
    }
    .encode_to_vec();
    let step = rl.on_service_response(&pending, Ok(&ok), &e.shared, &e.metrics, &e.log, T0);
    assert_eq!(
        step,
        Step::Allow(vec![
            ("ratelimit-policy".into(), "\"client_id\";q=2;w=60".into()),
            ("ratelimit".into(), "\"client_id\";r=1;t=40".into()),
        ])
    );
    let over = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            status(Code::Ok, 100, 96, 40),
            status(Code::OverLimit, 2, 0, 12),
        ],
        ..Default::default()
    }
    .encode_to_vec();
    let Step::Deny(resp) =
        rl.on_service_response(&pending, Ok(&over), &e.shared, &e.metrics, &e.log, T0)
    else {
        panic!("over limit must deny")
    };
    assert_eq!(resp.status, 429);
    assert!(resp.headers.contains(&("retry-after".into(), "12".into())));
    assert_eq!(e.metrics.value("nexus_ratelimit.denied.global"), 1);
}

#[test]
fn bucket_cas_keeps_workers_consistent() {
    // Two "workers" reading the same token, one writing first: the other must re-read.
    let shared = MemSharedData::default();
    let metrics = MemMetrics::default();
    let a = bucket::take(&shared, "k", 2, Unit::Minute, T0, &metrics);
    let (bytes, cas) = shared.get("nexus-rl:k").unwrap();
    let b = bucket::take(&shared, "k", 2, Unit::Minute, T0, &metrics);
    assert!(a.allowed && b.allowed);
    assert_eq!(
        shared.set("nexus-rl:k", &bytes, Some(cas)),
        Err(nexus_filter_core::host::SharedDataError::CasMismatch),
        "a stale writer is refused"
    );
    assert!(!bucket::take(&shared, "k", 2, Unit::Minute, T0, &metrics).allowed);
}

/// A filter configuration over `descriptors` (the route node's children) for route `lake`.
fn local(route_value: &str, route_limit: &str, children: &str) -> RateLimiter {
    RateLimiter::from_json(
        format!(
            r#"{{"limits": {{"domain": "nexus", "descriptors": [
                {{"key": "route", "value": "{route_value}"{route_limit}, "descriptors": [{children}]}}]}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn allowed(rl: &RateLimiter, e: &Env, client: &str, now: u64) -> bool {
    matches!(
        rl.on_request(&request(Some(client)), &e.shared, &e.metrics, now),
        Step::Allow(_)
    )
}

#[test]
fn a_wildcard_route_node_and_wildcard_values_apply_locally() {
    let rl = local(
        "la*",
        "",
        r#"{"key": "client_id", "value": "bot-*", "rate_limit": {"unit": "minute", "requests_per_unit": 1}},
           {"key": "client_id", "value": "team-*", "share_threshold": true,
            "rate_limit": {"unit": "minute", "requests_per_unit": 1}}"#,
    );
    let e = env();
    assert!(allowed(&rl, &e, "bot-1", T0));
    assert!(!allowed(&rl, &e, "bot-1", T0));
    assert!(allowed(&rl, &e, "bot-2", T0), "one bucket per value");
    assert!(allowed(&rl, &e, "team-a", T0));
    assert!(
        !allowed(&rl, &e, "team-b", T0),
        "share_threshold: one bucket"
    );
    assert!(
        allowed(&rl, &e, "alice", T0),
        "no node for alice: not limited"
    );
    let (_, limited) =
        descriptors::for_request(&rl.config.limits, &request(Some("team-c"))).unwrap();
    assert_eq!(limited[0].key, "nexus|route=lake|client_id=team-*");
}

#[test]
fn long_units_refill_over_their_window_and_say_so() {
    let rl = local(
        "lake",
        "",
        r#"{"key": "client_id", "rate_limit": {"unit": "week", "requests_per_unit": 7}}"#,
    );
    let e = env();
    let Step::Allow(headers) = rl.on_request(&request(Some("a")), &e.shared, &e.metrics, T0) else {
        panic!("first request passes")
    };
    assert_eq!(headers[0].1, "\"client_id\";q=7;w=604800");
    for _ in 0..6 {
        assert!(allowed(&rl, &e, "a", T0));
    }
    assert!(!allowed(&rl, &e, "a", T0));
    assert!(
        allowed(&rl, &e, "a", T0 + 86_400 * SEC),
        "a day refills one of 7 a week"
    );
    for unit in ["month", "year", "WEEK"] {
        let rl = local(
            "lake",
            "",
            &format!(
                r#"{{"key": "client_id", "rate_limit": {{"unit": "{unit}", "requests_per_unit": 1}}}}"#
            ),
        );
        let e = env();
        assert!(allowed(&rl, &e, "a", T0));
        assert!(!allowed(&rl, &e, "a", T0 + 86_400 * SEC), "{unit}");
    }
}

#[test]
fn shadow_mode_and_unlimited_locally() {
    let rl = local(
        "lake",
        "",
        r#"{"key": "client_id", "shadow_mode": true, "rate_limit": {"unit": "minute", "requests_per_unit": 1}},
           {"key": "client_id", "value": "ops", "rate_limit": {"unlimited": true}}"#,
    );
    let e = env();
    for _ in 0..3 {
        assert!(allowed(&rl, &e, "a", T0), "shadow mode never denies");
        assert!(allowed(&rl, &e, "ops", T0));
    }
    assert_eq!(e.metrics.value("nexus_ratelimit.denied.local"), 0);
    let (_, limited) = descriptors::for_request(&rl.config.limits, &request(Some("ops"))).unwrap();
    assert!(limited.is_empty(), "unlimited: no bucket at all");
}

#[test]
fn replaces_drops_the_named_limit_locally() {
    let rl = local(
        "lake",
        r#", "rate_limit": {"name": "route_cap", "unit": "minute", "requests_per_unit": 1}"#,
        r#"{"key": "client_id", "value": "vip", "rate_limit": {"replaces": [{"name": "route_cap"}], "unit": "minute", "requests_per_unit": 3}}"#,
    );
    let e = env();
    assert!(allowed(&rl, &e, "vip", T0));
    assert!(
        allowed(&rl, &e, "vip", T0),
        "the route's cap does not apply to vip"
    );
    assert!(allowed(&rl, &e, "vip", T0));
    assert!(!allowed(&rl, &e, "vip", T0));
    assert!(
        allowed(&rl, &e, "other", T0),
        "vip never drew from the route's bucket"
    );
    assert!(!allowed(&rl, &e, "other", T0));
}

#[test]
fn quota_mode_denies_locally_only_when_every_quota_bucket_is_empty() {
    let rl = local(
        "lake",
        r#", "quota_mode": true, "rate_limit": {"unit": "minute", "requests_per_unit": 1}"#,
        r#"{"key": "client_id", "quota_mode": true, "rate_limit": {"unit": "minute", "requests_per_unit": 2}}"#,
    );
    let e = env();
    assert!(allowed(&rl, &e, "a", T0));
    assert!(
        allowed(&rl, &e, "a", T0),
        "the route's quota is spent, the client's is not"
    );
    let Step::Deny(resp) = rl.on_request(&request(Some("a")), &e.shared, &e.metrics, T0) else {
        panic!("both quotas spent")
    };
    assert_eq!(resp.status, 429);
}

mod failure_modes;
mod leases;
mod over_limit_cache;
mod resets;
