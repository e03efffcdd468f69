//! Pure rendering of the standalone gateway's Envoy configuration: a bootstrap that reads
//! listeners and clusters from two files (file-based LDS/CDS, so a change is applied by moving
//! new files into place, without a restart), and the contents of those files.
//!
//! The shapes mirror what the controller renders for Istio: where Istio would turn a
//! VirtualService into routes and a DestinationRule into cluster settings, this module writes
//! the Envoy routes and clusters directly, with the same names and the same filter
//! configurations ([`crate::render::filter_configurations`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nexus_config::auth::Jwks;
use nexus_config::report::{ReportSink, VmConfiguration};
use serde_json::{json, Value};

use crate::crd::Protocol;
use crate::model::{CompiledRoute, GroupKey, Outlier};
use crate::render::{self, transcoding, GroupConfigs, ServiceClusters, FILTERS};
use crate::standalone::gateway::GatewaySpec;
use nexus_config::contract;

/// Envoy clusters of the services the nexus process runs.
pub const RATELIMIT_CLUSTER: &str = "nexus-ratelimit";
pub const CACHE_CLUSTER: &str = "nexus-cache";
pub const SESSIONS_CLUSTER: &str = "nexus-sessions";
pub const AUDIT_CLUSTER: &str = "nexus-audit";
/// `nexus up`'s HTTP server, where every filter reports what it runs.
pub const REPORTS_CLUSTER: &str = "nexus-reports";
const LISTENER: &str = "nexus";

/// Envoy's own log (`--log-format`) in the JSON-lines vocabulary of every Nexus log
/// (`nexus_config::contract`, `nexus_telemetry`): `%+` is the message JSON-escaped without the
/// tags of Envoy's tagged lines, `%*` those tags as fields (`,"ConnectionId":"3"`); `trace_id`
/// is null, as in a Nexus line outside a request. The filters' lines are Envoy's, `target`
/// `wasm`; `nexus up` lifts their request fields ([`super::envoy_log`]).
pub const LOG_FORMAT: &str = r#"{"timestamp":"%Y-%m-%dT%T.%f%z","level":"%l","service":"envoy","trace_id":null,"target":"%n","message":"%+"%*}"#;

/// Envoy's logging flags: [`LOG_FORMAT`], and the access log flushed every second, because it
/// feeds the request metrics (Envoy's default, 10 s, would make a dashboard trail by that).
pub fn log_args() -> [&'static str; 4] {
    [
        "--log-format",
        LOG_FORMAT,
        "--file-flush-interval-msec",
        "1000",
    ]
}

/// Where the things Envoy connects to are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Upstream token (Service name) → the `host:port`s it is reached at.
    pub upstreams: BTreeMap<String, Vec<(String, u16)>>,
    pub ratelimit: SocketAddr,
    /// The cache-coherency service (nexus.cache.v1).
    pub cache: SocketAddr,
    /// `nexus up`'s HTTP server: the sessions service (`/sessions/v1/*`) and proxy reports.
    pub sessions: SocketAddr,
    /// The audit service (HTTP/1.1, `POST /audit/v1/records`).
    pub audit: SocketAddr,
    /// Envoy's access log (JSON lines), as an Envoy user would expect one.
    pub access_log: PathBuf,
    /// The SDS file the listener's TLS secrets are read from (with a `tls` block).
    pub sds: PathBuf,
}

/// The standalone routes' group: one gateway, every route.
pub fn group() -> GroupKey {
    GroupKey {
        namespace: "standalone".to_string(),
        kind: crate::crd::TargetKind::Gateway,
        selector: BTreeMap::new(),
    }
}

/// The contents of the LDS and CDS files, and the merged filter configurations they hold.
pub struct Resources {
    pub listeners: Value,
    pub clusters: Value,
    /// The SDS file's contents, with a `tls` block.
    pub secrets: Option<Value>,
    pub configs: GroupConfigs,
    /// Each Nexus filter's name and the sha256 of its configuration: what its reports must
    /// say (`crate::enforcement::local`).
    pub filters: crate::enforcement::verdict::Expected,
}

