//! `cargo xtask bench auth`: nexus-auth against Envoy's native `jwt_authn` (with its
//! `jwt_cache_config`) and against no auth filter at all, in real Envoy (`--concurrency 1`), with
//! `wrk` on loopback. For RS256, ES256 and EdDSA: (a) one token reused by every request, and
//! (b) a fresh token per request (pre-signed; `wrk` cycles through them with Lua).
//!
//! Two like-for-like pairs: `jwt_authn` verifying only against nexus-auth verifying only
//! (`identity.headers` and `identity.filter_state` off), and `jwt_authn` also putting the
//! identity out (`claim_to_headers`, `payload_in_metadata`) against nexus-auth as configured by
//! default (identity headers and filter state). Each row reports requests/s and Envoy's CPU time
//! per request (from `/proc`); the CPU figure varies less between runs.
//!
//! Options (`cargo xtask bench auth --rounds 5`): `--duration <s>` (default 5), `--connections <n>` (default 16),
//! `--fresh <n>` tokens per algorithm for (b) (default 20000), `--rounds <n>` measurements per
//! filter with a reused token, alternating between filters, of which the median is reported
//! (default 3).
//!
//! `--instructions <n>` counts instead of timing: the user-space instructions Envoy executes
//! per request under valgrind, with n reused-token requests and n/10 fresh ones per filter
//! (see [`instructions`]). Counts repeat between runs; time on a shared VM does not.
//!
//! Every request is answered by Envoy's `direct_response` (no upstream), so the numbers are the
//! filter chain's cost. Two wasm modules written in WAT bound what any proxy-wasm filter can
//! reach: `wasm no-op` (one call into the VM) and `wasm token read` (that call plus reading the
//! `authorization` header, the least an auth filter does). With two or more CPUs, Envoy runs on
//! CPU 0 and `wrk` on CPU 1; each row also reports the CPU time the hypervisor stole during its
//! rounds, the main source of noise on a shared virtual machine.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use nexus_auth::testkit::{self, SigningKey};
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::load::{wrk, wrk_script, LoadStats, StealMeter};
use serde_json::json;

const ISS: &str = "https://id.example.com";
const ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Token cache size of both filters.
const CACHE: usize = 4096;
const PATH: &str = "/api/items";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    None,
    Native,
    /// `jwt_authn` doing what nexus-auth does besides verifying: the caller's identity out as a
    /// header (`claim_to_headers`) and as request data later filters read (`payload_in_metadata`).
    NativeIdentity,
    Nexus,
    /// nexus-auth deciding only (`identity.headers` and `identity.filter_state` off): the same
    /// work as plain `jwt_authn`.
    NexusVerifyOnly,
    /// nexus-auth with an allow-all rule: the proxy-wasm boundary and header handling alone,
    /// no token. What the wasm runtime costs before any authentication work.
    NexusFloor,
    /// A wasm module whose request-headers callback returns at once: the least any proxy-wasm
    /// filter costs in Envoy's V8 (one call into the VM per request).
    WasmNoop,
    /// A wasm module that reads the `authorization` header and continues: the least any
    /// proxy-wasm auth filter costs, since it must at least see the token.
    WasmTokenRead,
}

/// The no-op filter: the ABI's required exports and a request-headers callback that continues.
const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))"#;

/// The token-read filter: one `proxy_get_header_map_value` of `authorization` (Envoy copies the
/// value into the VM through `proxy_on_memory_allocate`, a second call into the VM), then
/// continue.
const TOKEN_READ_WAT: &str = r#"(module
  (import "env" "proxy_get_header_map_value"
    (func $header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "authorization")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $header (i32.const 0) (i32.const 0) (i32.const 13) (i32.const 64) (i32.const 68)))
    i32.const 0))"#;

impl Filter {
    /// Rows measured once, without a token.
    fn tokenless(self) -> bool {
        matches!(
            self,
            Filter::None | Filter::WasmNoop | Filter::WasmTokenRead | Filter::NexusFloor
        )
    }

    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::Native => "envoy jwt_authn",
            Filter::NativeIdentity => "jwt_authn+identity",
            Filter::Nexus => "nexus-auth",
            Filter::NexusVerifyOnly => "nexus verify-only",
            Filter::NexusFloor => "nexus allow-all",
            Filter::WasmNoop => "wasm no-op",
            Filter::WasmTokenRead => "wasm token read",
        }
    }
}

