//! `cargo xtask bench graphql`: what GraphQL parsing adds to a request in nexus-router.
//!
//! One Envoy (`--concurrency 1`) with nexus-router and one upstream; same run, same Envoy:
//! a 2 KiB GraphQL POST to a rule with a `graphql` block (body held, parsed, depth and cost
//! counted, routed by root field) and a plain POST of the same size to a rule without one.
//! `wrk` drives each in turn; Envoy's CPU time per request comes from /proc. Printed: each
//! path's rate, p50 and CPU per request, the added CPU per request and the ratio.
//!
//! Options (after `--`): `--duration <s>` (default 5), `--connections <n>` (default 4).

use anyhow::{bail, Result};
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::load::{bench_cpus, taskset, wrk_script};
use nexus_tests::upstream::Upstream;

const BODY_BYTES: usize = 2048;

const CONFIG: &str = r#"{"rules": [
  {"name": "graphql", "category": "data_operations", "match": {"path": {"exact": "/graphql"}},
   "graphql": {"fields": {"datasets": "lake"}, "max_depth": 10, "max_cost": 100000}},
  {"name": "plain", "category": "data_operations", "match": {"path": {"exact": "/plain"}}}
]}"#;

/// A GraphQL request body of exactly `BODY_BYTES`: many fields under one listed root field.
fn graphql_body() -> String {
    let mut fields = String::new();
    let mut i = 0;
    let wrap =
        |f: &str| format!(r#"{{"query": "query Big {{ datasets(first: 10) {{ id{f} }} }}"}}"#);
    while wrap(&fields).len() + format!(" field{i}").len() <= BODY_BYTES {
        fields.push_str(&format!(" field{i}"));
        i += 1;
    }
    let body = wrap(&fields);
    let pad = BODY_BYTES - body.len();
    wrap(&format!("{fields}{}", " ".repeat(pad)))
}

fn plain_body() -> String {
    let shell = r#"{"data": ""}"#;
    format!(r#"{{"data": "{}"}}"#, "x".repeat(BODY_BYTES - shell.len()))
}

fn script(body: &str) -> Result<tempfile::TempPath> {
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), lua)?;
    Ok(file.into_temp_path())
}

struct Run {
    rps: f64,
    p50_ms: f64,
    cpu_us: f64,
}

fn measure(e: &Envoy, path: &str, body: &str, o: (u64, u32), cpu: Option<usize>) -> Result<Run> {
    let (seconds, connections) = o;
    let lua = script(body)?;
    wrk_script(e.port, path, &lua, 1, connections, cpu)?; // warm-up: V8 tiers up
    let before = e.cpu_seconds()?;
    let s = wrk_script(e.port, path, &lua, seconds, connections, cpu)?;
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

fn main() -> Result<()> {
    let o = nexus_tests::load::numeric_options(&[("--duration", 5), ("--connections", 4)])?;
    let (seconds, connections) = (o["--duration"], u32::try_from(o["--connections"])?);
    let cpus = bench_cpus();
    let upstream = Upstream::start("lake")?;
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-router".into(),
            module: nexus_tests::filter_module("nexus_router")?,
            config: CONFIG.into(),
        }],
        upstreams: vec![("lake".into(), upstream.port())],
        concurrency: 1,
        launcher: cpus.map(|c| taskset(c.0)).unwrap_or_default(),
        ..Default::default()
    })?;
    let (gql, plain) = (graphql_body(), plain_body());
    assert_eq!((gql.len(), plain.len()), (BODY_BYTES, BODY_BYTES));
    println!(
        "== nexus-router, {BODY_BYTES}-byte POST bodies, wrk -c {connections} for {seconds} s =="
    );
    let load_cpu = cpus.map(|c| c.1);
    let base = measure(&envoy, "/plain", &plain, (seconds, connections), load_cpu)?;
    let g = measure(&envoy, "/graphql", &gql, (seconds, connections), load_cpu)?;
    for (name, r) in [("plain POST", &base), ("GraphQL", &g)] {
        println!(
            "  {name:<10} {:>8.0} req/s  p50 {:>6.2} ms  Envoy CPU {:>7.1} µs/req",
            r.rps, r.p50_ms, r.cpu_us
        );
    }
    println!(
        "  GraphQL parsing adds {:.1} µs of Envoy CPU per request ({:.2}x the plain POST)",
        g.cpu_us - base.cpu_us,
        g.cpu_us / base.cpu_us
    );
    Ok(())
}
