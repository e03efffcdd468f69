//! The local over-limit cache: a service OVER_LIMIT answer is remembered until its window
//! resets, and the client's next requests are refused without a service call.

use super::*;

/// A service-mode filter; `extra` is appended to the config object.
pub(super) fn global(extra: &str) -> RateLimiter {
    RateLimiter::from_json(
        config(&format!(
            r#", "service": {{"cluster": "rls", "timeout_ms": 20}}, "failure_mode": "fail_open"{extra}"#
        ))
        .as_bytes(),
    )
    .unwrap()
}

/// One request of `client` at `now`: counts the service calls it makes in `calls`.
pub(super) fn ask(rl: &RateLimiter, e: &Env, client: &str, now: u64, calls: &mut u32) -> Step {
    let step = rl.on_request(&request(Some(client)), &e.shared, &e.metrics, now);
    if matches!(step, Step::CallService { .. }) {
        *calls += 1;
    }
    step
}

/// The service's answer for a `lake` request: the route descriptor OK, the client's over.
pub(super) fn client_over(client_status: DescriptorStatus) -> Vec<u8> {
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![status(Code::Ok, 100, 90, 40), client_status],
        ..Default::default()
    }
    .encode_to_vec()
}

/// Sends `client`'s request at `now` to the service, which answers `answer`.
pub(super) fn over_at(
    rl: &RateLimiter,
    e: &Env,
    client: &str,
    now: u64,
    answer: &[u8],
    calls: &mut u32,
) {
    let Step::CallService { pending, .. } = ask(rl, e, client, now, calls) else {
        panic!("{client} must be sent to the service at {now}")
    };
    let step = rl.on_service_response(&pending, Ok(answer), &e.shared, &e.metrics, &e.log, now);
    assert!(
        matches!(step, Step::Deny(ref r) if r.status == 429),
        "{step:?}"
    );
}

fn header<'a>(resp: &'a LocalResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn an_over_limit_client_is_refused_locally_until_the_window_resets() {
    let rl = global("");
    let e = env();
    let mut calls = 0;
    over_at(
        &rl,
        &e,
        "alice",
        T0,
        &client_over(status(Code::OverLimit, 2, 0, 12)),
        &mut calls,
    );
    assert_eq!(calls, 1);

    // Within the window: 429 with the remaining seconds, and no service call.
    for (i, at) in [1, 5, 11].into_iter().enumerate() {
        let Step::Deny(resp) = ask(&rl, &e, "alice", T0 + at * SEC, &mut calls) else {
            panic!("alice is over limit at +{at} s")
        };
        assert_eq!(resp.status, 429);
        let left = (12 - at).to_string();
        assert_eq!(header(&resp, "retry-after"), Some(left.as_str()));
        assert_eq!(
            header(&resp, "ratelimit"),
            Some(format!("\"client_id\";r=0;t={left}").as_str())
        );
        assert_eq!(
            header(&resp, "ratelimit-policy"),
            Some("\"client_id\";q=2;w=60")
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&resp.body).unwrap(),
            serde_json::json!({"error": "rate_limited",
                "detail": format!("limit of 2 requests per minute for client_id=alice on route lake exceeded; retry after {left} s")})
        );
        assert_eq!(
            e.metrics.value("nexus_ratelimit.over_limit_local"),
            i as i64 + 1
        );
    }
    assert_eq!(calls, 1, "no service call while alice is over limit");
    // A sub-second remainder still says at least one second.
    let Step::Deny(resp) = ask(&rl, &e, "alice", T0 + 12 * SEC - 1, &mut calls) else {
        panic!("the window ends at +12 s")
    };
    assert_eq!(header(&resp, "retry-after"), Some("1"));

    // Another client is not affected.
    assert!(matches!(
        ask(&rl, &e, "bob", T0 + SEC, &mut calls),
        Step::CallService { .. }
    ));
    assert_eq!(calls, 2);

    // The window has reset: the service is asked again.
    assert!(matches!(
        ask(&rl, &e, "alice", T0 + 12 * SEC, &mut calls),
        Step::CallService { .. }
    ));
    assert_eq!(calls, 3);
    assert_eq!(e.metrics.value("nexus_ratelimit.over_limit_local"), 4);
    assert_eq!(e.metrics.value("nexus_ratelimit.denied.global"), 1);
}

#[test]
fn every_worker_sees_the_cache_through_shared_data() {
    // Two filter instances (two workers) over one shared data.
    let e = env();
    let (a, b) = (global(""), global(""));
    let mut calls = 0;
    over_at(
        &a,
        &e,
        "alice",
        T0,
        &client_over(status(Code::OverLimit, 2, 0, 30)),
        &mut calls,
    );
    assert!(matches!(
        ask(&b, &e, "alice", T0 + SEC, &mut calls),
        Step::Deny(_)
    ));
    assert_eq!(calls, 1);
}

#[test]
fn without_duration_until_reset_the_window_ends_with_the_unit() {
    let rl = global("");
    let e = env();
    let mut calls = 0;
    let mut s = status(Code::OverLimit, 2, 0, 0);
    s.duration_until_reset = None; // minute windows aligned to the epoch: T0 starts one
    over_at(&rl, &e, "alice", T0 + 15 * SEC, &client_over(s), &mut calls);
    let Step::Deny(resp) = ask(&rl, &e, "alice", T0 + 20 * SEC, &mut calls) else {
        panic!("remembered until the minute ends")
    };
    assert_eq!(header(&resp, "retry-after"), Some("40"));
    assert!(matches!(
        ask(&rl, &e, "alice", T0 + 60 * SEC, &mut calls),
        Step::CallService { .. }
    ));

    // Neither a duration nor a known unit: nothing to remember.
    let mut s = status(Code::OverLimit, 2, 0, 0);
    s.duration_until_reset = None;
    s.current_limit = None;
    over_at(&rl, &e, "carol", T0, &client_over(s), &mut calls);
    assert!(matches!(
        ask(&rl, &e, "carol", T0 + SEC, &mut calls),
        Step::CallService { .. }
    ));
}

