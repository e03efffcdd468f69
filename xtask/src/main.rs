//! `cargo xtask <command>`: build the wasm filters, run every test, run the demo.

mod wasm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use nexus_toolenv::Tool;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup           install every tool the tests, benches and `run` use into the cache
                  ($NEXUS_CACHE_DIR, else $XDG_CACHE_HOME/nexus, else ~/.cache/nexus)
  build-filters   build every filter to target/filters/<name>.wasm (+ .sha256)
  test            setup (what tests need), build-filters, then cargo test --workspace
  run [DIR]       build-filters, then `nexus up DIR` (default examples/datapunk): real Envoy on
                  127.0.0.1:8080 with the filters, the Nexus services and demo upstreams
  oidc-provider   a local OpenID provider (npm oidc-provider) on 127.0.0.1:9400 with the
                  example portal's client: sign in at http://127.0.0.1:8080/portal/ while
                  `run` serves (any login name, any password)
  bench auth      nexus-auth vs Envoy jwt_authn vs no filter in real Envoy, with wrk
  bench ratelimit rate-limit service vs redis-benchmark INCR; nexus-ratelimit vs Envoy local_ratelimit; leased vs local vs strict global
  bench cache     invalidation lag across two Envoys and two cache-service replicas on Redis;
                  nexus-cache hit-local vs the upstream round trip, with wrk
  bench events    events/s published with confirms (Nexus's publisher vs a plain lapin loop);
                  command round trip p50/p99, on the machine's RabbitMQ; then requests via
                  Envoy (nexus up) with RabbitMQ up vs unreachable, p50/p99 and their ratio
  bench guard     nexus-guard's added Envoy CPU per request (1 KiB, 64 KiB, 1 MiB JSON bodies,
                  detect and redact vs no guard) and detect MB/s, native and in wasm
  bench session   nexus-auth with a session cookie vs the same filter with a reused JWT vs no
                  filter: Envoy CPU per request (issue #18's target: session <= 1.2x JWT)
  bench metrics   the Datapunk request metrics' cost: Envoy CPU per request with `nexus up`'s
                  access log vs none, and Nexus's CPU per counted line
  bench graphql   nexus-router's GraphQL parsing: Envoy CPU per request for a 2 KiB GraphQL
                  POST vs a plain POST of the same size, same Envoy, same run";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("build-filters") => {
            wasm::build_filters(&root)?;
        }
        Some("setup") => {
            wasm::ensure_toolchain()?;
            nexus_toolenv::setup(&Tool::ALL)?;
        }
        Some("test") => {
            nexus_toolenv::setup(&Tool::TESTS)?;
            wasm::build_filters(&root)?;
            // Tests share the machine's Redis; a machine without one gets one for this run.
            let _redis = nexus_toolenv::redis::ensure_running()?;
            // And its RabbitMQ (the event bus tests); likewise started for the run if absent.
            let _rabbitmq = nexus_toolenv::rabbitmq::ensure_running()?;
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .env("ENVOY_BIN", nexus_toolenv::envoy::locate()?)
                .args(["test", "--workspace"])
                .args(&args[1..]);
            status(&mut cmd)?;
        }
        Some("run") => {
            nexus_toolenv::setup(&[Tool::Envoy])?;
            wasm::build_filters(&root)?;
            // `cargo xtask run [DIR] [nexus up flags]`: the Datapunk example by default.
            let rest = &args[1..];
            let (dir, flags) = match rest.first() {
                Some(d) if !d.starts_with('-') => (d.as_str(), &rest[1..]),
                _ => ("examples/datapunk", rest),
            };
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .env("ENVOY_BIN", nexus_toolenv::envoy::locate()?)
                .args([
                    "run",
                    "--quiet",
                    "-p",
                    "nexus-controller",
                    "--bin",
                    "nexus",
                    "--",
                    "up",
                ])
                .arg(dir)
                .args(flags);
            status(&mut cmd)?;
        }
        Some("oidc-provider") => {
            nexus_toolenv::setup(&[Tool::OidcProvider])?;
            let script = nexus_toolenv::browser::oidc_provider()?;
            // The client `examples/datapunk` declares (routes.yaml, portal-oidc.yaml).
            let mut cmd = Command::new("node");
            cmd.arg(&script)
                .current_dir(script.parent().unwrap_or(&root))
                .env("PORT", "9400")
                .env("CLIENT_ID", "datapunk-portal")
                .env("CLIENT_SECRET", "datapunk-portal-dev-secret")
                .env("REDIRECT_URI", "http://127.0.0.1:8080/_nexus/callback");
            status(&mut cmd)?;
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("events") => {
            let _redis = nexus_toolenv::redis::ensure_running()?;
            let _rabbitmq = nexus_toolenv::rabbitmq::ensure_running()?;
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .args(["bench", "-p", "nexus-events", "--bench", "events", "--"])
                .args(&args[2..]);
            status(&mut cmd)?;
            // Then requests through real Envoy with the bus up and down.
            nexus_toolenv::setup(&[Tool::Envoy, Tool::Wrk])?;
            wasm::build_filters(&root)?;
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .env("ENVOY_BIN", nexus_toolenv::envoy::locate()?)
                .args(["bench", "-p", "nexus-controller", "--bench", "bus", "--"])
                .args(&args[2..]);
            status(&mut cmd)?;
        }
        Some("bench")
            if matches!(
                args.get(1).map(String::as_str),
                Some("auth" | "ratelimit" | "cache" | "guard" | "metrics" | "session" | "graphql")
            ) =>
        {
            nexus_toolenv::setup(&[Tool::Envoy, Tool::Wrk, Tool::Valgrind])?;
            wasm::build_filters(&root)?;
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .env("ENVOY_BIN", nexus_toolenv::envoy::locate()?)
                .args([
                    "bench",
                    "-p",
                    bench_package(&args[1]),
                    "--bench",
                    &args[1],
                    "--",
                ])
                .args(&args[2..]);
            status(&mut cmd)?;
        }
        _ => bail!("{USAGE}"),
    }
    Ok(())
}

/// The crate holding a bench: the request metrics are the controller's, the rest the e2e
/// harness's.
fn bench_package(bench: &str) -> &'static str {
    if bench == "metrics" {
        "nexus-controller"
    } else {
        "nexus-tests"
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}
