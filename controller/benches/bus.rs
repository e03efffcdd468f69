//! `cargo xtask bench events` (second part): request latency through real Envoy with the event
//! bus up and with RabbitMQ unreachable, same run.
//!
//! Two `nexus up examples/datapunk` (real Envoy, the real filters, in-memory services), one
//! publishing to the machine's RabbitMQ, one pointed at a port nothing listens on (its events
//! wait in the outbox and it keeps reconnecting). `wrk` measures, on each in turn (round 1 bus
//! up first, round 2 bus down first), two
//! paths: `/lake/datasets` (authenticated, served from the proxy's cache) and
//! `/cortex/v1/models` for a client over its limit (every request refused, the service's
//! refusals counted for the over-limit summaries). Reported: p50/p99 per path and the ratio
//! bus down / bus up.
//!
//! Options (after `--`): `--duration <s>` (default 5), `--connections <n>` (default 4).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nexus_tests::load::{wrk, LoadStats};
use nexus_toolenv::ports::free_port;

const AMQP_UP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A running `nexus up`, stopped (SIGTERM, so it stops its Envoy) on drop.
struct Up {
    child: Child,
    port: u16,
}

impl Up {
    fn start(amqp: &str, deployment: &str) -> Result<Up> {
        let port = free_port()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("up")
            .arg(root().join("examples/datapunk"))
            .args(["--memory", "--amqp-url", amqp, "--deployment", deployment])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--admin-port", "0"])
            .arg("--modules")
            .arg(root().join("target/filters"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nexus up")?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("Nexus is up") {
                    let _ = tx.send(());
                }
            }
        });
        let up = Up { child, port };
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            bail!("nexus up ({amqp}) did not come up within 120 s");
        }
        Ok(up)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn measure(up: &Up, path: &str, auth: &str, seconds: u64, connections: u32) -> Result<LoadStats> {
    // One second of warm-up: connections opened, the cache filled, the client over its limit.
    wrk(up.port, path, &[auth], 1, connections, None)?;
    wrk(up.port, path, &[auth], seconds, connections, None)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = arg(&args, "--duration", 5);
    let connections = u32::try_from(arg(&args, "--connections", 4))?;
    let token = std::fs::read_to_string(root().join("examples/datapunk/tokens/alice.jwt"))?;
    let auth = format!("authorization: Bearer {}", token.trim());
    let nothing = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()?);
    let pid = std::process::id();
    let bus_up = Up::start(AMQP_UP, &format!("bench-bus-up-{pid}"))?;
    let bus_down = Up::start(&nothing, &format!("bench-bus-down-{pid}"))?;
    println!(
        "== requests via Envoy (nexus up examples/datapunk), RabbitMQ up vs unreachable, wrk -c {connections} for {seconds} s =="
    );
    for (path, what) in [
        ("/lake/datasets", "allowed, cached"),
        ("/cortex/v1/models", "over its limit, 429"),
    ] {
        // Twice, in both orders: a shared machine's speed drifts between measurements.
        for round in 1..=2 {
            let (up, down) = if round == 1 {
                let up = measure(&bus_up, path, &auth, seconds, connections)?;
                (up, measure(&bus_down, path, &auth, seconds, connections)?)
            } else {
                let down = measure(&bus_down, path, &auth, seconds, connections)?;
                (measure(&bus_up, path, &auth, seconds, connections)?, down)
            };
            println!(
                "  {path} ({what}) round {round}: bus up p50 {:.3} ms p99 {:.3} ms ({:.0} req/s) | bus down p50 {:.3} ms p99 {:.3} ms ({:.0} req/s) | down/up p50 {:.2}x p99 {:.2}x",
                up.p50_ms,
                up.p99_ms,
                up.rps,
                down.p50_ms,
                down.p99_ms,
                down.rps,
                down.p50_ms / up.p50_ms,
                down.p99_ms / up.p99_ms
            );
        }
    }
    Ok(())
}
