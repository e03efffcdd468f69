//! Leased limits: requests admitted from the Envoy's lease without a service call, renewals
//! claimed once at the threshold, exhausted windows, window rollover, idle returns, and the
//! failure mode while the lease is empty.

use super::*;
use nexus_proto::lease::{LeaseRequest, LeaseResponse};

/// The route limit of `lake` (100 per minute) leased 10 at a time, renewed at 5, returned
/// after 1 s idle; `ops` is unlimited per client, so its requests carry the route limit only.
fn leased(mode: &str) -> RateLimiter {
    RateLimiter::from_json(
        config(&format!(
            r#", "service": {{"cluster": "rls", "timeout_ms": 20}}, "failure_mode": "{mode}",
               "leases_by_limit": {{"lake": {{"route": {{"share_percent": 10,
                 "renew_below_percent": 50, "idle_return_ms": 1000}}}}}}"#
        ))
        .as_bytes(),
    )
    .unwrap()
}

const KEY: &str = "nexus|route=lake";
const WINDOW: u64 = 60 * SEC;

fn ops(rl: &RateLimiter, e: &Env, now: u64) -> Step {
    rl.on_request(&request(Some("ops")), &e.shared, &e.metrics, now)
}

fn calls(rl: &RateLimiter) -> Vec<LeaseRequest> {
    rl.take_lease_calls()
        .into_iter()
        .map(|c| {
            assert_eq!(c.key, KEY);
            LeaseRequest::decode(c.message.as_slice()).unwrap()
        })
        .collect()
}

/// The service grants `granted` from the window starting at `start`, leaving `remaining`.
fn grant(rl: &RateLimiter, e: &Env, granted: u64, remaining: u64, start: u64, now: u64) {
    let ttl = (start + WINDOW).saturating_sub(now);
    let resp = LeaseResponse {
        granted,
        window_start_us: start,
        assignment_time_to_live: Some(prost_types::Duration {
            seconds: (ttl / SEC) as i64,
            nanos: ((ttl % SEC) * 1000) as i32,
        }),
        remaining,
        requests_per_unit: 100,
    };
    rl.on_lease_answer(KEY, Ok(&resp.encode_to_vec()), &e.shared, &e.metrics, now);
}

#[test]
fn an_empty_lease_applies_the_failure_mode_and_claims_one_renewal() {
    let rl = leased("local_fallback");
    let e = env();
    for _ in 0..3 {
        assert!(matches!(ops(&rl, &e, T0), Step::Allow(_)));
    }
    let sent = calls(&rl);
    assert_eq!(
        sent.len(),
        1,
        "one renewal in flight, however many requests"
    );
    assert_eq!(sent[0].domain, "nexus");
    assert_eq!(sent[0].requested, 10);
    assert_eq!(sent[0].entries.len(), 1);
    assert_eq!(e.metrics.value("nexus_ratelimit.lease.empty"), 3);
    assert_eq!(
        e.metrics.value("nexus_ratelimit.degraded.local_fallback"),
        3
    );
    // Closed: the same wait refuses.
    let rl = leased("fail_closed");
    let e = env();
    let Step::Deny(resp) = ops(&rl, &e, T0) else {
        panic!("fail_closed refuses while the lease is empty")
    };
    assert_eq!(resp.status, 500);
    assert_eq!(e.metrics.value("nexus_ratelimit.degraded.fail_closed"), 1);
}

