//! Leased quota in real Envoy: two Envoys share a global limit of 1,000 per minute through
//! leases from the rate-limit service on Redis, under request loops from both. Together they
//! admit no more than the limit in the window (the bound of the README's rate-limit section:
//! grants come from the window's own counter and are void when it ends), and the service sees
//! a lease call per tens of requests instead of a call per request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nexus_tests::client::Session;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::ratelimit_service::{Backend, RateLimitServer};
use nexus_tests::upstream::Upstream;

const LIMIT: u64 = 1000;
const LIMITS_JSON: &str = r#"{"domain": "nexus-lease", "descriptors": [
  {"key": "route", "value": "lake", "rate_limit": {"unit": "minute", "requests_per_unit": 1000}}]}"#;
/// Leases of 10% (100 requests), renewed at half, returned after 2 s idle. Closed while a
/// lease is empty: the strictest reading of the bound (no local admissions beside leases); the
/// README gives the bound with the other failure modes.
const LEASES: &str = r#""leases_by_limit": {"lake": {"route": {"share_percent": 10,
  "renew_below_percent": 50, "idle_return_ms": 2000}}}, "failure_mode": "fail_closed""#;
const LOOP: Duration = Duration::from_secs(6);
const LOOPS_PER_ENVOY: usize = 4;

fn envoy(lake: &Upstream, rls_port: u16) -> Envoy {
    Envoy::start(&EnvoyConfig {
        filters: vec![
            WasmFilter {
                name: "nexus-router".into(),
                module: nexus_tests::filter_module("nexus_router").unwrap(),
                config: r#"{"rules": [{"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}}]}"#.into(),
            },
            WasmFilter {
                name: "nexus-ratelimit".into(),
                module: nexus_tests::filter_module("nexus_ratelimit").unwrap(),
                config: format!(
                    r#"{{"limits": {LIMITS_JSON}, "service": {{"cluster": "nexus-ratelimit", "timeout_ms": 200}}, {LEASES}}}"#
                ),
            },
        ],
        upstreams: vec![("lake".into(), lake.port())],
        grpc_clusters: vec![("nexus-ratelimit".to_string(), rls_port)],
        concurrency: 2,
        ..Default::default()
    })
    .unwrap()
}

/// Waits for the next minute when the current one has less than the loop (and some margin)
/// left: the bound is per window, so the loops must run inside one.
fn inside_one_window() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.as_millis() % 60_000;
    let needed = LOOP.as_millis() + 4_000;
    if 60_000 - into < needed {
        std::thread::sleep(Duration::from_millis((60_000 - into) as u64 + 200));
    }
}

/// Statuses seen by one keep-alive loop until `end`: (200, 429, other).
fn hammer(port: u16, end: Instant) -> (u64, u64, u64) {
    let mut session = Session::connect(port).unwrap();
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    while Instant::now() < end {
        match session.get("/lake/t", &[]).unwrap().status {
            200 => ok += 1,
            429 => limited += 1,
            _ => other += 1,
        }
    }
    (ok, limited, other)
}

#[test]
fn two_envoys_leasing_one_global_limit_admit_at_most_the_limit_per_window() {
    let lake = Upstream::start("lake").unwrap();
    let rls = RateLimitServer::start(
        LIMITS_JSON,
        Backend::Redis("redis://127.0.0.1:6379/0".into()),
    )
    .unwrap();
    let envoys = [envoy(&lake, rls.port), envoy(&lake, rls.port)];
    inside_one_window();
    let end = Instant::now() + LOOP;
    let loops: Vec<_> = envoys
        .iter()
        .flat_map(|e| (0..LOOPS_PER_ENVOY).map(move |_| e.port))
        .map(|port| std::thread::spawn(move || hammer(port, end)))
        .collect();
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for l in loops {
        let (a, b, c) = l.join().unwrap();
        ok += a;
        limited += b;
        other += c;
    }
    let requests = ok + limited + other;
    let lease_calls = rls.counter("nexus_ratelimit_lease_calls_total");
    let strict_calls = rls.counter("nexus_ratelimit_requests_total");
    let granted = rls.counter("nexus_ratelimit_lease_granted_total");
    println!(
        "requests {requests}: admitted {ok}, 429 {limited}, other {other}; \
         service: {lease_calls} lease calls ({granted} granted), {strict_calls} ShouldRateLimit calls"
    );
    assert!(ok <= LIMIT, "admitted {ok} > the window's limit {LIMIT}");
    // Every grant is spent by loops this busy, except what is in flight at the end: at most a
    // lease per Envoy.
    assert!(ok + 2 * 100 >= LIMIT, "admitted only {ok} of {LIMIT}");
    assert!(
        ok <= granted && granted <= LIMIT,
        "granted {granted}, admitted {ok}: admissions come from grants, grants from the budget"
    );
    assert!(
        requests > 5 * LIMIT,
        "the loops must go well past the limit to test it: {requests} requests"
    );
    assert_eq!(strict_calls, 0, "a leased limit never asks ShouldRateLimit");
    assert!(
        lease_calls * 20 < requests,
        "{lease_calls} lease calls for {requests} requests"
    );
    // While an Envoy's lease is empty and its renewal unanswered, its failure mode (closed
    // here) decides, and counts each request it decided.
    let stat = |name: &str| -> i64 {
        envoys
            .iter()
            .map(|e| {
                e.stat(&format!("wasmcustom.nexus_ratelimit.{name}"))
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    };
    println!(
        "envoys: {} lease calls, {} lease-empty requests, {} failed lease calls",
        stat("lease.calls"),
        stat("lease.empty"),
        stat("lease.failed")
    );
    for e in &envoys {
        let cluster = |n: &str| e.stat(&format!("cluster.nexus-ratelimit.{n}")).unwrap();
        println!(
            "envoy {}: service cluster rq_total {:?}, rq_timeout {:?}, cx_total {:?}",
            e.port,
            cluster("upstream_rq_total"),
            cluster("upstream_rq_timeout"),
            cluster("upstream_cx_total")
        );
        for line in e.log().lines().filter(|l| l.contains("lease call failed")) {
            println!("{line}");
        }
    }
    assert_eq!(stat("degraded.fail_closed"), other as i64);
    assert_eq!(stat("denied.lease"), limited as i64);
    assert_eq!(stat("allowed.lease"), ok as i64);
}
