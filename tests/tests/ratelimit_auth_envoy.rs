//! The whole request path in real Envoy: nexus-router → nexus-auth (API keys) → nexus-ratelimit.
//! The identity nexus-auth establishes is what the per-client limit counts, across the workers
//! of one Envoy and across two Envoys sharing the rate-limit service on Redis.

use nexus_auth::testkit::sha256_hex;
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::ratelimit_service::{Backend, RateLimitServer};
use nexus_tests::upstream::Upstream;

const ROUTES: &str = r#"{"rules": [
  {"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}}]}"#;

const LIMITS: &str = r#"{"domain": "nexus-auth-e2e", "descriptors": [{"key": "route", "value": "lake",
  "descriptors": [{"key": "client_id", "rate_limit": {"unit": "minute", "requests_per_unit": 3}}]}]}"#;

fn auth_config() -> String {
    format!(
        r#"{{"api_keys": {{"keys": [
              {{"sha256": "{}", "client_id": "alice"}},
              {{"sha256": "{}", "client_id": "bob"}}]}},
            "rules": [{{"name": "lake", "match": {{"path": {{"prefix": "/lake/"}}}},
                        "requirement": {{"api_key": {{}}}}}}]}}"#,
        sha256_hex("key-alice"),
        sha256_hex("key-bob")
    )
}

fn envoy(lake: &Upstream, rls_port: u16) -> Envoy {
    let filter = |name: &str, lib: &str, config: String| WasmFilter {
        name: name.into(),
        module: nexus_tests::filter_module(lib).unwrap(),
        config,
    };
    Envoy::start(&EnvoyConfig {
        // The router strips every client-sent x-nexus-* header first, so it runs before auth.
        filters: vec![
            filter("nexus-router", "nexus_router", ROUTES.into()),
            filter("nexus-auth", "nexus_auth", auth_config()),
            filter(
                "nexus-ratelimit",
                "nexus_ratelimit",
                format!(
                    r#"{{"limits": {LIMITS}, "service": {{"cluster": "rls", "timeout_ms": 500}},
                        "failure_mode": "fail_closed"}}"#
                ),
            ),
        ],
        upstreams: vec![("lake".into(), lake.port())],
        grpc_clusters: vec![("rls".into(), rls_port)],
        concurrency: 2,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn per_client_limit_follows_the_authenticated_identity_across_workers_and_envoys() {
    let lake = Upstream::start("lake").unwrap();
    let rls =
        RateLimitServer::start(LIMITS, Backend::Redis("redis://127.0.0.1:6379/0".into())).unwrap();
    let a = envoy(&lake, rls.port);
    let b = envoy(&lake, rls.port);

    let call = |port: u16, key: &str, spoof: &str| {
        client::get(
            port,
            "/lake/t",
            &[("x-api-key", key), ("x-nexus-client-id", spoof)],
        )
        .unwrap()
        .status
    };
    // Alice alternates Envoys and claims to be someone else each time: the limit is hers.
    let alice: Vec<u16> = (0..6)
        .map(|i| {
            call(
                if i % 2 == 0 { a.port } else { b.port },
                "key-alice",
                &format!("fake-{i}"),
            )
        })
        .collect();
    assert_eq!(alice, [200, 200, 200, 429, 429, 429]);
    // Bob is counted separately.
    let bob: Vec<u16> = (0..4)
        .map(|i| call(if i % 2 == 0 { b.port } else { a.port }, "key-bob", "alice"))
        .collect();
    assert_eq!(bob, [200, 200, 200, 429]);
    // No key: refused by auth before anything is counted.
    let anon = client::get(a.port, "/lake/t", &[]).unwrap();
    assert_eq!(anon.status, 401);

    let seen: Vec<String> = lake
        .requests()
        .iter()
        .map(|r| {
            r.header("x-nexus-client-id")
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(seen, ["alice", "alice", "alice", "bob", "bob", "bob"]);
}