#[test]
fn granted_quota_is_spent_without_calls_and_renewed_once_at_the_threshold() {
    let rl = leased("fail_closed");
    let e = env();
    ops(&rl, &e, T0);
    calls(&rl);
    grant(&rl, &e, 10, 80, T0, T0 + 1_000);
    let mut renewals = Vec::new();
    for i in 0..10 {
        let Step::Allow(headers) = ops(&rl, &e, T0 + 2_000 + i) else {
            panic!("request {i} is admitted from the lease")
        };
        assert_eq!(
            headers[1].1,
            format!("\"route\";r={};t=60", 80 + 9 - i),
            "what the lease and the service's pool have left"
        );
        renewals.extend(calls(&rl));
    }
    assert_eq!(renewals.len(), 1, "renewed once, at 5 left: {renewals:?}");
    assert_eq!(
        renewals[0].num_requests_allowed, 5,
        "usage reported with it"
    );
    assert_eq!(e.metrics.value("nexus_ratelimit.allowed.lease"), 10);
    // Spent, renewal unanswered: the failure mode (closed) decides.
    assert!(matches!(ops(&rl, &e, T0 + 3_000), Step::Deny(r) if r.status == 500));
    grant(&rl, &e, 10, 70, T0, T0 + 4_000);
    assert!(matches!(ops(&rl, &e, T0 + 5_000), Step::Allow(_)));
    assert_eq!(lease::state(&e.shared, KEY).tokens, 9);
}

#[test]
fn an_exhausted_window_refuses_locally_until_it_ends_then_leases_anew() {
    let rl = leased("fail_open");
    let e = env();
    ops(&rl, &e, T0);
    calls(&rl);
    grant(&rl, &e, 3, 0, T0, T0 + 1_000);
    for _ in 0..3 {
        assert!(matches!(ops(&rl, &e, T0 + 2_000), Step::Allow(_)));
    }
    for _ in 0..5 {
        let Step::Deny(resp) = ops(&rl, &e, T0 + 30 * SEC) else {
            panic!("the window's budget is spent")
        };
        assert_eq!(resp.status, 429);
        assert!(resp
            .headers
            .contains(&("retry-after".to_string(), "30".to_string())));
    }
    assert!(
        calls(&rl).is_empty(),
        "an exhausted window asks nothing more"
    );
    assert_eq!(e.metrics.value("nexus_ratelimit.denied.lease"), 5);
    // The next window: the old lease is void, a renewal goes out.
    ops(&rl, &e, T0 + WINDOW);
    let sent = calls(&rl);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].requested, 10);
    grant(&rl, &e, 10, 90, T0 + WINDOW, T0 + WINDOW + 1_000);
    assert!(matches!(ops(&rl, &e, T0 + WINDOW + 2_000), Step::Allow(_)));
}

#[test]
fn quota_of_an_ended_window_is_void_and_a_late_answer_for_it_is_ignored() {
    let rl = leased("fail_closed");
    let e = env();
    ops(&rl, &e, T0);
    calls(&rl);
    grant(&rl, &e, 10, 90, T0, T0 + 1_000);
    assert!(matches!(ops(&rl, &e, T0 + 2_000), Step::Allow(_)));
    // Window over: 9 leased requests are gone with it.
    assert!(matches!(ops(&rl, &e, T0 + WINDOW), Step::Deny(r) if r.status == 500));
    calls(&rl);
    grant(&rl, &e, 10, 90, T0 + WINDOW, T0 + WINDOW + 1_000);
    grant(&rl, &e, 10, 80, T0, T0 + WINDOW + 2_000); // late, about the old window
    assert_eq!(lease::state(&e.shared, KEY).tokens, 10);
    assert_eq!(lease::state(&e.shared, KEY).window_start_us, T0 + WINDOW);
}

#[test]
fn an_idle_lease_is_given_back_by_the_tick_with_its_usage() {
    let rl = leased("fail_closed");
    let e = env();
    ops(&rl, &e, T0);
    calls(&rl);
    grant(&rl, &e, 10, 90, T0, T0 + 1_000);
    ops(&rl, &e, T0 + 2_000);
    ops(&rl, &e, T0 + 3_000);
    rl.lease_tick(&e.shared, &e.metrics, T0 + 500_000);
    assert!(calls(&rl).is_empty(), "not idle for 1 s yet");
    rl.lease_tick(&e.shared, &e.metrics, T0 + 3_000 + SEC);
    let sent = calls(&rl);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (
            sent[0].requested,
            sent[0].returned,
            sent[0].returned_window_start_us,
            sent[0].num_requests_allowed
        ),
        (0, 8, T0, 2)
    );
    assert_eq!(lease::state(&e.shared, KEY).tokens, 0);
    rl.lease_tick(&e.shared, &e.metrics, T0 + 5 * SEC);
    assert!(calls(&rl).is_empty(), "given back once");
    assert_eq!(e.metrics.value("nexus_ratelimit.lease.returned"), 8);
}