#[test]
fn ok_statuses_shadow_mode_and_a_disabled_cache_are_never_cached() {
    let e = env();
    let mut calls = 0;
    // The route descriptor was OK in the over-limit answer: other clients still ask.
    let rl = global("");
    over_at(
        &rl,
        &e,
        "alice",
        T0,
        &client_over(status(Code::OverLimit, 2, 0, 30)),
        &mut calls,
    );
    assert!(matches!(
        ask(&rl, &e, "dave", T0 + SEC, &mut calls),
        Step::CallService { .. }
    ));

    // Shadow mode: even a (misbehaving) service's OVER_LIMIT for it is not remembered.
    let shadow = RateLimiter::from_json(
        br#"{"limits": {"domain": "nexus", "descriptors": [{"key": "route", "value": "lake",
              "descriptors": [{"key": "client_id", "shadow_mode": true,
                               "rate_limit": {"unit": "minute", "requests_per_unit": 2}}]}]},
             "service": {"cluster": "rls", "timeout_ms": 20}}"#,
    )
    .unwrap();
    let e = env();
    let Step::CallService { pending, .. } = ask(&shadow, &e, "alice", T0, &mut calls) else {
        panic!("service mode")
    };
    let answer = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![status(Code::OverLimit, 2, 0, 30)],
        ..Default::default()
    }
    .encode_to_vec();
    shadow.on_service_response(&pending, Ok(&answer), &e.shared, &e.metrics, &e.log, T0);
    assert!(matches!(
        ask(&shadow, &e, "alice", T0 + SEC, &mut calls),
        Step::CallService { .. }
    ));
    assert!(e
        .shared
        .0
        .borrow()
        .keys()
        .all(|k| !k.starts_with("nexus-rl-over:")));

    // Switched off.
    let off = global(r#", "over_limit_cache": false"#);
    let e = env();
    over_at(
        &off,
        &e,
        "alice",
        T0,
        &client_over(status(Code::OverLimit, 2, 0, 30)),
        &mut calls,
    );
    assert!(matches!(
        ask(&off, &e, "alice", T0 + SEC, &mut calls),
        Step::CallService { .. }
    ));
    assert_eq!(e.metrics.value("nexus_ratelimit.over_limit_local"), 0);
}

#[test]
fn the_cache_never_holds_more_than_its_slots() {
    let rl = global("");
    let e = env();
    let mut calls = 0;
    let answer = client_over(status(Code::OverLimit, 2, 0, 30));
    let clients = 2 * overlimit::SLOTS + 100;
    for i in 0..clients {
        over_at(&rl, &e, &format!("c{i}"), T0, &answer, &mut calls);
    }
    let entries = e
        .shared
        .0
        .borrow()
        .keys()
        .filter(|k| k.starts_with("nexus-rl-over:"))
        .count();
    assert!(entries as u64 <= overlimit::SLOTS, "{entries} entries");
    // The newest answer always holds its slot; evicted clients just ask the service again.
    let last = format!("c{}", clients - 1);
    assert!(matches!(
        ask(&rl, &e, &last, T0 + SEC, &mut calls),
        Step::Deny(_)
    ));
}

#[test]
fn a_colliding_key_evicts_and_never_refuses_the_wrong_client() {
    let shared = MemSharedData::default();
    let slot = |k: &str| nexus_filter_core::fasthash::hash(k.as_bytes()) % overlimit::SLOTS;
    let other = (1..)
        .map(|i| format!("k{i}"))
        .find(|k| slot(k) == slot("k0"))
        .unwrap();
    overlimit::remember(&shared, "k0", T0 + 10 * SEC);
    assert_eq!(overlimit::remaining_us(&shared, "k0", T0), Some(10 * SEC));
    assert_eq!(overlimit::remaining_us(&shared, &other, T0), None);
    overlimit::remember(&shared, &other, T0 + 5 * SEC);
    assert_eq!(overlimit::remaining_us(&shared, "k0", T0), None, "evicted");
    assert_eq!(overlimit::remaining_us(&shared, &other, T0), Some(5 * SEC));
    assert_eq!(
        overlimit::remaining_us(&shared, &other, T0 + 5 * SEC),
        None,
        "expired"
    );
}

#[test]
fn quota_mode_limits_are_never_cached() {
    let rl = RateLimiter::from_json(
        br#"{"limits": {"domain": "nexus", "descriptors": [{"key": "route", "value": "lake",
              "descriptors": [{"key": "client_id", "quota_mode": true,
                               "rate_limit": {"unit": "minute", "requests_per_unit": 2}}]}]},
             "service": {"cluster": "rls", "timeout_ms": 20}}"#,
    )
    .unwrap();
    let e = env();
    let mut calls = 0;
    let answer = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![status(Code::OverLimit, 2, 0, 30)],
        ..Default::default()
    }
    .encode_to_vec();
    over_at(&rl, &e, "alice", T0, &answer, &mut calls);
    assert!(matches!(
        ask(&rl, &e, "alice", T0 + SEC, &mut calls),
        Step::CallService { .. }
    ));
    assert_eq!(calls, 2);
}