struct Opts {
    duration_s: u64,
    connections: u32,
    fresh: usize,
    rounds: usize,
    /// Requests per count in instruction mode; 0: measure time with `wrk`.
    instructions: usize,
}

fn opts() -> Result<Opts> {
    let o = nexus_tests::load::numeric_options(&[
        ("--duration", 5),
        ("--connections", 16),
        ("--fresh", 20_000),
        ("--rounds", 3),
        ("--instructions", 0),
    ])?;
    Ok(Opts {
        duration_s: o["--duration"],
        connections: u32::try_from(o["--connections"])?,
        fresh: usize::try_from(o["--fresh"])?,
        rounds: usize::try_from(o["--rounds"])?.max(1),
        instructions: usize::try_from(o["--instructions"])?,
    })
}

fn main() -> Result<()> {
    let opts = opts()?;
    let module = nexus_tests::filter_module("nexus_auth")?;
    let dir = tempfile::Builder::new()
        .prefix("nexus-bench-auth-")
        .tempdir()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let noop = dir.path().join("noop.wasm");
    std::fs::write(&noop, wat::parse_str(NOOP_WAT)?)?;
    let token_read = dir.path().join("token-read.wasm");
    std::fs::write(&token_read, wat::parse_str(TOKEN_READ_WAT)?)?;

    let (envoy_launcher, load_cpu) = match nexus_tests::load::bench_cpus() {
        Some((e, l)) => (nexus_tests::load::taskset(e), Some(l)),
        None => (Vec::new(), None),
    };
    let run_steal = StealMeter::start();
    if opts.instructions > 0 {
        return instructions(&opts, dir.path(), now, &noop, &token_read, &module);
    }
    let mut rows: Vec<Row> = Vec::new();
    for alg in ALGS {
        let Tokens { jwks, one, fresh } = tokens(alg, now, opts.fresh);
        let tokens = dir.path().join(format!("tokens-{alg}.txt"));
        std::fs::write(&tokens, fresh.join("\n") + "\n")?;
        let script = dir.path().join(format!("fresh-{alg}.lua"));
        std::fs::write(&script, lua(&tokens))?;
        let bearer = format!("Bearer {one}");
        let header = format!("Authorization: {bearer}");

        let filters = rows_for(alg);
        for mode in ["reused", "fresh"] {
            let filters: Vec<Filter> = filters
                .iter()
                .copied()
                .filter(|f| mode == "reused" || !f.tokenless())
                .collect();
            // Every filter's Envoy runs at once (idle ones cost nothing) so rounds can alternate
            // between them: drift in the machine's speed then hits every filter alike.
            let mut envoys = Vec::new();
            for &f in &filters {
                let module = match f {
                    Filter::WasmNoop => &noop,
                    Filter::WasmTokenRead => &token_read,
                    _ => &module,
                };
                let envoy = Envoy::start(&EnvoyConfig {
                    launcher: envoy_launcher.clone(),
                    ..config(f, &jwks, module)
                })?;
                // Check one request first: a benchmark of 401s would be meaningless.
                let probe =
                    nexus_tests::client::get(envoy.port, PATH, &[("authorization", &bearer)])?;
                if probe.status != 200 {
                    bail!(
                        "{} {alg}: probe answered {}, not 200:\n{}",
                        f.name(),
                        probe.status,
                        envoy.log()
                    );
                }
                envoys.push((f, envoy));
            }
            let load = |envoy: &Envoy, seconds| -> Result<Sample> {
                let steal = StealMeter::start();
                let before = envoy.cpu_seconds()?;
                let stats = if mode == "reused" {
                    wrk(
                        envoy.port,
                        PATH,
                        &[&header],
                        seconds,
                        opts.connections,
                        load_cpu,
                    )?
                } else {
                    wrk_script(
                        envoy.port,
                        PATH,
                        &script,
                        seconds,
                        opts.connections,
                        load_cpu,
                    )?
                };
                let cpu_us = (envoy.cpu_seconds()? - before) * 1e6 / stats.requests.max(1) as f64;
                let steal = steal.and_then(|m| m.stolen()).unwrap_or(0.0);
                Ok(Sample {
                    stats,
                    cpu_us,
                    steal,
                })
            };
            // Fresh tokens are bound by signature checks, far above the noise: one round.
            let rounds = if mode == "reused" { opts.rounds } else { 1 };
            let mut samples: Vec<Vec<Sample>> = envoys.iter().map(|_| Vec::new()).collect();
            for (_, envoy) in &envoys {
                load(envoy, 1)?; // warm-up: V8 tiers up, caches fill
            }
            for _ in 0..rounds {
                for (i, (_, envoy)) in envoys.iter().enumerate() {
                    samples[i].push(load(envoy, opts.duration_s)?);
                }
            }
            for ((f, _), mut runs) in envoys.iter().zip(samples) {
                let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_us).collect();
                cpu.sort_by(f64::total_cmp);
                let cpu_us = cpu[cpu.len() / 2];
                let steal = runs.iter().map(|r| r.steal).fold(0.0, f64::max);
                runs.sort_by(|a, b| a.stats.rps.total_cmp(&b.stats.rps));
                let all: Vec<String> = runs
                    .iter()
                    .map(|r| {
                        format!(
                            "{:.0} ({:.2} us, {:.0}% stolen)",
                            r.stats.rps,
                            r.cpu_us,
                            r.steal * 100.0
                        )
                    })
                    .collect();
                let stats = runs.swap_remove(runs.len() / 2).stats;
                // Cycling through more tokens than either cache holds still verifies every
                // request; only a shorter cycle would let caches serve "fresh" tokens.
                if mode == "fresh" && stats.requests as usize > opts.fresh && opts.fresh < 2 * CACHE
                {
                    eprintln!(
                        "bench: warning: {} {alg} fresh made {} requests with {} tokens: some were reused (raise --fresh)",
                        f.name(),
                        stats.requests,
                        opts.fresh
                    );
                }
                eprintln!(
                    "bench: {alg} {mode} {}: median {:.0} req/s, {cpu_us:.2} us Envoy CPU per request, of [{}], p50 {:.2} ms, p99 {:.2} ms, non-2xx {}",
                    f.name(),
                    stats.rps,
                    all.join(", "),
                    stats.p50_ms,
                    stats.p99_ms,
                    stats.non_2xx
                );
                rows.push(Row {
                    alg,
                    mode,
                    filter: *f,
                    stats,
                    cpu_us,
                    steal,
                });
            }
        }
    }
    print_table(&rows);
    if let Some(stolen) = run_steal.and_then(|m| m.stolen()) {
        println!(
            "CPU time stolen by the hypervisor during the run: {:.0}% (steal% column: the worst \
             round of each row). High steal means noisy ratios; low steal does not mean clean \
             ones (a shared core also slows without being stolen): --instructions counts instead.",
            stolen * 100.0
        );
    }
    Ok(())
}