/// Envoy's bootstrap: admin on 127.0.0.1, listeners and clusters from `lds`/`cds`, which Envoy
/// re-reads whenever a file is moved into their directory.
pub fn bootstrap(admin_port: u16, lds: &Path, cds: &Path) -> Value {
    let watched = |p: &Path| {
        json!({ "path_config_source": {
            "path": p.display().to_string(),
            "watched_directory": { "path": p.parent().unwrap_or(p).display().to_string() },
        }, "resource_api_version": "V3" })
    };
    json!({
        "node": { "id": crate::enforcement::local::NODE, "cluster": "nexus" },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
        "dynamic_resources": { "lds_config": watched(lds), "cds_config": watched(cds) },
        // Internal listeners: the transcoding hops of `grpcTranscoding` rules.
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener" },
        }],
        "stats_config": { "stats_tags": filter_stat_tags() },
    })
}

/// The filters count refusals as `<filter>.<what>.<value>` (`nexus_auth.denied.expired`);
/// these tag extractors make the last part a label, so Envoy's `/stats/prometheus` shows
/// `nexus_auth_denied{reason="expired"}`. Envoy exports wasm counters (namespace
/// `wasmcustom`) without its `envoy_` prefix.
pub fn filter_stat_tags() -> Value {
    let tag = |name: &str, stat: &str| {
        json!({
            "tag_name": name,
            "regex": format!("^wasmcustom\\.{}(\\.([^.]+))$", stat.replace('.', "\\.")),
        })
    };
    json!([
        tag("reason", "nexus_auth.denied"),
        tag("method", "nexus_auth.allowed"),
        tag("mode", "nexus_ratelimit.degraded"),
        tag("rule", "nexus_guard.refused"),
    ])
}

/// An xDS file: a `DiscoveryResponse` of `type_url` resources.
fn discovery_response(version: &str, type_url: &str, resources: Vec<Value>) -> Value {
    let resources: Vec<Value> = resources
        .into_iter()
        .map(|mut r| {
            r["@type"] = json!(type_url);
            r
        })
        .collect();
    json!({ "version_info": version, "resources": resources })
}

/// `1.5s` style durations for Envoy's JSON.
fn duration(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// Renders listeners and clusters for `routes` (accepted, in merge order).
pub fn render(
    routes: &[&CompiledRoute],
    gateway: &GatewaySpec,
    endpoints: &Endpoints,
    modules: &BTreeMap<String, PathBuf>,
    version: &str,
) -> anyhow::Result<Resources> {
    let configs = render::group_configs(&group(), routes);
    let services = ServiceClusters {
        ratelimit: RATELIMIT_CLUSTER.to_string(),
        cache: CACHE_CLUSTER.to_string(),
        cache_writer: Some("nexus-up".to_string()),
        sessions: SESSIONS_CLUSTER.to_string(),
        audit: Some(AUDIT_CLUSTER.to_string()),
        audit_on_unavailable: gateway.audit.on_unavailable,
    };
    let mut http_filters = Vec::new();
    let mut filters = crate::enforcement::verdict::Expected::new();
    for (filter, configuration) in render::filter_configurations(&configs, &services)? {
        let module = modules
            .get(filter)
            .ok_or_else(|| anyhow::anyhow!("no module for the {filter} filter"))?;
        http_filters.push(wasm_filter(filter, module, &configuration));
        let sha = crate::enforcement::sha256_hex(configuration.as_bytes());
        filters.insert(format!("nexus.{filter}"), sha);
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
    }));

    let mut listener = json!({
        "name": LISTENER,
        "address": { "socket_address": {
            "address": gateway.listen.ip().to_string(),
            "port_value": gateway.listen.port(),
        }},
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": LISTENER,
                "codec_type": "AUTO",
                "use_remote_address": true,
                "access_log": [access_log(&endpoints.access_log)],
                "route_config": { "name": LISTENER, "virtual_hosts": [{
                    "name": "nexus", "domains": ["*"], "routes": virtual_host_routes(routes, &http_filters),
                }]},
                "http_filters": http_filters,
            },
        }]}],
    });
    // The guard buffers bodies up to `max_scan_bytes`; Envoy refuses what a filter buffers
    // beyond this limit.
    if let Some(bytes) = configs.buffer_limit_bytes() {
        listener["per_connection_buffer_limit_bytes"] = json!(bytes);
    }
    if let Some(tls) = &gateway.tls {
        listener["filter_chains"][0]["transport_socket"] = tls.transport_socket(&endpoints.sds);
    }

    let clusters = clusters_of(routes, &configs, endpoints);
    let mut listeners = vec![listener];
    for r in routes {
        listeners.extend(
            r.rules
                .iter()
                .filter_map(|rule| transcoding::hop_listener(rule, &rule.upstream.token)),
        );
    }
    Ok(Resources {
        listeners: discovery_response(
            version,
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            listeners,
        ),
        clusters: discovery_response(
            version,
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            clusters.into_values().collect(),
        ),
        secrets: gateway.tls.as_ref().map(|t| t.secrets(version)),
        configs,
        filters,
    })
}