#[test]
fn a_failed_renewal_lets_the_next_request_claim_another() {
    let rl = leased("fail_open");
    let e = env();
    ops(&rl, &e, T0);
    assert_eq!(calls(&rl).len(), 1);
    ops(&rl, &e, T0 + 1_000);
    assert!(calls(&rl).is_empty(), "in flight");
    rl.on_lease_answer(
        KEY,
        Err(ServiceFailure::Status(14, "unavailable".into())),
        &e.shared,
        &e.metrics,
        T0 + 2_000,
    );
    ops(&rl, &e, T0 + 3_000);
    assert_eq!(calls(&rl).len(), 1);
    // A lost answer: after the call's deadline (2 × its timeout) another request claims.
    ops(&rl, &e, T0 + 3_000 + 40_000);
    assert_eq!(calls(&rl).len(), 1);
    assert_eq!(e.metrics.value("nexus_ratelimit.lease.failed"), 1);
}

#[test]
fn workers_sharing_one_lease_never_admit_more_than_granted() {
    // Two filter instances over one shared data: two workers of one Envoy.
    let (a, b) = (leased("fail_closed"), leased("fail_closed"));
    let e = env();
    ops(&a, &e, T0);
    ops(&b, &e, T0);
    assert_eq!(
        calls(&a).len() + calls(&b).len(),
        1,
        "one renewal per Envoy"
    );
    grant(&a, &e, 10, 0, T0, T0 + 1_000);
    let admitted = (0..20)
        .map(|i| if i % 2 == 0 { &a } else { &b })
        .filter(|rl| matches!(ops(rl, &e, T0 + 2_000), Step::Allow(_)))
        .count();
    assert_eq!(admitted, 10);
}

#[test]
fn a_strict_limit_beside_a_leased_one_still_asks_the_service_for_itself_only() {
    let rl = leased("fail_closed");
    let e = env();
    ops(&rl, &e, T0);
    calls(&rl);
    grant(&rl, &e, 10, 90, T0, T0 + 1_000);
    let step = rl.on_request(&request(Some("alice")), &e.shared, &e.metrics, T0 + 2_000);
    let Step::CallService { message, .. } = step else {
        panic!("alice's per-client limit is strict: {step:?}")
    };
    let req = RateLimitRequest::decode(message.as_slice()).unwrap();
    assert_eq!(req.descriptors.len(), 1);
    assert_eq!(req.descriptors[0].entries[1].key, "client_id");
    assert_eq!(
        lease::state(&e.shared, KEY).tokens,
        9,
        "the route limit came from the lease"
    );
}

#[test]
fn an_exhausted_lease_reports_its_usage_when_idle_and_stays_exhausted() {
    let rl = leased("fail_closed");
    let e = env();
    ops(&rl, &e, T0);
    calls(&rl);
    grant(&rl, &e, 2, 0, T0, T0 + 1_000);
    ops(&rl, &e, T0 + 2_000);
    ops(&rl, &e, T0 + 2_000);
    rl.lease_tick(&e.shared, &e.metrics, T0 + 2_000 + SEC);
    let sent = calls(&rl);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].returned, sent[0].num_requests_allowed), (0, 2));
    // Nothing given back, so nothing to ask for: still 429 until the window ends.
    assert!(matches!(ops(&rl, &e, T0 + 3 * SEC), Step::Deny(r) if r.status == 429));
    assert!(calls(&rl).is_empty());
}
