//! Every storage scenario, run against every backend (memory, real Redis, a real three-primary
//! Redis Cluster) by one macro; then what only Redis shows (its health check, its script
//! cache, a cluster primary killed mid-run).
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
    reset_deletes_every_matching_counter_and_no_other,
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

/// An operator's `ratelimit.reset` for one client, among counters of many clients (on a
/// cluster they spread over every primary, so the reset must visit each).
async fn reset_deletes_every_matching_counter_and_no_other<S: Storage>(s: S) {
    let clients: Vec<Counter> = (0..24)
        .map(|i| counter(&format!("r|client_id=c{i}:1m"), 1, 60 * SEC))
        .collect();
    for alg in [Algorithm::FixedWindow, Algorithm::Gcra] {
        for c in &clients {
            assert_eq!(admitted(&s, alg, c, 2, T0).await, 1);
        }
    }
    let entries = [("client_id".to_string(), "c7".to_string())];
    // c7's fixed-window counter and its GCRA state; c70 would match a prefix test, not this one.
    assert_eq!(s.reset(&entries).await.unwrap(), 2);
    for alg in [Algorithm::FixedWindow, Algorithm::Gcra] {
        assert_eq!(admitted(&s, alg, &clients[7], 2, T0).await, 1, "{alg:?}");
        assert_eq!(admitted(&s, alg, &clients[8], 1, T0).await, 0, "{alg:?}");
    }
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

/// Callers deciding at once in the failover scenario.
const CALLERS: usize = 4;

/// A Redis Cluster primary is killed (SIGKILL) while callers keep deciding against one limit.
/// Its replica takes over the counter's slot; decisions fail (UNAVAILABLE: the proxy's failure
/// mode decides) until then and go on afterwards from the count the replica had. What a
/// failover can lose is what the killed primary acknowledged but had not yet sent to its
/// replica: on this loopback pair, at most the decisions in flight when it died, one per caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_killed_mid_run_admits_at_most_the_limit_plus_its_replication_lag() {
    const LIMIT: u32 = 3_000;
    let mut cluster = nexus_toolenv::redis_cluster::RedisCluster::start().unwrap();
    let prefix = support::unique_prefix();
    let s = Arc::new(
        nexus_ratelimit_service::storage::RedisStorage::new(
            &cluster.url(),
            &prefix,
            std::time::Duration::from_millis(500),
        )
        .unwrap(),
    );
    let c = counter("failover|client_id=alice:1h", LIMIT, 3_600 * SEC);
    let run = Arc::new(Tally::default());
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| tokio::spawn(decide_until_stopped(s.clone(), c.clone(), run.clone())))
        .collect();
    run.wait_for(|t| t.admitted() >= 300).await;

    let key = nexus_ratelimit_service::storage::tagged_key(&prefix, &c.key);
    let killed = cluster.kill_primary_of(&key).unwrap();
    let before = run.snapshot();
    let at = std::time::Instant::now();
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(killed, std::time::Duration::from_secs(30))
    })
    .unwrap();
    let failover = at.elapsed();
    // Decisions go on after the failover until the limit has refused some.
    run.wait_for(|t| t.denied() > 100).await;
    run.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let after = run.snapshot();
    let stored = stored_count(promoted, &format!("{key}:{}", window_start(&c)));
    eprintln!(
        "failover {}->{promoted} in {failover:?}; before kill {before:?}; end {after:?}; \
         the new primary counts {stored} of {} increments acknowledged",
        killed.port,
        after.0 + after.1
    );
    assert!(before.0 < u64::from(LIMIT), "the kill came after the limit");
    assert!(
        after.2 > before.2,
        "no decision failed: the kill was not mid-run"
    );
    assert!(
        after.0 <= u64::from(LIMIT) + CALLERS as u64,
        "admitted {after:?}"
    );
    // Retries after the crash may count a hit twice (refusing early is the safe side); an
    // acknowledged hit the new primary does not count was lost with the old one.
    assert!(
        stored + CALLERS as u64 >= after.0 + after.1,
        "the new primary lost more than the replication lag: counts {stored}, {after:?}"
    );
}

/// (admitted, denied, failed) decisions of the callers.
#[derive(Default)]
struct Tally {
    admitted: std::sync::atomic::AtomicU64,
    denied: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

impl Tally {
    fn admitted(&self) -> u64 {
        self.admitted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn denied(&self) -> u64 {
        self.denied.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn snapshot(&self) -> (u64, u64, u64) {
        let failed = self.failed.load(std::sync::atomic::Ordering::Relaxed);
        (self.admitted(), self.denied(), failed)
    }

    async fn wait_for(&self, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                self.snapshot()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

async fn decide_until_stopped<S: Storage>(s: Arc<S>, c: Counter, tally: Arc<Tally>) {
    use std::sync::atomic::Ordering::Relaxed;
    while !tally.stop.load(Relaxed) {
        match s
            .check_and_update(Algorithm::FixedWindow, std::slice::from_ref(&c), 1, T0)
            .await
        {
            // Paced, so the run spans the failover (about 4,000 decisions/s in all).
            Ok(d) if d[0].allowed => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tally.admitted.fetch_add(1, Relaxed)
            }
            Ok(_) => tally.denied.fetch_add(1, Relaxed),
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                tally.failed.fetch_add(1, Relaxed)
            }
        };
    }
}

fn window_start(c: &Counter) -> u64 {
    T0 - T0 % c.window_us
}

/// The count a node holds under `key` (0 when none).
fn stored_count(port: u16, key: &str) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "GET", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