/// One cluster per upstream (with its outlier detection, pool limits and protocol), per remote
/// JWKS host, and per Nexus service the filters call.
fn clusters_of(
    routes: &[&CompiledRoute],
    configs: &render::GroupConfigs,
    endpoints: &Endpoints,
) -> BTreeMap<String, Value> {
    let mut clusters: BTreeMap<String, Value> = BTreeMap::new();
    for r in routes {
        for u in r.upstreams() {
            if clusters.contains_key(&u.token) {
                continue;
            }
            let hosts = endpoints
                .upstreams
                .get(&u.token)
                .cloned()
                .unwrap_or_else(|| vec![(u.token.clone(), u.port)]);
            let mut c = cluster_of(&u.token, &hosts, r.pool.connect_timeout.as_deref());
            c["outlier_detection"] = outlier(&r.outlier);
            if let Some(t) = circuit_breakers(&r.pool, r.retry_budget.as_ref()) {
                c["circuit_breakers"] = t;
            }
            let http2 = matches!(u.protocol, Protocol::GRPC | Protocol::HTTP2);
            c["typed_extension_protocol_options"] =
                protocol_options(http2, r.pool.max_requests_per_connection);
            clusters.insert(u.token.clone(), c);
        }
        for rule in &r.rules {
            let Some(t) = &rule.transcoding else { continue };
            let hop = transcoding::hop_cluster(&rule.name, outlier(&r.outlier));
            clusters.insert(transcoding::hop_name(&rule.name), hop);
            if let Some(rest) = &t.failover {
                let agg = transcoding::aggregate_cluster(&rule.name, &rest.token);
                clusters.insert(transcoding::failover_name(&rule.name), agg);
            }
        }
    }
    for provider in configs.auth.providers.values() {
        if let Jwks::Remote(remote) = &provider.jwks {
            if let Some(c) = jwks_cluster(&remote.cluster, &remote.uri) {
                clusters.entry(remote.cluster.clone()).or_insert(c);
            }
        }
    }
    for (name, addr) in [
        (RATELIMIT_CLUSTER, endpoints.ratelimit),
        (CACHE_CLUSTER, endpoints.cache),
    ] {
        let mut c = cluster(name, &addr.ip().to_string(), addr.port(), None);
        c["typed_extension_protocol_options"] = protocol_options(true, None);
        clusters.insert(name.to_string(), c);
    }
    if configs.auth.sessions.is_some() || configs.auth.introspection.is_some() {
        let addr = endpoints.sessions;
        let c = cluster(SESSIONS_CLUSTER, &addr.ip().to_string(), addr.port(), None);
        clusters.insert(SESSIONS_CLUSTER.to_string(), c);
    }
    let http = endpoints.sessions;
    let reports = cluster(REPORTS_CLUSTER, &http.ip().to_string(), http.port(), None);
    clusters.insert(REPORTS_CLUSTER.to_string(), reports);
    clusters.insert(
        AUDIT_CLUSTER.to_string(),
        cluster(
            AUDIT_CLUSTER,
            &endpoints.audit.ip().to_string(),
            endpoints.audit.port(),
            None,
        ),
    );
    clusters
}

/// With a sign-in provider, browsers' `/_nexus/*` (sign-in, callback, logout) goes to the
/// sessions service first, past the Nexus filters; then the routes' own.
fn virtual_host_routes(routes: &[&CompiledRoute], http_filters: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    if routes.iter().any(|r| r.sign_in.is_some()) {
        let names = http_filters.iter().filter_map(|f| f["name"].as_str());
        out.push(json!({
            "name": "nexus-sign-in",
            "match": { "prefix": nexus_sessions_service::http::BROWSER_PREFIX },
            "route": { "cluster": SESSIONS_CLUSTER, "timeout": "30s" },
            "typed_per_filter_config": crate::render::filters_disabled(names),
        }));
    }
    out.extend(routes_of(routes));
    out
}

