//! Every storage scenario, run against every backend (memory and real Redis) by one macro.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use nexus_ratelimit_service::algorithm::{Algorithm, Counter};
use nexus_ratelimit_service::storage::Storage;

const SEC: u64 = 1_000_000;
/// A fixed instant well inside a minute window (so boundaries are where the test puts them).
const T0: u64 = 1_800_000_000 * SEC;

fn counter(key: &str, limit: u32, window_us: u64) -> Counter {
    Counter {
        key: key.to_string(),
        limit,
        window_us,
    }
}

async fn admitted<S: Storage>(s: &S, alg: Algorithm, c: &Counter, n: u32, now: u64) -> u32 {
    let mut ok = 0;
    for _ in 0..n {
        if s.check_and_update(alg, std::slice::from_ref(c), 1, now)
            .await
            .unwrap()[0]
            .allowed
        {
            ok += 1;
        }
    }
    ok
}

every_backend!(
    fixed_window_admits_exactly_the_limit,
    fixed_window_resets_at_the_boundary,
    remaining_and_reset_are_reported,
    hits_addend_counts_as_many,
    counters_are_independent,
    gcra_is_smooth_across_what_would_be_a_window_boundary,
    concurrent_clients_never_over_admit_a_fixed_window,
    concurrent_clients_never_exceed_the_gcra_burst,
);

async fn fixed_window_admits_exactly_the_limit<S: Storage>(s: S) {
    let c = counter("a", 5, 60 * SEC);
    assert_eq!(
        admitted(&s, Algorithm::FixedWindow, &c, 8, T0 + 10 * SEC).await,
        5
    );
}

async fn fixed_window_resets_at_the_boundary<S: Storage>(s: S) {
    let c = counter("b", 3, 60 * SEC);
    let window_start = T0 - T0 % (60 * SEC);
    let last_us = window_start + 60 * SEC - 1;
    assert_eq!(
        admitted(&s, Algorithm::FixedWindow, &c, 4, last_us).await,
        3
    );
    // One microsecond later is a new window: the documented 2x burst across a boundary.
    assert_eq!(
        admitted(&s, Algorithm::FixedWindow, &c, 4, last_us + 1).await,
        3
    );
}

async fn remaining_and_reset_are_reported<S: Storage>(s: S) {
    let c = counter("c", 10, 60 * SEC);
    let window_start = T0 - T0 % (60 * SEC);
    let now = window_start + 15 * SEC;
    let d = s
        .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&c), 1, now)
        .await
        .unwrap()[0];
    assert!(d.allowed);
    assert_eq!(d.remaining, 9);
    assert_eq!(d.reset_us, 45 * SEC);
}

async fn hits_addend_counts_as_many<S: Storage>(s: S) {
    let c = counter("d", 10, 60 * SEC);
    let now = T0;
    let d = s
        .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&c), 7, now)
        .await
        .unwrap()[0];
    assert!(d.allowed && d.remaining == 3);
    let d = s
        .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&c), 4, now)
        .await
        .unwrap()[0];
    assert!(!d.allowed && d.remaining == 0);
    let d = s
        .check_and_update(Algorithm::Gcra, std::slice::from_ref(&c), 11, now)
        .await
        .unwrap()[0];
    assert!(!d.allowed, "more hits than the burst are never admitted");
}

async fn counters_are_independent<S: Storage>(s: S) {
    let a = counter("e|client_id=alice", 2, 60 * SEC);
    let b = counter("e|client_id=bob", 2, 60 * SEC);
    let both = [a.clone(), b.clone()];
    let d = s
        .check_and_update(Algorithm::FixedWindow, &both, 2, T0)
        .await
        .unwrap();
    assert!(d.iter().all(|d| d.allowed));
    let d = s
        .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&a), 1, T0)
        .await
        .unwrap();
    assert!(!d[0].allowed);
    let d = s
        .check_and_update(
            Algorithm::FixedWindow,
            std::slice::from_ref(&b),
            1,
            T0 + 60 * SEC,
        )
        .await
        .unwrap();
    assert!(d[0].allowed, "bob's next window is his own");
}

async fn gcra_is_smooth_across_what_would_be_a_window_boundary<S: Storage>(s: S) {
    let c = counter("f", 60, 60 * SEC); // one per second, burst 60
    let window_start = T0 - T0 % (60 * SEC);
    let last_us = window_start + 60 * SEC - 1;
    assert_eq!(admitted(&s, Algorithm::Gcra, &c, 70, last_us).await, 60);
    // Unlike a fixed window, the next "window" brings no new burst: one hit per elapsed second.
    assert_eq!(admitted(&s, Algorithm::Gcra, &c, 10, last_us + 1).await, 0);
    assert_eq!(
        admitted(&s, Algorithm::Gcra, &c, 10, last_us + 3 * SEC).await,
        3
    );
}

async fn concurrent_clients_never_over_admit_a_fixed_window<S: Storage>(s: S) {
    let s = Arc::new(s);
    let c = counter("g", 100, 3_600 * SEC);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (s, c) = (s.clone(), c.clone());
            tokio::spawn(async move { admitted(&*s, Algorithm::FixedWindow, &c, 10, T0).await })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 100, "200 parallel attempts against a limit of 100");
}

async fn concurrent_clients_never_exceed_the_gcra_burst<S: Storage>(s: S) {
    let s = Arc::new(s);
    let c = counter("h", 100, 3_600 * SEC);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (s, c) = (s.clone(), c.clone());
            tokio::spawn(async move { admitted(&*s, Algorithm::Gcra, &c, 10, T0).await })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 100);
}

/// The health check of the controller's `redis` component.
#[tokio::test]
async fn redis_ping_answers_when_up_and_fails_fast_when_down() {
    support::shared_redis().ping().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = nexus_ratelimit_service::storage::RedisStorage::new(
        &format!("redis://127.0.0.1:{port}/0"),
        "nexus-test:",
        std::time::Duration::from_millis(200),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let err = down.ping().await.unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "{err}");
    assert!(err.to_string().contains("redis"), "{err}");
}

/// GCRA decisions are pipelined as `EVALSHA`: a Redis that forgot the script (restarted, or
/// `SCRIPT FLUSH`ed) gets it loaded again, and the call still decides.
#[tokio::test]
async fn gcra_loads_its_script_again_when_redis_forgot_it() {
    let redis = nexus_ratelimit_service::testkit::PrivateRedis::start();
    let s = nexus_ratelimit_service::storage::RedisStorage::new(
        &redis.url(),
        "nexus-test:",
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    let c = counter("script", 3, 60 * SEC);
    let remaining = |d: Vec<nexus_ratelimit_service::algorithm::Decision>| d[0].remaining;
    let first = s.check_and_update(Algorithm::Gcra, std::slice::from_ref(&c), 1, T0);
    assert_eq!(remaining(first.await.unwrap()), 2);
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "SCRIPT", "FLUSH"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&flushed.stdout).trim(), "OK");
    let second = s.check_and_update(Algorithm::Gcra, std::slice::from_ref(&c), 1, T0);
    assert_eq!(remaining(second.await.unwrap()), 1);
}