struct Tokens {
    jwks: String,
    /// The token every request reuses.
    one: String,
    /// Distinct tokens, one per request.
    fresh: Vec<String>,
}

fn tokens(alg: &str, now: u64, fresh: usize) -> Tokens {
    let key = SigningKey::new(alg, "bench");
    let started = Instant::now();
    let tokens = Tokens {
        jwks: testkit::jwks(&[&key]),
        one: key.token(&testkit::claims(ISS, "nexus", "bench", now, json!({}))),
        fresh: (0..fresh)
            .map(|i| {
                key.token(&testkit::claims(
                    ISS,
                    "nexus",
                    &format!("user-{i}"),
                    now,
                    json!({}),
                ))
            })
            .collect(),
    };
    eprintln!(
        "bench: {alg}: signed {fresh} fresh tokens in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokens
}

/// Which rows a run measures for `alg`: the tokenless ones once, with the first algorithm.
fn rows_for(alg: &str) -> Vec<Filter> {
    let mut filters = if alg == ALGS[0] {
        vec![
            Filter::None,
            Filter::WasmNoop,
            Filter::WasmTokenRead,
            Filter::NexusFloor,
        ]
    } else {
        Vec::new()
    };
    filters.extend([
        Filter::Native,
        Filter::NexusVerifyOnly,
        Filter::NativeIdentity,
        Filter::Nexus,
    ]);
    filters
}

/// The warm-up before counting: the reused token this many times, then [`COUNT_WARM_UP_FRESH`]
/// fresh tokens (not the measured ones), so V8 has compiled and tiered up every path the
/// measured requests take, caches are full and metrics defined.
const COUNT_WARM_UP: usize = 1000;
const COUNT_WARM_UP_FRESH: usize = 50;

/// `--instructions N`: the user-space instructions Envoy executes per request, counted by
/// valgrind (cachegrind). Time on a shared virtual machine drifted by half between rounds of
/// the same configuration; counts repeat, and each row states how closely.
///
/// Each filter's Envoy starts under cachegrind twice per measurement and serves the same
/// warm-up, then nothing (the baseline), N requests with the reused token, or N/10 with fresh
/// tokens; the least count of each pair, minus the baseline's, over the requests is the
/// per-request count, and the larger difference within a pair, over the requests, its
/// uncertainty (V8 compiles and collects garbage in background threads, at times that vary).
/// The kernel's share (sockets, loopback) is not counted: it is the same for every filter,
/// and most of what the requests/s table measures.
fn instructions(
    opts: &Opts,
    dir: &Path,
    now: u64,
    noop: &Path,
    token_read: &Path,
    module: &Path,
) -> Result<()> {
    nexus_tests::load::ensure_valgrind()?;
    let reused_n = opts.instructions;
    let fresh_n = (opts.instructions / 10).max(20);
    // (alg, mode, filter, instructions per request, uncertainty)
    let mut rows: Vec<(&str, &str, Filter, f64, f64)> = Vec::new();
    for alg in ALGS {
        let Tokens { jwks, one, fresh } = tokens(alg, now, COUNT_WARM_UP_FRESH + fresh_n);
        let bearer = format!("Bearer {one}");
        let fresh: Vec<String> = fresh.iter().map(|t| format!("Bearer {t}")).collect();
        let (warm_fresh, measured_fresh) = fresh.split_at(COUNT_WARM_UP_FRESH);
        let warm_up: Vec<String> = std::iter::repeat_n(bearer.clone(), COUNT_WARM_UP)
            .chain(warm_fresh.iter().cloned())
            .collect();
        for f in rows_for(alg) {
            let module = match f {
                Filter::WasmNoop => noop,
                Filter::WasmTokenRead => token_read,
                _ => module,
            };
            let count = |label: &str, measured: &[String]| -> Result<i64> {
                let out = dir.join(format!("cachegrind-{alg}-{}-{label}.out", f.name()));
                let envoy = Envoy::start(&EnvoyConfig {
                    launcher: vec![
                        "valgrind".into(),
                        "--tool=cachegrind".into(),
                        "--cache-sim=no".into(),
                        "--branch-sim=no".into(),
                        // V8 writes the machine code it runs.
                        "--smc-check=all-non-file".into(),
                        format!("--cachegrind-out-file={}", out.display()),
                    ],
                    ..config(f, &jwks, module)
                })?;
                let mut session = nexus_tests::client::Session::connect(envoy.port)?;
                for (i, b) in warm_up.iter().chain(measured).enumerate() {
                    let r = session.get(PATH, &[("authorization", b)])?;
                    if r.status != 200 {
                        bail!(
                            "{} {alg}: answered {}, not 200:\n{}",
                            f.name(),
                            r.status,
                            envoy.log()
                        );
                    }
                    if i + 1 == warm_up.len() {
                        // V8's background compilation, started by the warm-up, must end
                        // before the measured requests (or the baseline) begin.
                        wait_until_idle(&envoy)?;
                    }
                }
                drop(session);
                envoy.quit()?;
                i64::try_from(cachegrind_total(&out)?).map_err(Into::into)
            };
            // Runs differ only by work added (V8 compiling or collecting garbage in the
            // background at varying times), never removed: the least of two runs is the
            // cleaner one, and the two runs' difference bounds what is left.
            let least_of_two = |label: &str, measured: &[String]| -> Result<(i64, i64)> {
                let (a, b) = (
                    count(&format!("{label}-1"), measured)?,
                    count(&format!("{label}-2"), measured)?,
                );
                Ok((a.min(b), (a - b).abs()))
            };
            let (base, base_spread) = least_of_two("base", &[])?;
            let mut measure = |mode: &'static str, measured: &[String]| -> Result<()> {
                let n = measured.len() as f64;
                let (after, spread) = least_of_two(mode, measured)?;
                let per_request = (after - base) as f64 / n;
                let spread = base_spread.max(spread) as f64 / n;
                eprintln!(
                    "bench: {alg} {mode} {}: {per_request:.0} ± {spread:.0} instructions per request",
                    f.name()
                );
                rows.push((alg, mode, f, per_request, spread));
                Ok(())
            };
            measure("reused", &vec![bearer.clone(); reused_n])?;
            if !f.tokenless() {
                measure("fresh", measured_fresh)?;
            }
        }
    }
    println!();
    println!("Envoy user-space instructions per request (valgrind); ratio native/nexus, above 1: nexus executes fewer");
    println!(
        "{:<6} {:<7} {:<19} {:>12} {:>9} {:>13} {:>16}",
        "alg", "token", "filter", "instr/req", "±", "vs jwt_authn", "vs jwt_authn+id"
    );
    let find = |alg: &str, mode: &str, f: Filter| {
        rows.iter()
            .find(|r| r.0 == alg && r.1 == mode && r.2 == f)
            .map(|r| r.3)
    };
    for &(alg, mode, f, n, spread) in &rows {
        let versus = |native: Filter| match (f, find(alg, mode, native)) {
            (Filter::Native | Filter::NativeIdentity | Filter::None, _) | (_, None) => {
                String::new()
            }
            (_, Some(v)) => format!("{:.2}x", v / n),
        };
        let (a, m) = if f.tokenless() {
            ("-", "-")
        } else {
            (alg, mode)
        };
        let identity = if f == Filter::Nexus {
            versus(Filter::NativeIdentity)
        } else {
            String::new()
        };
        println!(
            "{a:<6} {m:<7} {:<19} {n:>12.0} {spread:>9.0} {:>13} {:>16}",
            f.name(),
            versus(Filter::Native),
            identity
        );
    }
    Ok(())
}