/// What the VirtualService would say, as Envoy routes: each rule by `x-nexus-rule` (with its
/// timeout and retries), then each upstream by `x-nexus-upstream`, then the default category,
/// then a JSON 503 for anything the router filter did not route.
fn routes_of(routes: &[&CompiledRoute]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in routes {
        for rule in &r.rules {
            let mut retry = json!({
                // As in the VirtualService: what any method may be retried on.
                "retry_on": rule.retry.any_method_retry_on(),
                "num_retries": rule.retry.max_retries,
                // A retry goes to another host when there is one, as Istio renders every
                // VirtualService retry: the host that just failed is the likeliest to fail again.
                "retry_host_predicate": [{
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" },
                }],
                "host_selection_retry_max_attempts": 5,
            });
            if let Some(t) = rule.per_try_timeout_ms {
                retry["per_try_timeout"] = json!(duration(t));
            }
            let mut route = json!({
                "name": rule.name,
                "match": { "prefix": "/", "headers": [
                    header_exact(contract::RULE, &rule.name),
                    header_exact(contract::UPSTREAM, &rule.upstream.token),
                ]},
            });
            transcoding::failover_route(rule, &mut route, &mut retry);
            let cluster = transcoding::route_cluster(rule).unwrap_or(rule.upstream.token.clone());
            route["route"] = json!({
                "cluster": cluster,
                "timeout": duration(rule.timeout_ms),
                "retry_policy": retry,
            });
            out.push(route);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in routes {
        for u in r.upstreams() {
            if seen.insert(u.token.clone()) {
                out.push(json!({
                    "name": format!("upstream.{}", u.token),
                    "match": { "prefix": "/", "headers": [header_exact(contract::UPSTREAM, &u.token)] },
                    "route": { "cluster": u.token },
                }));
            }
        }
    }
    if let Some((cat, u, t)) = routes.iter().find_map(|r| r.default_upstream.as_ref()) {
        out.push(json!({
            "name": format!("default.{cat}"),
            "match": { "prefix": "/" },
            "route": { "cluster": u.token, "timeout": duration(*t) },
        }));
    }
    out.push(json!({
        "name": "no-upstream",
        "match": { "prefix": "/" },
        "direct_response": { "status": 503, "body": { "inline_string":
            "{\"error\":\"no_upstream\",\"detail\":\"no cluster for this request's x-nexus-upstream\"}" } },
    }));
    out
}

/// One JSON line per request ([`crate::access_log::json_format`]): what happened, which rule
/// and upstream, who, what the cache did, and the correlation id that ties it to every log.
fn access_log(path: &Path) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": { "json_format": crate::access_log::json_format() },
        },
    })
}

fn header_exact(name: &str, value: &str) -> Value {
    json!({ "name": name, "string_match": { "exact": value } })
}

fn wasm_filter(filter: &str, module: &Path, configuration: &str) -> Value {
    let name = format!("nexus.{filter}");
    let mut value = json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "failure_policy": "FAIL_CLOSED",
                "vm_config": {
                    "vm_id": nexus_config::vm_id(&name, configuration),
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": module.display().to_string() } },
                    // Reports of what the filter runs go to `nexus up`'s HTTP server.
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": serde_json::to_string(&VmConfiguration {
                            report: Some(ReportSink::to_cluster(REPORTS_CLUSTER)),
                        }).unwrap_or_default(),
                    },
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        },
    });
    if contract::STOPS_AT_HEADERS.contains(&filter) {
        value["typed_config"]["config"]["allow_on_headers_stop_iteration"] = json!(true);
    }
    value
}

/// A cluster of one endpoint: STATIC for an IP, STRICT_DNS for a name.
fn cluster(name: &str, host: &str, port: u16, connect_timeout: Option<&str>) -> Value {
    cluster_of(name, &[(host.to_string(), port)], connect_timeout)
}

