//! `cargo xtask bench ratelimit`: the rate-limit service's decisions/s and p99 on Redis, against
//! `redis-benchmark -t incr` on the same Redis in the same run (one round trip per decision is
//! the physical limit), and nexus-ratelimit's added latency in Envoy against Envoy's native
//! `local_ratelimit`, same run, same machine; and the global limit leased (quota held in the
//! proxy, renewed in the background) against local buckets and strict global calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nexus_proto::ratelimit::rate_limit_descriptor::Entry;
use nexus_proto::ratelimit::rate_limit_service_client::RateLimitServiceClient;
use nexus_proto::ratelimit::{RateLimitDescriptor, RateLimitRequest};
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::load::{wrk, LoadStats};
use nexus_tests::ratelimit_service::{Backend, RateLimitServer};
use nexus_tests::upstream::Upstream;
use serde_json::json;

const LIMITS: &str = r#"{"domain": "bench", "descriptors": [{"key": "route", "value": "lake",
  "descriptors": [{"key": "client_id", "rate_limit": {"unit": "second", "requests_per_unit": 1000000000}}]}]}"#;
const SECONDS: u64 = 5;
const CONCURRENCY: usize = 32;

fn main() -> Result<()> {
    println!("== rate-limit service: ShouldRateLimit over gRPC, {CONCURRENCY} concurrent callers, {SECONDS} s each ==");
    let incr = redis_benchmark_incr()?;
    let redis = service_load(Backend::Redis("redis://127.0.0.1:6379/0".into()))?;
    let memory = service_load(Backend::Memory)?;
    println!(
        "{:<34} {:>12} {:>10} {:>10}",
        "", "ops/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:<34} {:>12.0} {:>10.3} {:>10}",
        "redis-benchmark -t incr (baseline)", incr.0, incr.1, "-"
    );
    for (name, s) in [
        ("nexus-ratelimit on Redis", redis),
        ("nexus-ratelimit in memory", memory),
    ] {
        println!(
            "{name:<34} {:>12.0} {:>10.3} {:>10.3}",
            s.rps, s.p50_ms, s.p99_ms
        );
    }
    println!(
        "ratio service-on-Redis / redis INCR: {:.2}x (target >= 0.5x)",
        redis.rps / incr.0
    );

    println!("\n== filter cost in Envoy (--concurrency 1, wrk -c 16, {SECONDS} s, every request allowed) ==");
    let lake = Upstream::start("lake")?;
    let rls = RateLimitServer::start(LIMITS, Backend::Redis("redis://127.0.0.1:6379/0".into()))?;
    let rows = [
        (
            "router only (baseline)",
            setup(&lake, None, false, rls.port)?,
        ),
        (
            "router + native local_ratelimit",
            setup(&lake, None, true, rls.port)?,
        ),
        (
            "router + nexus-ratelimit (local)",
            setup(&lake, Some(Mode::Local), false, rls.port)?,
        ),
        (
            "router + nexus-ratelimit (strict global)",
            setup(&lake, Some(Mode::Strict), false, rls.port)?,
        ),
        (
            "router + nexus-ratelimit (leased global)",
            setup(&lake, Some(Mode::Leased), false, rls.port)?,
        ),
    ];
    let mut measured = Vec::new();
    for (name, envoy) in &rows {
        wrk(envoy.port, "/lake/t", &["x-client: bench"], 1, 16, None)?; // warm-up
        let s = wrk(
            envoy.port,
            "/lake/t",
            &["x-client: bench"],
            SECONDS,
            16,
            None,
        )?;
        if s.non_2xx > 0 {
            bail!(
                "{name}: {} non-2xx responses; the benchmark expects every request allowed",
                s.non_2xx
            );
        }
        measured.push((*name, s));
    }
    let base = measured[0].1;
    println!(
        "{:<42} {:>10} {:>9} {:>9} {:>14}",
        "", "req/s", "p50 ms", "p99 ms", "added p50 ms"
    );
    for (name, s) in &measured {
        println!(
            "{name:<42} {:>10.0} {:>9.3} {:>9.3} {:>14.3}",
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.p50_ms - base.p50_ms
        );
    }
    let native = measured[1].1;
    let local = measured[2].1;
    println!(
        "nexus local / native local_ratelimit: throughput {:.2}x, added p50 {:.3} ms vs {:.3} ms",
        local.rps / native.rps,
        local.p50_ms - base.p50_ms,
        native.p50_ms - base.p50_ms
    );
    let (strict, leased) = (measured[3].1, measured[4].1);
    println!(
        "leased global / local: {:.2}x (target >= 0.9x); leased / strict global: {:.2}x; strict / local: {:.2}x",
        leased.rps / local.rps,
        leased.rps / strict.rps,
        strict.rps / local.rps
    );
    over_limit_rows(&lake, local)
}

/// One request per hour on `lake`: after the first, every request is over limit.
const OVER_LIMITS: &str = r#"{"domain": "bench-over", "descriptors": [{"key": "route", "value": "lake",
  "rate_limit": {"unit": "hour", "requests_per_unit": 1}}]}"#;

