//! `cargo xtask bench metrics`: what the Datapunk request metrics cost per request.
//!
//! The metrics are counted from Envoy's access log (`nexus_controller::access_log`), so their
//! price is (a) Envoy formatting and writing one JSON line per request and (b) Nexus reading
//! and counting that line. (a): two Envoys (`--concurrency 1`) in front of one upstream, same
//! run, same `wrk` load — without an access log, and with `nexus up`'s — Envoy's CPU time per
//! request from /proc. (b): the written lines counted by `RequestMetrics` on one thread, its
//! CPU time per line (from /proc/thread-self/schedstat: a shared machine's wall time would
//! charge it for other processes' turns).
//!
//! Options (after `--`): `--duration <s>` (default 5), `--connections <n>` (default 4).

use anyhow::{bail, Result};
use nexus_controller::request_metrics::RequestMetrics;
use nexus_tests::envoy::{Envoy, EnvoyConfig};
use nexus_tests::load::{bench_cpus, taskset, wrk};
use nexus_tests::upstream::Upstream;
use serde_json::json;

/// The headers the router filter would have set, so every label has a value.
const HEADERS: [&str; 4] = [
    "x-nexus-upstream: lake",
    "x-nexus-category: data_operations",
    "x-nexus-rule: datapunk.lake",
    "x-request-id: 0b6f8f5e-6d4c-4a39-9f0e-1c1e2d3f4a5b",
];

fn envoy(upstream: &Upstream, log: Option<&std::path::Path>, cpu: Option<usize>) -> Result<Envoy> {
    let access_log = log
        .map(|path| {
            vec![json!({
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": path.display().to_string(),
                    "log_format": { "json_format": nexus_controller::access_log::json_format() },
                },
            })]
        })
        .unwrap_or_default();
    Envoy::start(&EnvoyConfig {
        upstreams: vec![("lake".into(), upstream.port())],
        concurrency: 1,
        launcher: cpu.map(taskset).unwrap_or_default(),
        access_log,
        ..Default::default()
    })
}

/// Envoy CPU µs per request under `wrk`, after a one-second warm-up.
fn cpu_per_request(e: &Envoy, seconds: u64, connections: u32, cpu: Option<usize>) -> Result<f64> {
    wrk(e.port, "/tables", &HEADERS, 1, connections, cpu)?;
    let before = e.cpu_seconds()?;
    let s = wrk(e.port, "/tables", &HEADERS, seconds, connections, cpu)?;
    let used = e.cpu_seconds()? - before;
    if s.non_2xx > 0 || s.requests == 0 {
        bail!("{} non-2xx of {} requests", s.non_2xx, s.requests);
    }
    Ok(used * 1e6 / s.requests as f64)
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = arg(&args, "--duration", 5);
    let connections = u32::try_from(arg(&args, "--connections", 4))?;
    let cpus = bench_cpus();
    let (proxy_cpu, load_cpu) = (cpus.map(|c| c.0), cpus.map(|c| c.1));
    let upstream = Upstream::start("lake")?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let off = envoy(&upstream, None, proxy_cpu)?;
    let on = envoy(&upstream, Some(&log), proxy_cpu)?;
    println!("== Datapunk request metrics: Envoy CPU per request, wrk -c {connections} for {seconds} s ==");
    // Alternate twice: a shared machine's speed drifts between rounds.
    let mut rows = Vec::new();
    for round in 1..=2 {
        let base = cpu_per_request(&off, seconds, connections, load_cpu)?;
        let with = cpu_per_request(&on, seconds, connections, load_cpu)?;
        println!(
            "  round {round}: no access log {base:>7.1} µs/req   Nexus access log {with:>7.1} µs/req   {:.3}x",
            with / base
        );
        rows.push(with / base);
    }
    drop(on);
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    let metrics = RequestMetrics::default();
    let start = thread_cpu_ns();
    for l in &lines {
        metrics.observe_line(l);
    }
    let ns = thread_cpu_ns().saturating_sub(start);
    let per_line = ns as f64 / 1e3 / lines.len().max(1) as f64;
    println!(
        "== Nexus counting those lines: {} lines, {per_line:.2} µs CPU per line (one thread) ==",
        lines.len()
    );
    let best = rows.iter().copied().fold(f64::INFINITY, f64::min);
    println!("metrics on/off, Envoy CPU per request: {best:.3}x (least of the rounds) + {per_line:.2} µs in Nexus");
    Ok(())
}