/// A cluster of `hosts`: STATIC when they are all IPs, STRICT_DNS otherwise.
fn cluster_of(name: &str, hosts: &[(String, u16)], connect_timeout: Option<&str>) -> Value {
    let all_ips = hosts
        .iter()
        .all(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
    let timeout = connect_timeout
        .and_then(crate::model::parse_duration_ms)
        .unwrap_or(1_000);
    let lb_endpoints: Vec<Value> = hosts
        .iter()
        .map(|(host, port)| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": host, "port_value": port,
            }}}})
        })
        .collect();
    json!({
        "name": name,
        "type": if all_ips { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": duration(timeout),
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }]},
    })
}

fn protocol_options(http2: bool, max_requests_per_connection: Option<u32>) -> Value {
    let mut opts = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": if http2 {
            json!({ "http2_protocol_options": {} })
        } else {
            json!({ "http_protocol_options": {} })
        },
    });
    if let Some(n) = max_requests_per_connection {
        opts["common_http_protocol_options"] = json!({ "max_requests_per_connection": n });
    }
    json!({ "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts })
}

/// The seed's circuit breaker (5 consecutive 5xx → 60 s ejection) as outlier detection.
fn outlier(o: &Outlier) -> Value {
    render::envoy_outlier_detection(o)
}

fn circuit_breakers(
    p: &crate::crd::ConnectionPool,
    budget: Option<&crate::crd::RetryBudget>,
) -> Option<Value> {
    let mut t = serde_json::Map::new();
    if let Some(v) = p.max_retries {
        t.insert("max_retries".into(), json!(v));
    }
    if let Some(b) = budget {
        let mut rb = json!({ "budget_percent": { "value": b.percent } });
        if let Some(m) = b.min_retry_concurrency {
            rb["min_retry_concurrency"] = json!(m);
        }
        t.insert("retry_budget".into(), rb);
    }
    if let Some(v) = p.max_connections {
        t.insert("max_connections".into(), json!(v));
    }
    if let Some(v) = p.http1_max_pending_requests {
        t.insert("max_pending_requests".into(), json!(v));
    }
    if let Some(v) = p.http2_max_requests {
        t.insert("max_requests".into(), json!(v));
    }
    (!t.is_empty()).then(|| json!({ "thresholds": [Value::Object(t)] }))
}

/// A cluster for a remote JWKS URI (TLS with SNI for `https`).
fn jwks_cluster(name: &str, uri: &str) -> Option<Value> {
    let (scheme, rest) = uri.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()?),
        None => (authority.to_string(), default_port),
    };
    let mut c = cluster(name, &host, port, None);
    if scheme == "https" {
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
            },
        });
    }
    Some(c)
}

