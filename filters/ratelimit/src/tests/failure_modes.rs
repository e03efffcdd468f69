//! What a request's limits do when the service cannot answer: the filter's mode, a route's,
//! or each limit's own (`failure_mode_by_limit`, what the CRD's `failureMode` renders to).

use super::*;

/// A service-mode filter failing `mode` by default; `extra` is appended to the config object.
fn global(mode: &str, extra: &str) -> RateLimiter {
    RateLimiter::from_json(
        config(&format!(
            r#", "service": {{"cluster": "rls", "timeout_ms": 20}}, "failure_mode": "{mode}"{extra}"#
        ))
        .as_bytes(),
    )
    .unwrap()
}

/// `client`'s `lake` request (limited by the route and per client) with the service down.
fn with_service_down(rl: &RateLimiter, e: &Env, client: &str) -> Step {
    let (_, pending) = call(rl, e, client);
    rl.on_service_response(
        &pending,
        Err(ServiceFailure::Status(14, "unavailable".into())),
        &e.shared,
        &e.metrics,
        &e.log,
        T0,
    )
}

#[test]
fn fail_open_allows_and_is_counted_and_logged_once() {
    let rl = RateLimiter::from_json(service_config("fail_open").as_bytes()).unwrap();
    let e = env();
    let (_, pending) = call(&rl, &e, "alice");
    for _ in 0..5 {
        let step = rl.on_service_response(
            &pending,
            Err(ServiceFailure::Status(14, "unavailable".into())),
            &e.shared,
            &e.metrics,
            &e.log,
            T0,
        );
        assert_eq!(step, Step::Allow(Vec::new()));
    }
    assert_eq!(e.metrics.value("nexus_ratelimit.degraded.fail_open"), 5);
    let logs = e.log.0.borrow();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].1.contains("gRPC status 14"), "{}", logs[0].1);
}

#[test]
fn fail_closed_answers_500_json_as_envoys_failure_mode_deny() {
    let rl = RateLimiter::from_json(service_config("fail_closed").as_bytes()).unwrap();
    let e = env();
    let (_, pending) = call(&rl, &e, "alice");
    let Step::Deny(resp) = rl.on_service_response(
        &pending,
        Err(ServiceFailure::Dispatch("cluster not found".into())),
        &e.shared,
        &e.metrics,
        &e.log,
        T0,
    ) else {
        panic!("fail_closed must deny")
    };
    assert_eq!(resp.status, 500);
    assert_eq!(resp.details, "nexus_rate_limit_unavailable");
    assert!(String::from_utf8(resp.body)
        .unwrap()
        .contains("\"error\":\"rate_limit_unavailable\""));
}

#[test]
fn local_fallback_enforces_the_same_limits_locally() {
    let rl = RateLimiter::from_json(service_config("local_fallback").as_bytes()).unwrap();
    let e = env();
    let (_, pending) = call(&rl, &e, "alice");
    let garbage: &[u8] = &[0xff, 0xff, 0xff];
    let steps: Vec<bool> = (0..3)
        .map(|_| {
            matches!(
                rl.on_service_response(&pending, Ok(garbage), &e.shared, &e.metrics, &e.log, T0),
                Step::Allow(_)
            )
        })
        .collect();
    assert_eq!(steps, [true, true, false]);
    assert_eq!(
        e.metrics.value("nexus_ratelimit.degraded.local_fallback"),
        3
    );
}

#[test]
fn each_limit_applies_its_own_mode() {
    // The route-wide limit fails open; alice's own limit (2 a minute) falls back locally.
    let rl = global(
        "fail_open",
        r#", "failure_mode_by_limit": {"lake": {"client_id": "local_fallback"}}"#,
    );
    let e = env();
    let statuses: Vec<u16> = (0..3)
        .map(|_| match with_service_down(&rl, &e, "alice") {
            Step::Allow(_) => 200,
            Step::Deny(resp) => resp.status,
            other => panic!("a decision, not {other:?}"),
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(e.metrics.value("nexus_ratelimit.degraded.fail_open"), 3);
    assert_eq!(
        e.metrics.value("nexus_ratelimit.degraded.local_fallback"),
        3
    );
    assert_eq!(e.metrics.value("nexus_ratelimit.denied.local"), 1);
}

#[test]
fn one_closed_limit_refuses_the_request_and_overrides_its_route() {
    let rl = global(
        "local_fallback",
        r#", "failure_mode_by_route": {"lake": "fail_open"},
             "failure_mode_by_limit": {"lake": {"route": "fail_closed"}}"#,
    );
    let e = env();
    let Step::Deny(resp) = with_service_down(&rl, &e, "alice") else {
        panic!("the route-wide limit fails closed")
    };
    assert_eq!(resp.status, 500);
    assert_eq!(e.metrics.value("nexus_ratelimit.degraded.fail_closed"), 1);
    assert_eq!(e.metrics.value("nexus_ratelimit.degraded.fail_open"), 0);
    assert_eq!(
        e.metrics.value("nexus_ratelimit.degraded.local_fallback"),
        0
    );
    let logs = e.log.0.borrow();
    assert!(logs[0].1.contains("applying fail_closed"), "{}", logs[0].1);
}

#[test]
fn a_shadow_limit_never_fails_closed() {
    let rl = RateLimiter::from_json(
        br#"{"limits": {"domain": "nexus", "descriptors": [{"key": "route", "value": "lake",
               "descriptors": [{"key": "client_id", "shadow_mode": true,
                                "rate_limit": {"unit": "minute", "requests_per_unit": 1}}]}]},
             "service": {"cluster": "rls"}, "failure_mode": "fail_closed"}"#,
    )
    .unwrap();
    let e = env();
    for _ in 0..3 {
        assert!(matches!(
            with_service_down(&rl, &e, "alice"),
            Step::Allow(_)
        ));
    }
    assert_eq!(e.metrics.value("nexus_ratelimit.degraded.fail_closed"), 0);
    assert_eq!(
        e.metrics.value("nexus_ratelimit.degraded.local_fallback"),
        3
    );
}
