//! `cargo xtask bench guard`: what nexus-guard adds to a request, and how fast it scans.
//!
//! (a) Real Envoy, same run, same upstream: three Envoys (`--concurrency 1`) in front of one
//! upstream answering JSON bodies of 1 KiB, 64 KiB and 1 MiB — no guard, the guard detecting
//! (the body streams through the scanner) and the guard redacting (the body is held, scanned
//! and rewritten). `wrk` drives each; Envoy's CPU time per request is read from /proc. The
//! added CPU per request, and the body size divided by it (the scan rate in V8 inside Envoy),
//! are printed with the ratios to no guard.
//!
//! (b) The detect path alone: native (this machine's CPU) and in wasm under wasmtime (the
//! same .wasm Envoy runs, Cranelift instead of V8), in MB/s of JSON scanned per CPU second
//! of the scanning thread (the machine may be shared; wall time would count others' turns).
//!
//! Options (after `--`): `--duration <s>` (default 5), `--connections <n>` (default 4).

use anyhow::{bail, Result};
use nexus_guard::scan::{ScanConfig, Scanner};
use nexus_tests::body_upstream::{sample_json, BodyUpstream};
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::load::{bench_cpus, taskset, wrk};
use proxy_wasm_test_host::{Action, Host};

const SIZES: [(&str, usize); 3] = [
    ("1 KiB", 1024),
    ("64 KiB", 64 * 1024),
    ("1 MiB", 1024 * 1024),
];
const TARGET_MB_S: f64 = 100.0;

fn config(action: &str) -> String {
    format!(r#"{{"default": {{"max_scan_bytes": 2097152, "response": {{"action": "{action}"}}}}}}"#)
}

fn envoy(upstream: &BodyUpstream, action: Option<&str>, cpu: Option<usize>) -> Result<Envoy> {
    let filters = match action {
        None => vec![],
        Some(a) => vec![WasmFilter {
            name: "nexus-guard".into(),
            module: nexus_tests::filter_module("nexus_guard")?,
            config: config(a),
        }],
    };
    Envoy::start(&EnvoyConfig {
        filters,
        upstreams: vec![("api".into(), upstream.port())],
        concurrency: 1,
        launcher: cpu.map(taskset).unwrap_or_default(),
        ..Default::default()
    })
}

struct Run {
    rps: f64,
    p50_ms: f64,
    cpu_us: f64,
}

fn measure(
    e: &Envoy,
    path: &str,
    seconds: u64,
    connections: u32,
    cpu: Option<usize>,
) -> Result<Run> {
    let headers = ["x-nexus-upstream: api"];
    wrk(e.port, path, &headers, 1, connections, cpu)?; // warm-up: V8 tiers up
    let before = e.cpu_seconds()?;
    let s = wrk(e.port, path, &headers, seconds, connections, cpu)?;
    let used = e.cpu_seconds()? - before;
    if s.non_2xx > 0 || s.requests == 0 {
        bail!("{path}: {} non-2xx of {} requests", s.non_2xx, s.requests);
    }
    Ok(Run {
        rps: s.rps,
        p50_ms: s.p50_ms,
        cpu_us: used * 1e6 / s.requests as f64,
    })
}

fn envoy_cost(seconds: u64, connections: u32) -> Result<()> {
    let cpus = bench_cpus();
    let (proxy_cpu, load_cpu) = (cpus.map(|c| c.0), cpus.map(|c| c.1));
    let upstream = BodyUpstream::start()?;
    let envoys = [
        ("no guard", envoy(&upstream, None, proxy_cpu)?),
        ("detect", envoy(&upstream, Some("detect"), proxy_cpu)?),
        ("redact", envoy(&upstream, Some("redact"), proxy_cpu)?),
    ];
    println!(
        "== Envoy CPU per request, JSON response bodies, wrk -c {connections} for {seconds} s =="
    );
    for (label, size) in SIZES {
        let path = format!("/bytes/{size}");
        let mut base: Option<Run> = None;
        for (name, e) in &envoys {
            // Buffering a body larger than Envoy's per-connection buffer limit (1 MiB by
            // default) fails in Envoy, not in the guard: say so and go on.
            let r = match measure(e, &path, seconds, connections, load_cpu) {
                Ok(r) => r,
                Err(err) => {
                    println!("  {label:>7} {name:<9} failed: {err} (Envoy's buffer limit?)");
                    continue;
                }
            };
            let line = format!(
                "  {label:>7} {name:<9} {:>8.0} req/s  p50 {:>7.2} ms  CPU {:>9.1} µs/req",
                r.rps, r.p50_ms, r.cpu_us
            );
            match &base {
                None => println!("{line}"),
                Some(b) => {
                    let added = r.cpu_us - b.cpu_us;
                    let rate = if added > 0.0 {
                        size as f64 / added
                    } else {
                        f64::INFINITY
                    };
                    println!(
                        "{line}  added {added:>8.1} µs ({:.2}x)  → {rate:>6.0} MB/s in V8",
                        r.cpu_us / b.cpu_us
                    );
                }
            }
            if base.is_none() {
                base = Some(r);
            }
        }
    }
    Ok(())
}

/// CPU time this thread has used (user + system), from /proc: on a shared machine wall time
/// would charge the scanner for other processes' turns.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the command name), in USER_HZ.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn native_detect() -> f64 {
    let body = sample_json(1024 * 1024);
    let config = ScanConfig {
        enabled: nexus_guard::detectors::ALL_ENABLED,
        ..Default::default()
    };
    let rounds = 200;
    let start = thread_cpu_seconds();
    let mut found = 0;
    for _ in 0..rounds {
        let mut s = Scanner::new(true, false);
        for chunk in body.as_bytes().chunks(64 * 1024) {
            s.feed(&config, chunk);
        }
        s.finish(&config);
        found += s.total();
    }
    let secs = thread_cpu_seconds() - start;
    assert!(found > 0);
    (body.len() * rounds) as f64 / secs / 1e6
}

fn wasm_detect() -> Result<f64> {
    let mut host = Host::builder()
        .plugin_config(config("detect"))
        .fuel(false)
        .build_from_file(nexus_tests::filter_module("nexus_guard")?)?;
    host.start()?;
    let body = sample_json(1024 * 1024);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(64 * 1024).collect();
    let rounds = 100;
    let mut spent = 0.0;
    for _ in 0..rounds {
        let mut http = host.http_context()?;
        http.request_headers(&[(":method", "GET"), (":path", "/x")], true)?;
        http.response_headers(
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        )?;
        let start = thread_cpu_seconds();
        for (i, c) in chunks.iter().enumerate() {
            if http.response_body(c, i + 1 == chunks.len())? != Action::Continue {
                bail!("detect paused a body");
            }
        }
        spent += thread_cpu_seconds() - start;
        http.finish()?;
    }
    Ok((body.len() * rounds) as f64 / spent / 1e6)
}

fn main() -> Result<()> {
    let o = nexus_tests::load::numeric_options(&[("--duration", 5), ("--connections", 4)])?;
    let native = native_detect();
    let wasm = wasm_detect()?;
    println!("== detect path, 1 MiB JSON in 64 KiB chunks ==");
    println!("  native            {native:>7.0} MB/s");
    println!(
        "  wasm (wasmtime)   {wasm:>7.0} MB/s   target ≥ {TARGET_MB_S:.0} MB/s per core: {}",
        if wasm >= TARGET_MB_S {
            "met"
        } else {
            "NOT met"
        }
    );
    envoy_cost(o["--duration"], u32::try_from(o["--connections"])?)
}
