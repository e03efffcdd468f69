//! Load generation for benchmarks: `wrk` (Debian's package) on loopback, parsed.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
}

/// CPUs for a benchmark on a machine with at least two: (the proxy's, the load generator's).
///
/// Pinned, the proxy and `wrk` never share a core or migrate between the two, so what varies
/// between rounds is the machine, not the scheduler's placement.
pub fn bench_cpus() -> Option<(usize, usize)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n >= 2).then_some((0, 1))
}

/// One `wrk` run against `http://127.0.0.1:{port}{path}`, keep-alive, one thread, pinned to
/// `cpu` if given.
pub fn wrk(
    port: u16,
    path: &str,
    headers: &[&str],
    seconds: u64,
    connections: u32,
    cpu: Option<usize>,
) -> Result<LoadStats> {
    run(port, path, headers, None, seconds, connections, cpu)
}

/// Like [`wrk`], with requests made by a Lua `script` (e.g. a different token per request).
pub fn wrk_script(
    port: u16,
    path: &str,
    script: &Path,
    seconds: u64,
    connections: u32,
    cpu: Option<usize>,
) -> Result<LoadStats> {
    run(port, path, &[], Some(script), seconds, connections, cpu)
}

fn run(
    port: u16,
    path: &str,
    headers: &[&str],
    script: Option<&Path>,
    seconds: u64,
    connections: u32,
    cpu: Option<usize>,
) -> Result<LoadStats> {
    ensure_wrk()?;
    let mut cmd = pinned("wrk", cpu);
    cmd.args([
        "-t1",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
    ])
    .args(["--latency", "--timeout", "5s"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
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

pub fn parse_wrk(text: &str) -> LoadStats {
    let mut s = LoadStats::default();
    for line in text.lines() {
        let l = line.trim();
        let mut parts = l.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("50%"), Some(v)) => s.p50_ms = duration_ms(v),
            (Some("99%"), Some(v)) => s.p99_ms = duration_ms(v),
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

/// The `--name N` options of a benchmark binary, each defaulting as in `defaults`; `--bench`
/// (which `cargo bench` passes) is ignored and anything else is an error.
pub fn numeric_options(
    defaults: &[(&str, u64)],
) -> Result<std::collections::BTreeMap<String, u64>> {
    Ok(options(defaults, &[])?.0)
}

/// Like [`numeric_options`], with `--name VALUE` options whose values are text (defaulting as
/// in `text`), returned in a second map.
pub fn options(
    numeric: &[(&str, u64)],
    text: &[(&str, &str)],
) -> Result<(
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, String>,
)> {
    options_from(std::env::args().skip(1), numeric, text)
}

/// [`options`] from the given arguments (without the program name).
fn options_from(
    args: impl Iterator<Item = String>,
    numeric: &[(&str, u64)],
    text: &[(&str, &str)],
) -> Result<(
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, String>,
)> {
    let mut numbers: std::collections::BTreeMap<String, u64> = numeric
        .iter()
        .map(|(k, v)| ((*k).to_string(), *v))
        .collect();
    let mut texts: std::collections::BTreeMap<String, String> = text
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let args: Vec<String> = args.collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--bench" {
            continue;
        }
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        if let Some(slot) = numbers.get_mut(a.as_str()) {
            *slot = value()?
                .parse()
                .with_context(|| format!("{a} needs a number"))?;
        } else if let Some(slot) = texts.get_mut(a.as_str()) {
            *slot = value()?.clone();
        } else {
            bail!("unknown option {a}");
        }
    }
    Ok((numbers, texts))
}

/// `wrk` prints `812.00us`, `1.23ms`, `2.01s`.
fn duration_ms(v: &str) -> f64 {
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

/// CPU time the hypervisor gave to other guests ("steal"), as a share of all CPU time since
/// the previous reading: a virtual machine's speed drifts with it, and a benchmark whose
/// rounds saw much of it compares filters measured at different speeds.
#[derive(Debug, Clone, Copy)]
pub struct StealMeter {
    steal: u64,
    total: u64,
}

impl StealMeter {
    /// Starts measuring; `None` where `/proc/stat` has no steal column.
    pub fn start() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        Some(Self {
            // user nice system idle iowait irq softirq steal ...
            steal: *ticks.get(7)?,
            total: ticks.iter().take(8).sum(),
        })
    }

    /// The share of CPU time stolen since [`StealMeter::start`], 0.0 to 1.0.
    pub fn stolen(&self) -> Option<f64> {
        let now = Self::start()?;
        let total = now.total.saturating_sub(self.total);
        (total > 0).then(|| now.steal.saturating_sub(self.steal) as f64 / total as f64)
    }
}

/// The launcher that runs a program, and every thread it starts, on `cpu`.
pub fn taskset(cpu: usize) -> Vec<String> {
    vec!["taskset".into(), "-c".into(), cpu.to_string()]
}

/// `program` run under `launcher` (a program and its arguments), or directly if it is empty.
pub fn launched(launcher: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match launcher.split_first() {
        Some((first, args)) => {
            let mut cmd = Command::new(first);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn pinned(program: &str, cpu: Option<usize>) -> Command {
    launched(&cpu.map(taskset).unwrap_or_default(), program)
}

/// Installs Debian's `wrk` when missing and running as root; otherwise says how.
pub fn ensure_wrk() -> Result<()> {
    ensure_tool("wrk", "wrk")
}

/// Installs Debian's `valgrind` when missing and running as root; otherwise says how.
pub fn ensure_valgrind() -> Result<()> {
    ensure_tool("valgrind", "valgrind")
}

/// `program` is on PATH, or Debian's `package` is installed now (as root; otherwise the error
/// names the command).
fn ensure_tool(program: &str, package: &str) -> Result<()> {
    if nexus_toolenv::apt::on_path(program) {
        return Ok(());
    }
    nexus_toolenv::apt::ensure(&[package])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parsed(args: &[&str]) -> Result<(BTreeMap<String, u64>, BTreeMap<String, String>)> {
        options_from(
            args.iter().map(|a| a.to_string()),
            &[("--runs", 2), ("--instructions", 0)],
            &[("--algs", "RS256,ES256"), ("--rows", "all")],
        )
    }

    #[test]
    fn options_take_numbers_and_text_with_defaults() {
        let (n, t) = parsed(&["--bench", "--instructions", "1000", "--algs", "EdDSA"]).unwrap();
        assert_eq!((n["--instructions"], n["--runs"]), (1000, 2));
        assert_eq!(
            (t["--algs"].as_str(), t["--rows"].as_str()),
            ("EdDSA", "all")
        );
        assert!(parsed(&["--runs", "two"]).is_err(), "a number is required");
        assert!(parsed(&["--rows"]).is_err(), "a value is required");
        assert!(
            parsed(&["--fresh", "3"]).is_err(),
            "unknown options are refused"
        );
    }

    #[test]
    fn parses_wrk_latency_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.01ms\n     99%    2.50ms\n  41234 requests in 5.00s, 5.12MB read\n  Non-2xx or 3xx responses: 12\nRequests/sec:   8246.80\n";
        let s = parse_wrk(text);
        assert_eq!(s.requests, 41234);
        assert_eq!(s.non_2xx, 12);
        assert!((s.p50_ms - 0.812).abs() < 1e-9 && (s.p99_ms - 2.5).abs() < 1e-9);
        assert!((s.rps - 8246.8).abs() < 1e-9);
    }
}