/// The filters' module files in `dir` (`nexus_<filter>.wasm`, as `cargo xtask build-filters`
/// writes them), or an error naming what is missing and the command that builds it.
pub fn modules_in(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let dir = std::path::absolute(dir)?;
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for f in FILTERS {
        let p = dir.join(format!("nexus_{f}.wasm"));
        if p.is_file() {
            out.insert(f.to_string(), p);
        } else {
            missing.push(p.display().to_string());
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "filter modules missing: {}; build them with `cargo xtask build-filters`",
            missing.join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standalone::gateway::read_dir;

    fn example() -> (Vec<CompiledRoute>, GatewaySpec) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/datapunk");
        let snap = read_dir(&dir).unwrap();
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let routes: Vec<&crate::crd::NexusRoute> =
            snap.inputs.routes.iter().map(|(_, r)| r).collect();
        let outcomes = crate::plan::outcomes(&routes, &snap.inputs.secrets, &Default::default());
        let compiled = outcomes
            .into_values()
            .map(|o| o.unwrap_or_else(|p| panic!("{p:?}")))
            .collect();
        (compiled, snap.gateway)
    }

    fn rendered() -> Resources {
        let (routes, gateway) = example();
        render_example(&routes, &gateway)
    }

    fn render_example(routes: &[CompiledRoute], gateway: &GatewaySpec) -> Resources {
        let refs: Vec<&CompiledRoute> = routes.iter().collect();
        let endpoints = Endpoints {
            sessions: "127.0.0.1:8090".parse().unwrap(),
            upstreams: [("lake".to_string(), vec![("127.0.0.1".to_string(), 9001)])].into(),
            ratelimit: "127.0.0.1:9100".parse().unwrap(),
            cache: "127.0.0.1:9101".parse().unwrap(),
            audit: "127.0.0.1:9102".parse().unwrap(),
            access_log: PathBuf::from("/s/access.log"),
            sds: PathBuf::from("/s/sds/sds.json"),
        };
        let modules = FILTERS
            .iter()
            .map(|f| (f.to_string(), PathBuf::from(format!("/m/nexus_{f}.wasm"))))
            .collect();
        render(&refs, gateway, &endpoints, &modules, "v1").unwrap()
    }

    #[test]
    fn seed_categories_get_their_timeouts_retries_and_circuit_breaker() {
        let r = rendered();
        let routes = &r.listeners["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        let by_cluster = |c: &str| {
            routes
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["route"]["cluster"] == c && r["route"]["timeout"].is_string())
                .unwrap_or_else(|| panic!("no route to {c}"))
                .clone()
        };
        for (cluster, timeout) in [
            ("lake", "30.000s"),
            ("stream", "5.000s"),
            ("cortex", "10.000s"),
            ("forge", "20.000s"),
        ] {
            let route = by_cluster(cluster);
            assert_eq!(route["route"]["timeout"], timeout, "{cluster}");
            assert_eq!(
                route["route"]["retry_policy"]["num_retries"], 3,
                "{cluster}"
            );
        }
        let clusters = r.clusters["resources"].as_array().unwrap();
        let lake = clusters.iter().find(|c| c["name"] == "lake").unwrap();
        assert_eq!(lake["type"], "STATIC");
        assert_eq!(
            lake["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            9001
        );
        assert_eq!(lake["outlier_detection"]["consecutive_5xx"], 5);
        assert_eq!(lake["outlier_detection"]["base_ejection_time"], "60.000s");
        let rls = clusters
            .iter()
            .find(|c| c["name"] == RATELIMIT_CLUSTER)
            .unwrap();
        assert!(rls["typed_extension_protocol_options"]
            .to_string()
            .contains("http2_protocol_options"));
    }

    #[test]
    fn retry_budget_pool_limits_and_per_try_timeout_reach_envoy() {
        let (mut routes, gateway) = example();
        routes[0].retry_budget = Some(crate::crd::RetryBudget {
            percent: 20.0,
            min_retry_concurrency: Some(2),
        });
        routes[0].pool.max_retries = Some(7);
        routes[0].pool.http1_max_pending_requests = Some(1);
        routes[0].rules[0].per_try_timeout_ms = Some(250);
        let r = render_example(&routes, &gateway);
        let lake = r.clusters["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "lake")
            .unwrap();
        let t = &lake["circuit_breakers"]["thresholds"][0];
        assert_eq!(t["retry_budget"]["budget_percent"]["value"], 20.0);
        assert_eq!(t["retry_budget"]["min_retry_concurrency"], 2);
        assert_eq!(t["max_retries"], 7);
        assert_eq!(t["max_pending_requests"], 1);
        let vhost_routes = &r.listeners["resources"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        let rule = vhost_routes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == routes[0].rules[0].name.as_str())
            .unwrap();
        assert_eq!(rule["route"]["retry_policy"]["per_try_timeout"], "0.250s");
    }

    #[test]
    fn a_transcoding_rule_gets_a_hop_listener_and_an_aggregate_cluster() {
        let (mut routes, gateway) = example();
        let rule = &mut routes[0].rules[0];
        rule.upstream.protocol = Protocol::GRPC;
        let mut rest = rule.upstream.clone();
        rest.token = "lake-rest".to_string();
        rule.transcoding = Some(crate::model::Transcoding {
            services: vec!["datapunk.lake.v1.Lake".to_string()],
            failover: Some(rest),
        });
        let name = rule.name.clone();
        let r = render_example(&routes, &gateway);
        let listeners = r.listeners["resources"].as_array().unwrap();
        let hop = listeners
            .iter()
            .find(|l| l["name"] == format!("transcode.{name}"))
            .unwrap();
        assert!(hop["internal_listener"].is_object());
        let clusters = r.clusters["resources"].as_array().unwrap();
        let agg = clusters
            .iter()
            .find(|c| c["name"] == format!("failover.{name}"))
            .unwrap();
        assert_eq!(
            agg["cluster_type"]["typed_config"]["clusters"],
            json!([format!("transcode.{name}"), "lake-rest"])
        );
        assert!(clusters.iter().any(|c| c["name"] == "lake-rest"));
        let route = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name.as_str())
            .unwrap();
        assert_eq!(route["route"]["cluster"], format!("failover.{name}"));
        let b = bootstrap(9901, Path::new("/s/lds.json"), Path::new("/s/cds.json"));
        assert_eq!(
            b["bootstrap_extensions"][0]["name"],
            "envoy.bootstrap.internal_listener"
        );
    }

    #[test]
    fn filters_run_in_order_with_local_modules_and_the_standalone_ratelimit_cluster() {
        let r = rendered();
        let filters = r.listeners["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = filters
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "nexus.router",
                "nexus.auth",
                "nexus.guard",
                "nexus.ratelimit",
                "nexus.cache",
                "envoy.filters.http.router"
            ]
        );
        let cache: Value = serde_json::from_str(
            filters[4]["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(cache["service"]["cluster"], CACHE_CLUSTER);
        assert_eq!(cache["writer"], "nexus-up");
        let rl = &filters[3]["typed_config"]["config"];
        assert_eq!(
            rl["vm_config"]["code"]["local"]["filename"],
            "/m/nexus_ratelimit.wasm"
        );
        let cfg: Value =
            serde_json::from_str(rl["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(cfg["service"]["cluster"], RATELIMIT_CLUSTER);
        nexus_config::parse::<nexus_config::ratelimit_filter::RateLimitFilterConfig>(
            rl["configuration"]["value"].as_str().unwrap().as_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn the_listener_buffers_what_the_guard_scans() {
        // The example's guard keeps the default 1 MiB cap, which Envoy's default holds.
        let listener = &rendered().listeners["resources"][0];
        assert!(listener.get("per_connection_buffer_limit_bytes").is_none());
        let (mut routes, gateway) = example();
        let cortex = routes[0]
            .rules
            .iter_mut()
            .find(|r| r.guard.is_some())
            .unwrap();
        cortex.guard.as_mut().unwrap().max_scan_bytes = 4 << 20;
        let r = render_example(&routes, &gateway);
        assert_eq!(
            r.listeners["resources"][0]["per_connection_buffer_limit_bytes"],
            4 << 20
        );
    }

    #[test]
    fn bootstrap_watches_the_xds_directory() {
        let b = bootstrap(9901, Path::new("/s/lds.json"), Path::new("/s/cds.json"));
        assert_eq!(
            b["dynamic_resources"]["lds_config"]["path_config_source"]["watched_directory"]["path"],
            "/s"
        );
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 9901);
    }

    #[test]
    fn requests_are_logged_as_json_lines() {
        let r = rendered();
        let log = &r.listeners["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["access_log"][0]["typed_config"];
        assert_eq!(log["path"], "/s/access.log");
        let fields = &log["log_format"]["json_format"];
        assert_eq!(fields["rule"], "%REQ(X-NEXUS-RULE)%");
        assert_eq!(fields["cache"], "%RESP(X-NEXUS-CACHE)%");
    }

    #[test]
    fn filter_refusal_reasons_become_prometheus_labels() {
        let b = bootstrap(9901, Path::new("/s/lds.json"), Path::new("/s/cds.json"));
        let tags = b["stats_config"]["stats_tags"].as_array().unwrap();
        let reason = tags.iter().find(|t| t["tag_name"] == "reason").unwrap();
        assert_eq!(
            reason["regex"],
            "^wasmcustom\\.nexus_auth\\.denied(\\.([^.]+))$"
        );
    }

    #[test]
    fn remote_jwks_gets_a_tls_cluster() {
        let c = jwks_cluster(
            "outbound|443||id.example.com",
            "https://id.example.com/jwks",
        )
        .unwrap();
        assert_eq!(c["type"], "STRICT_DNS");
        assert_eq!(
            c["transport_socket"]["typed_config"]["sni"],
            "id.example.com"
        );
        let plain = jwks_cluster("j", "http://127.0.0.1:8000/jwks").unwrap();
        assert_eq!(plain["type"], "STATIC");
        assert!(plain.get("transport_socket").is_none());
    }
}
