//! A real Envoy standing in for a gateway pod: node id = the pod's name, HTTP filters taken
//! from an EnvoyFilter the controller wrote (its wasm patches, in order, before the router),
//! its HTTP connection manager merged with the EnvoyFilter's `NETWORK_FILTER` patches (the
//! access log), and the mesh clusters those patches name pointed at loopback: the controller's
//! HTTP port (reports), its module server (Envoy fetches each module by sha256, as in a mesh),
//! its access log service when given, anything else to a closed port. No istiod runs here; this is the part of its job the test needs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::free_port;

/// Where the controller listens, for the clusters a rendered EnvoyFilter names.
pub struct ControllerPorts {
    pub http: u16,
    pub modules: u16,
    /// `--access-log-port`, when the controller serves it.
    pub access_log: Option<u16>,
    /// `--audit-port`, when the controller serves it (HTTP/1, like 8080).
    pub audit: Option<u16>,
}

/// A running Envoy; killed on drop.
pub struct PodProxy {
    child: Child,
    pub node: String,
    pub log: std::path::PathBuf,
    /// The listener (every route answers 200 directly, after the filters).
    pub port: u16,
}

impl PodProxy {
    /// Starts Envoy as pod `node`, its outbound connections from `source_ip` (the pod's IP).
    pub fn start(
        dir: &Path,
        node: &str,
        source_ip: &str,
        envoy_filter: &Value,
        ports: &ControllerPorts,
    ) -> Self {
        let port = free_port();
        let config = bootstrap(envoy_filter, node, source_ip, ports, port);
        let file = dir.join(format!("{node}-{}.json", free_port()));
        std::fs::write(&file, config.to_string()).unwrap();
        let log = file.with_extension("log");
        let envoy = nexus_toolenv::envoy::locate().unwrap();
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&file)
            .args(["--base-id", &free_port().to_string()])
            .args(["--log-level", "warn", "--component-log-level", "wasm:debug"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            node: node.to_string(),
            log,
            port,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bootstrap(
    ef: &Value,
    node: &str,
    source_ip: &str,
    ports: &ControllerPorts,
    listener_port: u16,
) -> Value {
    let mut filters: Vec<Value> = ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == "HTTP_FILTER")
        .map(|p| p["patch"]["value"].clone())
        .collect();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
    }));
    // Istio's MERGE of a repeated field appends: every patch's access logs, in order.
    let access_log: Vec<Value> = ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == "NETWORK_FILTER" && p["patch"]["operation"] == "MERGE")
        .flat_map(|p| {
            p["patch"]["value"]["typed_config"]["access_log"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let clusters: Vec<Value> = mesh_clusters(ef)
        .into_iter()
        .map(|name| cluster(&name, source_ip, ports))
        .collect();
    json!({
        "node": { "id": node, "cluster": "istio-ingressgateway",
                  "metadata": { "NAMESPACE": "istio-system" } },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": free_port() } } },
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": listener_port } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" },
                                         "direct_response": { "status": 200 } }] }] },
                        "http_filters": filters,
                        "access_log": access_log,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

/// Every `outbound|port||host` cluster name in the EnvoyFilter (the module fetch, the report
/// sink inside the VM configuration, the services the filters call).
fn mesh_clusters(ef: &Value) -> BTreeSet<String> {
    let text = ef.to_string();
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("outbound|") {
        let rest = &text[i..];
        let end = rest.find(['"', '\\']).unwrap_or(rest.len());
        out.insert(rest[..end].to_string());
    }
    out
}

fn cluster(name: &str, source_ip: &str, ports: &ControllerPorts) -> Value {
    let is = |port: Option<u16>, p: &str| port.is_some_and(|a| a.to_string() == p);
    let service_port = name.split('|').nth(1).unwrap_or_default();
    let (port, http1) = match service_port {
        "8080" => (ports.http, true),
        "8082" => (ports.modules, true),
        p if is(ports.audit, p) => (ports.audit.unwrap_or(1), true),
        p if is(ports.access_log, p) => (ports.access_log.unwrap_or(1), false),
        _ => (1, false),
    };
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "upstream_bind_config": { "source_address": { "address": source_ip, "port_value": 0 } },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] },
    });
    if !http1 {
        // gRPC services (rate limit, cache): HTTP/2, unreachable here.
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            }
        });
    }
    c
}
