//! What `nexus up DIR` reads: every `*.yaml`/`*.yml` file of DIR, holding `NexusRoute`s,
//! `Secret`s (API keys) and at most one `NexusGateway` — the few settings a cluster would
//! otherwise provide (listener address, where each upstream Service lives).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::tls::TlsSpec;
use crate::input::{self, Inputs};

/// `kind: NexusGateway`: the standalone gateway's own settings. Every field has a default, so
/// a directory of NexusRoutes alone runs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Envoy's HTTP listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Envoy's admin API, on 127.0.0.1 (0: a free port).
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// Nexus's own HTTP server: `/health/*`, `/metrics`, `/modules/<sha256>.wasm`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// Envoy worker threads.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Where each upstream Service (by name, as in a rule's `upstream.service` or a seed
    /// category: `lake`, `stream`, `cortex`, `forge`) is reached: `host:port`, or several
    /// comma-separated (`127.0.0.1:9001,127.0.0.1:9002`: endpoints of one cluster, balanced
    /// round robin, each ejected on its own by the circuit breaker). A Service not listed is
    /// resolved as `<service>:<port>` by DNS, unless `demoUpstreams` is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, String>,
    /// Start a small echo server for every Service not listed in `services`: it answers with
    /// the request it received, as JSON, so what Nexus added is visible.
    #[serde(default)]
    pub demo_upstreams: bool,
    /// Printed once Envoy serves; `{url}` is replaced by the listener's URL and `{dir}` by the
    /// directory `nexus up` reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<String>,
    /// Serve HTTPS on `listen`: certificate and key files (re-read when replaced), minimum
    /// version, optional client CA (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The audit log: what proxies do while its service does not take records.
    #[serde(default)]
    pub audit: AuditSpec,
}

/// The gateway's audit settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSpec {
    /// `buffer` (keep records, send them again; the default), `drop` (count them lost) or
    /// `refuse` (nexus-guard answers 503 to the requests it guards until records are taken
    /// again; auth and ratelimit buffer).
    #[serde(default)]
    pub on_unavailable: nexus_config::audit::OnUnavailable,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_port() -> u16 {
    9901
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}
fn default_concurrency() -> u32 {
    2
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_port: default_admin_port(),
            http: default_http(),
            concurrency: default_concurrency(),
            services: BTreeMap::new(),
            demo_upstreams: false,
            welcome: None,
            tls: None,
            audit: AuditSpec::default(),
        }
    }
}

#[derive(Deserialize)]
struct GatewayDoc {
    #[serde(default)]
    spec: GatewaySpec,
}

/// One reading of the directory.
pub struct Snapshot {
    pub gateway: GatewaySpec,
    pub inputs: Inputs,
    /// `file: problem` for anything that cannot be used; a snapshot with problems is never
    /// applied (the running configuration stays).
    pub problems: Vec<String>,
}

/// The YAML files of `dir`, sorted (so the order routes are merged in is stable).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every YAML file of `dir`.
pub fn read_dir(dir: &Path) -> anyhow::Result<Snapshot> {
    let files = yaml_files(dir).map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?;
    let mut inputs = Inputs::default();
    let mut problems = Vec::new();
    let mut gateway: Option<(PathBuf, GatewaySpec)> = None;
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        input::read_str(f, &text, &mut inputs);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(value) = serde_yaml::Value::deserialize(doc) else {
                break; // a syntax error, reported by input::read_str
            };
            if value.get("kind").and_then(|k| k.as_str()) != Some("NexusGateway") {
                continue;
            }
            match serde_path_to_error::deserialize::<_, GatewayDoc>(value) {
                Ok(doc) => {
                    if let Some((first, _)) = &gateway {
                        problems.push(format!(
                            "{}: a second NexusGateway (the first is in {})",
                            f.display(),
                            first.display()
                        ));
                    } else {
                        gateway = Some((f.clone(), doc.spec));
                    }
                }
                Err(e) => problems.push(format!(
                    "{}: NexusGateway: $.{}: {}",
                    f.display(),
                    e.path(),
                    e.inner()
                )),
            }
        }
    }
    for (f, e) in &inputs.errors {
        problems.push(format!("{}: {e}", f.display()));
    }
    if inputs.routes.is_empty() && problems.is_empty() {
        problems.push(format!("{}: no NexusRoute found", dir.display()));
    }
    let mut gateway = gateway.map(|(_, g)| g).unwrap_or_default();
    if let Some(tls) = &mut gateway.tls {
        tls.resolve(dir, &mut problems);
    }
    for (name, addr) in &gateway.services {
        if split_hosts(addr).is_none() {
            problems.push(format!(
                "NexusGateway: $.spec.services.{name}: {addr:?} is not host:port[,host:port...]"
            ));
        }
    }
    Ok(Snapshot {
        gateway,
        inputs,
        problems,
    })
}