/// Waits until Envoy has used (almost) no CPU for a second: under valgrind, V8 compiling a
/// function that turned hot takes seconds, and would otherwise land in whichever run is next.
fn wait_until_idle(envoy: &Envoy) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    let mut last = envoy.cpu_seconds()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = envoy.cpu_seconds()?;
        if now - last < 0.05 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("envoy kept computing for 5 minutes after the warm-up");
        }
        last = now;
    }
}

/// The instruction total of a cachegrind output file (its `summary:` line).
fn cachegrind_total(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no summary in {}", path.display()))
}

fn config(filter: Filter, jwks: &str, module: &Path) -> EnvoyConfig {
    let mut c = EnvoyConfig {
        concurrency: 1,
        direct_response: Some((200, "ok".to_string())),
        ..Default::default()
    };
    match filter {
        Filter::None => {}
        Filter::Native | Filter::NativeIdentity => {
            let mut provider = json!({
                "issuer": ISS,
                "audiences": ["nexus"],
                "local_jwks": {"inline_string": jwks},
                "forward": true,
                "jwt_cache_config": {"jwt_cache_size": CACHE}
            });
            if filter == Filter::NativeIdentity {
                provider["claim_to_headers"] =
                    json!([{"header_name": "x-nexus-client-id", "claim_name": "sub"}]);
                provider["payload_in_metadata"] = json!("corp");
            }
            c.native_filters.push(json!({
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {"corp": provider},
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}]
                }
            }));
        }
        // `forward` as in the native filter: both leave the token on the request.
        Filter::Nexus | Filter::NexusVerifyOnly => c.filters.push(WasmFilter {
            name: "nexus-auth".into(),
            module: module.to_path_buf(),
            config: json!({
                "providers": {"corp": {"issuer": ISS, "audiences": ["nexus"], "jwks": {"inline": jwks},
                                       "forward": true}},
                "rules": [{"name": "all", "requirement": {"jwt": {}}}],
                "token_cache": {"max_entries": CACHE},
                "identity": if filter == Filter::Nexus {
                    json!({})
                } else {
                    json!({"headers": false, "filter_state": false})
                }
            })
            .to_string(),
        }),
        Filter::WasmNoop | Filter::WasmTokenRead => c.filters.push(WasmFilter {
            name: filter.name().replace(' ', "-"),
            module: module.to_path_buf(),
            config: "{}".into(),
        }),
        Filter::NexusFloor => c.filters.push(WasmFilter {
            name: "nexus-auth".into(),
            module: module.to_path_buf(),
            config: json!({
                "providers": {"corp": {"issuer": ISS, "audiences": ["nexus"], "jwks": {"inline": jwks}}},
                "rules": [{"name": "all", "requirement": "allow"}]
            })
            .to_string(),
        }),
    }
    c
}

