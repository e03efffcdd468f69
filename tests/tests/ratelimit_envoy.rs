//! nexus-ratelimit in real Envoy behind nexus-router: one Envoy's workers share local buckets,
//! two Envoys share the global service on Redis, and each failure mode holds with the service
//! killed or Redis really stopped.

use std::time::{Duration, Instant};

use nexus_ratelimit_service::testkit::PrivateRedis;
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::ratelimit_service::{Backend, RateLimitServer};
use nexus_tests::upstream::Upstream;

const ROUTES: &str = r#"{"rules": [
  {"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}},
  {"name": "stream", "category": "stream_processing", "match": {"path": {"prefix": "/stream/"}}},
  {"name": "cortex", "category": "ai_inference", "match": {"path": {"prefix": "/cortex/"}}}
]}"#;

/// Per tenant (header) on lake, per client on stream and cortex; 3 per minute each.
const LIMITS_JSON: &str = r#"{"domain": "nexus-e2e", "descriptors": [
  {"key": "route", "value": "lake", "descriptors": [
     {"key": "header.x-tenant", "rate_limit": {"unit": "minute", "requests_per_unit": 3}}]},
  {"key": "route", "value": "stream", "descriptors": [
     {"key": "client_id", "rate_limit": {"unit": "minute", "requests_per_unit": 3}}]},
  {"key": "route", "value": "cortex", "descriptors": [
     {"key": "client_id", "rate_limit": {"unit": "minute", "requests_per_unit": 3}}]}]}"#;

struct Upstreams(Vec<Upstream>);

fn upstreams() -> Upstreams {
    Upstreams(
        ["lake", "stream", "cortex"]
            .iter()
            .map(|n| Upstream::start(n).unwrap())
            .collect(),
    )
}

fn envoy(
    ups: &Upstreams,
    ratelimit_config: String,
    concurrency: u32,
    rls_port: Option<u16>,
) -> Envoy {
    Envoy::start(&EnvoyConfig {
        filters: vec![
            WasmFilter {
                name: "nexus-router".into(),
                module: nexus_tests::filter_module("nexus_router").unwrap(),
                config: ROUTES.into(),
            },
            WasmFilter {
                name: "nexus-ratelimit".into(),
                module: nexus_tests::filter_module("nexus_ratelimit").unwrap(),
                config: ratelimit_config,
            },
        ],
        upstreams: ups.0.iter().map(|u| (u.name.clone(), u.port())).collect(),
        grpc_clusters: rls_port
            .map(|p| ("nexus-ratelimit".to_string(), p))
            .into_iter()
            .collect(),
        concurrency,
        ..Default::default()
    })
    .unwrap()
}

fn global_config(extra: &str) -> String {
    format!(
        r#"{{"limits": {LIMITS_JSON}, "service": {{"cluster": "nexus-ratelimit", "timeout_ms": 500}}{extra}}}"#
    )
}

fn statuses(port: u16, path: &str, tenant: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            client::get(port, path, &[("x-tenant", tenant)])
                .unwrap()
                .status
        })
        .collect()
}

