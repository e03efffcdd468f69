//! nexus-cache in real Envoy (two workers sharing one L1) against a fake coherency service:
//! hits, write-through, invalidations, updates and broken streams arriving over the real
//! `Subscribe` stream, two Envoys sharing copies through the service, and bypasses.

use std::time::{Duration, Instant};

use nexus_tests::cache_service::CacheServer;
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::upstream::Upstream;

const CONFIG: &str = r#"{"rules": [{"name": "lake", "match": {"path": {"prefix": "/lake/"}},
    "policy": {"ttl": 60}}],
  "service": {"cluster": "nexus-cache", "timeout_ms": 500, "reconnect_initial_ms": 200}}"#;

fn start(service: &CacheServer, upstream: &Upstream) -> Envoy {
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-cache".into(),
            module: nexus_tests::filter_module("nexus_cache").unwrap(),
            config: CONFIG.into(),
        }],
        upstreams: vec![("lake".into(), upstream.port())],
        grpc_clusters: vec![("nexus-cache".into(), service.port)],
        concurrency: 2,
        ..Default::default()
    })
    .unwrap();
    service
        .wait_for_subscribers(2, Duration::from_secs(10))
        .unwrap();
    // One stream per worker, and one from the main thread's root context: wait until no more
    // arrive, then give Envoy a moment to deliver the Hellos.
    let mut seen = (service.subscribers(), Instant::now());
    while seen.1.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(20));
        if service.subscribers() != seen.0 {
            seen = (service.subscribers(), Instant::now());
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    envoy
}

fn get(envoy: &Envoy, path: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut headers = vec![("x-nexus-upstream", "lake")];
    headers.extend_from_slice(extra);
    let resp = client::get(envoy.port, path, &headers).unwrap();
    let label = resp.header("x-nexus-cache").unwrap_or("").to_string();
    (resp.status, label)
}

/// Waits for counter `name` to reach `at_least` and settle (see `wait_for_stat_settled`).
fn wait_for_stat(envoy: &Envoy, name: &str, at_least: i64) {
    envoy.wait_for_stat_settled(name, at_least).unwrap();
}

/// Waits for counter `name` to reach `at_least`, no longer: for steps that must happen
/// before something else (a reconnect) does.
fn wait_for_count(envoy: &Envoy, name: &str, at_least: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = envoy.stat(name).unwrap().unwrap_or(0);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, waited for {at_least}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for_puts(service: &CacheServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while service.puts().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} Puts reached the service, wanted {n}",
            service.puts().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn second_get_hits_locally_and_an_invalidation_makes_it_miss() {
    let upstream = Upstream::start("lake").unwrap();
    let service = CacheServer::start().unwrap();
    let envoy = start(&service, &upstream);

    assert_eq!(get(&envoy, "/lake/tables", &[]), (200, "miss".into()));
    // Each request opens a connection: both workers serve, and share the L1.
    for _ in 0..4 {
        assert_eq!(get(&envoy, "/lake/tables", &[]), (200, "hit-local".into()));
    }
    assert_eq!(upstream.requests().len(), 1);
    wait_for_stat(&envoy, "wasmcustom.nexus_cache.hit.local", 4);
    // Written through to the service.
    wait_for_puts(&service, 1);
    let key = service.puts()[0].key.clone();
    assert!(key.starts_with("/lake/tables#"), "{key}");

    service.invalidate(&[&key], &[], &[]);
    wait_for_stat(&envoy, "wasmcustom.nexus_cache.invalidations", 2);
    assert_eq!(get(&envoy, "/lake/tables", &[]), (200, "miss".into()));
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(get(&envoy, "/lake/tables", &[]).1, "hit-local");

    // A prefix invalidation (no index in L1: a flush) drops it too.
    // The write-through is fire-and-forget: let the re-fetched copy land before invalidating,
    // or this fake service would store it after the invalidation (the real one refuses it: its
    // put is stamped when the fetch started, before the invalidation's watermark).
    wait_for_puts(&service, 2);
    service.invalidate(&[], &["/lake/"], &[]);
    wait_for_stat(&envoy, "wasmcustom.nexus_cache.invalidations", 4);
    assert_eq!(get(&envoy, "/lake/tables", &[]).1, "miss");
}

#[test]
fn a_broken_stream_flushes_l1_until_resubscribed() {
    let upstream = Upstream::start("lake").unwrap();
    let service = CacheServer::start().unwrap();
    let envoy = start(&service, &upstream);

    assert_eq!(get(&envoy, "/lake/t", &[]).1, "miss");
    assert_eq!(get(&envoy, "/lake/t", &[]).1, "hit-local");
    wait_for_puts(&service, 1);

    service.break_streams();
    wait_for_count(&envoy, "wasmcustom.nexus_cache.flushes", 2);
    // L1 flushed and unused while unsubscribed; the service still has the copy.
    assert_eq!(get(&envoy, "/lake/t", &[]).1, "hit-shared");

    wait_for_stat(&envoy, "wasmcustom.nexus_cache.stream.reconnects", 2);
    service
        .wait_for_subscribers(2, Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Resubscribed: a shared hit fills the L1 again.
    let mut labels = Vec::new();
    for _ in 0..4 {
        labels.push(get(&envoy, "/lake/t", &[]).1);
    }
    assert_eq!(labels[0], "hit-shared", "{labels:?}");
    assert_eq!(labels[3], "hit-local", "{labels:?}");
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn private_no_store_and_credentials_bypass() {
    let upstream = Upstream::start("lake").unwrap();
    let service = CacheServer::start().unwrap();
    let envoy = start(&service, &upstream);

    for extra in [
        ("x-upstream-cache-control", "private"),
        ("x-upstream-cache-control", "no-store"),
        ("cache-control", "no-store"),
        ("authorization", "Bearer t"),
    ] {
        for _ in 0..2 {
            assert_eq!(
                get(&envoy, "/lake/p", &[extra]),
                (200, "bypass".into()),
                "{extra:?}"
            );
        }
    }
    assert_eq!(upstream.requests().len(), 8);
    assert!(service.puts().is_empty());
    // Nothing was stored: a plain request misses.
    assert_eq!(get(&envoy, "/lake/p", &[]).1, "miss");
}

#[test]
fn two_envoys_share_copies_and_updates_through_the_service() {
    let upstream = Upstream::start("lake").unwrap();
    let service = CacheServer::start().unwrap();
    let a = start(&service, &upstream);
    let b = start(&service, &upstream);
    service
        .wait_for_subscribers(4, Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(get(&a, "/lake/shared", &[]).1, "miss");
    wait_for_puts(&service, 1);
    assert_eq!(get(&b, "/lake/shared", &[]).1, "hit-shared");
    assert_eq!(get(&b, "/lake/shared", &[]).1, "hit-local");

    // A refreshes its copy (no-cache: skip the lookup, store the answer): the Put's Update
    // event makes B drop its older copy and ask the service again.
    assert_eq!(
        get(&a, "/lake/shared", &[("cache-control", "no-cache")]).1,
        "miss"
    );
    wait_for_puts(&service, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let label = get(&b, "/lake/shared", &[]).1;
        if label == "hit-shared" {
            break;
        }
        assert_eq!(
            label, "hit-local",
            "B serves its copy until the Update arrives"
        );
        assert!(Instant::now() < deadline, "B never dropped its older copy");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(upstream.requests().len(), 2);
}
