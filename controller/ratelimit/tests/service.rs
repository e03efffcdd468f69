//! Whole-request decisions of the rate-limit service, over gRPC where it matters, with Redis
//! really stopped for the outage case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use nexus_proto::ratelimit::rate_limit_response::Code;
use nexus_ratelimit_service::limits::parse;
use nexus_ratelimit_service::storage::{MemoryStorage, RedisStorage, Storage};
use nexus_ratelimit_service::{Algorithm, Limits, RateLimiter, UnknownDomain};
use std::sync::atomic::Ordering;

const CONFIG: &str = r#"
domain: nexus
descriptors:
  - key: client_id
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: route
    value: lake
    rate_limit: {unit: minute, requests_per_unit: 1}
    shadow_mode: true
"#;

fn limiter<S: Storage>(storage: S, unknown: UnknownDomain) -> Arc<RateLimiter<S>> {
    let limits = Limits::new([parse(CONFIG).unwrap()]).unwrap();
    // GCRA: these tests run on the real clock and must not straddle a fixed window's boundary.
    Arc::new(RateLimiter::new(limits, storage, Algorithm::Gcra, unknown))
}

use support::request;

#[tokio::test]
async fn per_client_limit_over_grpc() {
    let rl = limiter(MemoryStorage::new(), UnknownDomain::Allow);
    let mut client = support::grpc_client(rl.clone()).await;
    let req = request("nexus", &[&[("client_id", "alice")]]);
    let mut codes = Vec::new();
    for _ in 0..3 {
        let resp = client
            .should_rate_limit(req.clone())
            .await
            .unwrap()
            .into_inner();
        codes.push(resp.overall_code);
    }
    assert_eq!(
        codes,
        [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32]
    );
    let bob = client
        .should_rate_limit(request("nexus", &[&[("client_id", "bob")]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.overall_code, Code::Ok as i32, "bob has his own counter");
    let limit = bob.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(limit.requests_per_unit, 2);
    assert_eq!(bob.statuses[0].limit_remaining, 1);
}

#[tokio::test]
async fn unknown_domain_is_counted_and_answered_as_configured() {
    let req = request("nexsu", &[&[("client_id", "alice")]]);
    let allow = limiter(MemoryStorage::new(), UnknownDomain::Allow);
    let resp = allow.should_rate_limit(&req).await.unwrap();
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(allow.metrics.unknown_domain.load(Ordering::Relaxed), 1);

    let deny = limiter(MemoryStorage::new(), UnknownDomain::Deny);
    let resp = deny.should_rate_limit(&req).await.unwrap();
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    assert_eq!(resp.statuses.len(), 1);

    let error = limiter(MemoryStorage::new(), UnknownDomain::Error);
    let status = error.should_rate_limit(&req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("\"nexsu\" is not configured"),
        "{}",
        status.message()
    );
    assert!(allow
        .metrics
        .render()
        .contains("nexus_ratelimit_unknown_domain_total 1"));
}

#[tokio::test]
async fn shadow_mode_counts_but_never_rejects() {
    let rl = limiter(MemoryStorage::new(), UnknownDomain::Allow);
    let req = request("nexus", &[&[("route", "lake")]]);
    for _ in 0..3 {
        let resp = rl.should_rate_limit(&req).await.unwrap();
        assert_eq!(resp.overall_code, Code::Ok as i32);
    }
    assert_eq!(
        rl.metrics
            .descriptors_shadow_over_limit
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(rl.metrics.descriptors_over_limit.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn any_descriptor_over_limit_makes_the_call_over_limit_and_statuses_keep_order() {
    let rl = limiter(MemoryStorage::new(), UnknownDomain::Allow);
    let req = request("nexus", &[&[("route", "forge")], &[("client_id", "carol")]]);
    let codes: Vec<i32> = {
        let mut last = Vec::new();
        for _ in 0..3 {
            last = rl
                .should_rate_limit(&req)
                .await
                .unwrap()
                .statuses
                .iter()
                .map(|s| s.code)
                .collect();
        }
        last
    };
    // Unconfigured descriptor: OK without a limit; the client's third call is over.
    assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32]);
    let resp = rl.should_rate_limit(&req).await.unwrap();
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    assert!(resp.statuses[0].current_limit.is_none());
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let rl = limiter(MemoryStorage::new(), UnknownDomain::Allow);
    let status = rl
        .should_rate_limit(&request("", &[&[("a", "b")]]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = rl
        .should_rate_limit(&request("nexus", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn redis_outage_answers_unavailable_and_recovers_by_itself() {
    let mut redis = nexus_ratelimit_service::testkit::PrivateRedis::start();
    let storage = RedisStorage::new(
        &redis.url(),
        &support::unique_prefix(),
        Duration::from_millis(200),
    )
    .unwrap();
    let rl = limiter(storage, UnknownDomain::Allow);
    let req = request("nexus", &[&[("client_id", "dave")]]);
    assert_eq!(
        rl.should_rate_limit(&req).await.unwrap().overall_code,
        Code::Ok as i32
    );

    redis.stop();
    let status = rl.should_rate_limit(&req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("rate limit storage unavailable"),
        "{}",
        status.message()
    );
    assert_eq!(rl.metrics.storage_errors.load(Ordering::Relaxed), 1);

    redis.restart();
    // The connection manager reconnects on its own; allow it a few attempts.
    let mut recovered = None;
    for _ in 0..50 {
        if let Ok(resp) = rl.should_rate_limit(&req).await {
            recovered = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = recovered.expect("service must recover when Redis returns");
    // The restarted Redis kept nothing: dave starts a fresh window.
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].limit_remaining, 1);
}