/// `host:port[,host:port...]` split, or none if any of them is not `host:port`.
pub fn split_hosts(addrs: &str) -> Option<Vec<(String, u16)>> {
    addrs
        .split(',')
        .map(|a| split_host_port(a.trim()))
        .collect()
}

/// `host:port` (IPv6 in brackets) split, or none.
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const ROUTE: &str = "apiVersion: nexus.datapunk.io/v1alpha1
kind: NexusRoute
metadata: {name: api}
spec:
  target: {kind: Gateway, selector: {}}
  rules:
  - {name: lake, match: {path: {prefix: /lake/}}, category: data_operations}
";

    #[test]
    fn gateway_defaults_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "route.yaml", ROUTE);
        let s = read_dir(dir.path()).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.gateway, GatewaySpec::default());
        assert_eq!(s.inputs.routes.len(), 1);
    }

    #[test]
    fn bad_gateway_and_bad_route_are_reported_with_file_and_path() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gateway.yaml",
            "kind: NexusGateway\nspec:\n  listen: 127.0.0.1:8080\n  concurency: 2\n",
        );
        write(
            dir.path(),
            "route.yaml",
            &ROUTE.replace("category: data_operations", "category: lake, timeout: [1]"),
        );
        write(
            dir.path(),
            "broken.yaml",
            "kind: NexusRoute\nspec: {rules: [\n",
        );
        let s = read_dir(dir.path()).unwrap();
        let all = s.problems.join("\n");
        assert!(
            all.contains(
                "gateway.yaml: NexusGateway: $.spec.concurency: unknown field `concurency`"
            ),
            "{all}"
        );
        assert!(all.contains("route.yaml: $.spec.rules[0].timeout"), "{all}");
        assert!(all.contains("broken.yaml: did not find expected"), "{all}");
    }

    #[test]
    fn service_addresses_must_be_host_port() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "route.yaml", ROUTE);
        write(
            dir.path(),
            "gateway.yaml",
            "kind: NexusGateway\nspec:\n  services: {lake: 'lake.internal', stream: '[::1]:9000'}\n",
        );
        let s = read_dir(dir.path()).unwrap();
        assert_eq!(
            s.problems,
            vec![
                "NexusGateway: $.spec.services.lake: \"lake.internal\" is not host:port[,host:port...]"
            ]
        );
        assert_eq!(
            split_hosts("127.0.0.1:1, 127.0.0.1:2"),
            Some(vec![("127.0.0.1".into(), 1), ("127.0.0.1".into(), 2)])
        );
        assert_eq!(split_hosts("127.0.0.1:1,nope"), None);
        assert_eq!(split_host_port("[::1]:9000"), Some(("::1".into(), 9000)));
    }

    #[test]
    fn the_audit_outage_mode_is_read_and_a_wrong_one_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "route.yaml", ROUTE);
        let gateway = |mode: &str| {
            let text = format!("kind: NexusGateway\nspec:\n  audit: {{onUnavailable: {mode}}}\n");
            write(dir.path(), "gateway.yaml", &text);
            read_dir(dir.path()).unwrap()
        };
        let s = gateway("refuse");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(
            s.gateway.audit.on_unavailable,
            nexus_config::audit::OnUnavailable::Refuse
        );
        let s = gateway("halt");
        let all = s.problems.join("\n");
        assert!(
            all.contains("$.spec.audit.onUnavailable: unknown variant `halt`"),
            "{all}"
        );
    }
}