struct Sample {
    stats: LoadStats,
    /// Envoy's CPU time per request served, in microseconds.
    cpu_us: f64,
    /// Share of the machine's CPU time stolen by the hypervisor meanwhile.
    steal: f64,
}

struct Row {
    alg: &'static str,
    mode: &'static str,
    filter: Filter,
    stats: LoadStats,
    cpu_us: f64,
    /// The most stolen in any round of this row.
    steal: f64,
}

/// `nexus/native` as two ratios: requests/s (higher is better for nexus) and Envoy CPU per
/// request (native's over nexus', so also higher is better). One row of `versus` per alg/mode.
fn ratio(row: &Row, rows: &[Row], versus: Filter) -> String {
    rows.iter()
        .find(|r| r.alg == row.alg && r.mode == row.mode && r.filter == versus)
        .map(|n| {
            format!(
                "{:.2}x | {:.2}x",
                row.stats.rps / n.stats.rps,
                n.cpu_us / row.cpu_us
            )
        })
        .unwrap_or_default()
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "nexus/native: requests/s ratio | Envoy-CPU-per-request ratio (above 1: nexus is faster)"
    );
    println!(
        "{:<6} {:<7} {:<19} {:>9} {:>7} {:>7} {:>7} {:>9} {:>6} {:>15} {:>19}",
        "alg",
        "token",
        "filter",
        "req/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "cpu us/r",
        "steal%",
        "vs jwt_authn",
        "vs jwt_authn+id"
    );
    for r in rows {
        let wasm = matches!(
            r.filter,
            Filter::Nexus
                | Filter::NexusVerifyOnly
                | Filter::NexusFloor
                | Filter::WasmNoop
                | Filter::WasmTokenRead
        );
        let (plain, identity) = if wasm {
            (
                ratio(r, rows, Filter::Native),
                if r.filter == Filter::Nexus {
                    ratio(r, rows, Filter::NativeIdentity)
                } else {
                    String::new()
                },
            )
        } else {
            (String::new(), String::new())
        };
        let (alg, mode) = if r.filter.tokenless() {
            ("-", "-")
        } else {
            (r.alg, r.mode)
        };
        println!(
            "{alg:<6} {mode:<7} {:<19} {:>9.0} {:>7.2} {:>7.2} {:>7} {:>9.2} {:>6.0} {:>15} {:>19}",
            r.filter.name(),
            r.stats.rps,
            r.stats.p50_ms,
            r.stats.p99_ms,
            r.stats.non_2xx,
            r.cpu_us,
            r.steal * 100.0,
            plain,
            identity
        );
    }
}

fn lua(tokens: &Path) -> String {
    format!(
        r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format("GET", "{PATH}", {{["Authorization"] = "Bearer " .. tokens[i]}})
end
"#,
        tokens.display()
    )
}