/// An over-limit client with the over-limit cache (a 429 from shared data) and without it (a
/// service call per 429), against the allowed client on local buckets measured above.
fn over_limit_rows(lake: &Upstream, allowed_local: LoadStats) -> Result<()> {
    println!("\n== over-limit client (global, Redis; every request 429) vs the allowed local client above ==");
    let rls = RateLimitServer::start(
        OVER_LIMITS,
        Backend::Redis("redis://127.0.0.1:6379/0".into()),
    )?;
    let mut measured = Vec::new();
    for (name, cache) in [
        ("over limit, over_limit_cache on", true),
        ("over limit, over_limit_cache off", false),
    ] {
        let envoy = Envoy::start(&EnvoyConfig {
            filters: vec![
                WasmFilter {
                    name: "nexus-router".into(),
                    module: nexus_tests::filter_module("nexus_router")?,
                    config: r#"{"rules": [{"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}}]}"#.into(),
                },
                WasmFilter {
                    name: "nexus-ratelimit".into(),
                    module: nexus_tests::filter_module("nexus_ratelimit")?,
                    config: format!(
                        r#"{{"limits": {OVER_LIMITS}, "service": {{"cluster": "rls", "timeout_ms": 200}}, "over_limit_cache": {cache}}}"#
                    ),
                },
            ],
            upstreams: vec![("lake".into(), lake.port())],
            grpc_clusters: vec![("rls".into(), rls.port)],
            concurrency: 1,
            ..Default::default()
        })?;
        wrk(envoy.port, "/lake/t", &[], 1, 16, None)?; // warm-up; spends the one allowed request
        let s = wrk(envoy.port, "/lake/t", &[], SECONDS, 16, None)?;
        if s.non_2xx != s.requests {
            bail!(
                "{name}: {} of {} requests were not refused; the benchmark expects every one over limit",
                s.requests - s.non_2xx,
                s.requests
            );
        }
        measured.push((name, s));
    }
    println!(
        "{:<42} {:>10} {:>9} {:>9} {:>16}",
        "", "req/s", "p50 ms", "p99 ms", "vs allowed local"
    );
    for (name, s) in [("allowed, local bucket (from above)", allowed_local)]
        .into_iter()
        .chain(measured)
    {
        println!(
            "{name:<42} {:>10.0} {:>9.3} {:>9.3} {:>15.2}x",
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.rps / allowed_local.rps
        );
    }
    println!("target: over limit with the cache >= 1.00x of the allowed local client");
    Ok(())
}

/// Where nexus-ratelimit enforces the bench limit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Token buckets in the Envoy, no service.
    Local,
    /// A service call per request.
    Strict,
    /// Leases from the service (10% of the limit each), no call per request.
    Leased,
}

fn setup(lake: &Upstream, nexus: Option<Mode>, native: bool, rls_port: u16) -> Result<Envoy> {
    let mut filters = vec![WasmFilter {
        name: "nexus-router".into(),
        module: nexus_tests::filter_module("nexus_router")?,
        config: r#"{"rules": [{"name": "lake", "category": "data_operations", "match": {"path": {"prefix": "/lake/"}}}]}"#.into(),
    }];
    if let Some(mode) = nexus {
        let service = match mode {
            Mode::Local => "",
            Mode::Strict => r#", "service": {"cluster": "rls", "timeout_ms": 200}"#,
            Mode::Leased => {
                r#", "service": {"cluster": "rls", "timeout_ms": 200}, "leases_by_limit": {"lake": {"client_id": {}}}"#
            }
        };
        filters.push(WasmFilter {
            name: "nexus-ratelimit".into(),
            module: nexus_tests::filter_module("nexus_ratelimit")?,
            config: format!(r#"{{"limits": {LIMITS}{service}}}"#),
        });
    }
    let native_filters = if native {
        vec![json!({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "bench",
                "token_bucket": {"max_tokens": 1000000000u64, "tokens_per_fill": 1000000000u64, "fill_interval": "1s"},
                "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}
            }
        })]
    } else {
        Vec::new()
    };
    Envoy::start(&EnvoyConfig {
        filters,
        native_filters,
        upstreams: vec![("lake".into(), lake.port())],
        grpc_clusters: vec![("rls".into(), rls_port)],
        concurrency: 1,
        ..Default::default()
    })
}

/// `redis-benchmark -t incr`: (requests/s, p50 ms).
fn redis_benchmark_incr() -> Result<(f64, f64)> {
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "-t",
            "incr",
            "-n",
            "200000",
        ])
        .args(["-c", &CONCURRENCY.to_string(), "-q"])
        .output()
        .context("redis-benchmark is needed (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "INCR: 98522.17 requests per second, p50=0.167 msec"
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.starts_with("INCR:"))
        .with_context(|| format!("unexpected redis-benchmark output: {text}"))?;
    let rps: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rate in {line:?}"))?;
    let p50 = line
        .split("p50=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok((rps, p50))
}

/// Closed-loop gRPC load: `CONCURRENCY` callers over 4 HTTP/2 connections for `SECONDS`.
fn service_load(backend: Backend) -> Result<LoadStats> {
    let server = RateLimitServer::start(LIMITS, backend)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stats = rt.block_on(async move {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", server.port))
                    .await?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(SECONDS);
        let latencies = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        let mut tasks = Vec::new();
        for i in 0..CONCURRENCY {
            let mut client = clients[i % clients.len()].clone();
            let latencies = latencies.clone();
            tasks.push(tokio::spawn(async move {
                let req = RateLimitRequest {
                    domain: "bench".into(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![
                            Entry {
                                key: "route".into(),
                                value: "lake".into(),
                            },
                            Entry {
                                key: "client_id".into(),
                                value: format!("client-{i}"),
                            },
                        ],
                        limit: None,
                    }],
                    hits_addend: 1,
                };
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if client.should_rate_limit(req.clone()).await.is_err() {
                        return Err(anyhow::anyhow!(
                            "ShouldRateLimit failed during the benchmark"
                        ));
                    }
                    mine.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                if let Ok(mut all) = latencies.lock() {
                    all.extend(mine);
                }
                Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let mut all = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64) * p) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        Ok::<_, anyhow::Error>(LoadStats {
            requests: all.len() as u64,
            rps: all.len() as f64 / SECONDS as f64,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            non_2xx: 0,
        })
    })?;
    Ok(stats)
}