#[test]
fn workers_of_one_envoy_share_local_buckets() {
    let ups = upstreams();
    let envoy = envoy(&ups, format!(r#"{{"limits": {LIMITS_JSON}}}"#), 2, None);
    // Each request opens its own connection; the kernel spreads them over both workers.
    let got = statuses(envoy.port, "/lake/t", "acme", 16);
    assert_eq!(got.iter().filter(|s| **s == 200).count(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|s| **s == 429).count(), 13, "{got:?}");
    let worker = |i: u32| {
        envoy
            .stat(&format!("listener.nexus.worker_{i}.downstream_cx_total"))
            .unwrap()
            .unwrap_or(0)
    };
    assert!(
        worker(0) > 0 && worker(1) > 0,
        "both workers served: {} / {}",
        worker(0),
        worker(1)
    );

    let denied = client::get(envoy.port, "/lake/t", &[("x-tenant", "acme")]).unwrap();
    assert_eq!(denied.status, 429);
    assert_eq!(denied.json().unwrap()["error"], "rate_limited");
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let other = client::get(envoy.port, "/lake/t", &[("x-tenant", "globex")]).unwrap();
    assert_eq!(other.status, 200, "another tenant has its own bucket");
    assert_eq!(
        other.header("ratelimit-policy"),
        Some("\"header.x-tenant\";q=3;w=60")
    );
    assert_eq!(
        other
            .header("ratelimit")
            .map(|v| v.starts_with("\"header.x-tenant\";r=2;t=")),
        Some(true)
    );
}

#[test]
fn two_envoys_share_the_global_service_on_redis() {
    let ups = upstreams();
    let rls = RateLimitServer::start(
        LIMITS_JSON,
        Backend::Redis("redis://127.0.0.1:6379/0".into()),
    )
    .unwrap();
    let a = envoy(
        &ups,
        global_config(r#", "failure_mode": "fail_closed""#),
        2,
        Some(rls.port),
    );
    let b = envoy(
        &ups,
        global_config(r#", "failure_mode": "fail_closed""#),
        2,
        Some(rls.port),
    );
    let mut got = Vec::new();
    for i in 0..8 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        got.push(
            client::get(port, "/lake/t", &[("x-tenant", "initech")])
                .unwrap()
                .status,
        );
    }
    assert_eq!(got, [200, 200, 200, 429, 429, 429, 429, 429]);
    let ok = client::get(b.port, "/lake/t", &[("x-tenant", "hooli")]).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("ratelimit")
            .map(|v| v.starts_with("\"header.x-tenant\";r=2;t=")),
        Some(true)
    );
}

#[test]
fn failure_modes_when_the_service_is_killed() {
    let ups = upstreams();
    let mut rls = RateLimitServer::start(LIMITS_JSON, Backend::Memory).unwrap();
    let config = global_config(
        r#", "failure_mode": "fail_open",
           "failure_mode_by_route": {"stream": "fail_closed", "cortex": "fail_closed"},
           "failure_mode_by_limit": {"cortex": {"client_id": "local_fallback"}}"#,
    );
    let e = envoy(&ups, config, 1, Some(rls.port));
    for path in ["/lake/t", "/stream/t", "/cortex/t"] {
        assert_eq!(
            client::get(e.port, path, &[("x-tenant", "t")])
                .unwrap()
                .status,
            200,
            "{path}"
        );
    }
    rls.stop();

    // fail_open: everything passes, and is counted.
    assert_eq!(statuses(e.port, "/lake/t", "t", 5), [200; 5]);
    // fail_closed: a decided 500 with a JSON body (Envoy's failure_mode_deny status).
    let closed = client::get(e.port, "/stream/t", &[]).unwrap();
    assert_eq!(closed.status, 500);
    assert_eq!(closed.json().unwrap()["error"], "rate_limit_unavailable");
    // local_fallback, the limit's own mode over its route's: the same limit (3/min per
    // client), enforced by this Envoy alone.
    assert_eq!(
        statuses(e.port, "/cortex/t", "t", 5),
        [200, 200, 200, 429, 429]
    );

    assert_eq!(
        e.stat("wasmcustom.nexus_ratelimit.degraded.fail_open")
            .unwrap(),
        Some(5)
    );
    assert_eq!(
        e.stat("wasmcustom.nexus_ratelimit.degraded.fail_closed")
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        e.stat("wasmcustom.nexus_ratelimit.degraded.local_fallback")
            .unwrap(),
        Some(5)
    );
}

#[test]
fn redis_stopped_means_local_fallback_then_recovery() {
    let ups = upstreams();
    let mut redis = PrivateRedis::start();
    let rls = RateLimitServer::start(
        LIMITS_JSON,
        Backend::Redis(format!("redis://127.0.0.1:{}/0", redis.port)),
    )
    .unwrap();
    let e = envoy(
        &ups,
        global_config(r#", "failure_mode": "local_fallback""#),
        1,
        Some(rls.port),
    );
    assert_eq!(statuses(e.port, "/stream/t", "x", 1), [200]);

    redis.stop();
    // The service answers UNAVAILABLE; the filter enforces the limit locally.
    assert_eq!(statuses(e.port, "/stream/t", "x", 4), [200, 200, 200, 429]);
    assert_eq!(
        e.stat("wasmcustom.nexus_ratelimit.degraded.local_fallback")
            .unwrap(),
        Some(4)
    );

    redis.restart();
    // The service reconnects by itself; the restarted Redis has fresh counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = e
            .stat("wasmcustom.nexus_ratelimit.degraded.local_fallback")
            .unwrap();
        let status = client::get(e.port, "/stream/t", &[]).unwrap().status;
        let after = e
            .stat("wasmcustom.nexus_ratelimit.degraded.local_fallback")
            .unwrap();
        if before == after {
            assert_eq!(
                status, 200,
                "the first global verdict after recovery admits"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not recover after Redis returned"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_over_limit_client_stops_costing_service_calls() {
    let ups = upstreams();
    let rls = RateLimitServer::start(LIMITS_JSON, Backend::Memory).unwrap();
    let e = envoy(&ups, global_config(""), 2, Some(rls.port));
    let service_calls = || {
        e.stat("cluster.nexus-ratelimit.upstream_rq_total")
            .unwrap()
            .unwrap_or(0)
    };
    // 3 per minute: the service admits 3 and refuses the 4th.
    assert_eq!(
        statuses(e.port, "/lake/t", "umbrella", 4),
        [200, 200, 200, 429]
    );
    assert_eq!(service_calls(), 4);

    // Until its window resets the tenant is refused by the proxy, on either worker.
    let denied = statuses(e.port, "/lake/t", "umbrella", 10);
    assert_eq!(denied, [429; 10]);
    assert_eq!(service_calls(), 4, "no service call while over limit");
    assert_eq!(
        e.stat("wasmcustom.nexus_ratelimit.over_limit_local")
            .unwrap(),
        Some(10)
    );
    let again = client::get(e.port, "/lake/t", &[("x-tenant", "umbrella")]).unwrap();
    assert_eq!(again.status, 429);
    assert_eq!(again.json().unwrap()["error"], "rate_limited");
    let retry: u64 = again.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Another tenant still asks the service.
    assert_eq!(statuses(e.port, "/lake/t", "wayne", 1), [200]);
    assert_eq!(service_calls(), 5);
}

/// In a mesh the service's cluster is Istio's `outbound|<port>||<host>`, and Envoy's gRPC
/// client sends a cluster's name as `:authority` unless told otherwise: a `|` that the
/// service's HTTP/2 server refuses as malformed. The filter names the Service as authority.
#[test]
fn the_global_service_is_reached_through_an_istio_named_cluster() {
    const ISTIO: &str = "outbound|8081||nexus-controller.nexus-system.svc.cluster.local";
    let ups = upstreams();
    let rls = RateLimitServer::start(LIMITS_JSON, Backend::Memory).unwrap();
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![
            WasmFilter {
                name: "nexus-router".into(),
                module: nexus_tests::filter_module("nexus_router").unwrap(),
                config: ROUTES.into(),
            },
            WasmFilter {
                name: "nexus-ratelimit".into(),
                module: nexus_tests::filter_module("nexus_ratelimit").unwrap(),
                config: format!(
                    r#"{{"limits": {LIMITS_JSON}, "service": {{"cluster": "{ISTIO}", "timeout_ms": 500}}, "failure_mode": "fail_closed"}}"#
                ),
            },
        ],
        upstreams: ups.0.iter().map(|u| (u.name.clone(), u.port())).collect(),
        grpc_clusters: vec![(ISTIO.to_string(), rls.port)],
        ..Default::default()
    })
    .unwrap();
    let got = statuses(envoy.port, "/lake/t", "umbrella", 5);
    assert_eq!(got, [200, 200, 200, 429, 429], "{}", envoy.log());
}
