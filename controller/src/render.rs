//! Pure rendering of compiled routes into the objects the controller applies.
//!
//! Per group of routes (same namespace, target kind, workload selector): one `EnvoyFilter`
//! with the auth, router and rate-limit Wasm filters and one rate-limit `ConfigMap`. Per route:
//! one `VirtualService` and one `DestinationRule` per upstream. Output is deterministic: same
//! routes in, same bytes out.

use std::collections::BTreeMap;
use std::path::Path;

use nexus_config::auth::AuthConfig;
use nexus_config::cache::{CacheConfig, CacheRule, CacheService};
use nexus_config::ratelimit::RateLimitConfig;
use nexus_config::ratelimit_filter::{FailureMode, RateLimitFilterConfig, RateLimitService};
use nexus_config::router::{HeaderMatch, RequestMatch};
use nexus_config::router::{NoMatch, RouterConfig};
use serde_json::{json, Value};

use crate::crd::{Protocol, TargetKind};
use crate::model::{duration_text, CompiledRoute, GroupKey, ResolvedUpstream};

pub const FIELD_MANAGER: &str = "nexus-controller";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_GROUP: &str = "nexus.datapunk.io/group";
pub const LABEL_ROUTE: &str = "nexus.datapunk.io/route";
use nexus_config::contract;
/// The filters, in the order they run: see `nexus_config::contract::FILTER_ORDER` for why.
pub use nexus_config::contract::FILTER_ORDER as FILTERS;
/// Port of the rate-limit service (`envoy.service.ratelimit.v3`) on the `nexus-controller`
/// Service; the ratelimit filter falls back to local buckets while it does not answer.
pub const RATELIMIT_PORT: u16 = 8081;
/// Port of the cache-coherency service (`nexus.cache.v1`) on the `nexus-controller` Service.
pub const CACHE_PORT: u16 = 8083;

/// Where the module server is and which module builds to reference.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the controller's Service `nexus-controller`.
    pub controller_namespace: String,
    pub module_port: u16,
    /// Filter name (`auth`, `router`, `ratelimit`) → sha256 hex of its `.wasm`.
    pub modules: BTreeMap<String, String>,
}

impl Settings {
    /// Reads `<dir>/nexus_<filter>.wasm.sha256` (as `cargo xtask build-filters` writes them;
    /// `<filter>.wasm.sha256` also works) for every filter, `sha256sum` format or bare hex.
    pub fn load_modules(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for f in FILTERS {
            let mut p = dir.join(format!("nexus_{f}.wasm.sha256"));
            if !p.exists() {
                p = dir.join(format!("{f}.wasm.sha256"));
            }
            let text = std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            let hex = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("{} does not hold a sha256 hex digest", p.display());
            }
            out.insert(f.to_string(), hex.to_ascii_lowercase());
        }
        Ok(out)
    }
}

fn owner_ref(r: &CompiledRoute, controller: bool) -> Value {
    json!({
        "apiVersion": format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        "kind": "NexusRoute",
        "name": r.name,
        "uid": r.uid,
        "controller": controller,
        "blockOwnerDeletion": false,
    })
}

fn meta(name: &str, ns: &str, labels: Value, owners: Vec<Value>) -> Value {
    let mut m = json!({ "name": name, "namespace": ns, "labels": labels });
    if !owners.is_empty() {
        m["ownerReferences"] = Value::Array(owners);
    }
    m
}

/// The merged filter configurations of a group (routes sorted oldest first).
pub struct GroupConfigs {
    pub router: RouterConfig,
    pub auth: AuthConfig,
    pub ratelimit: RateLimitConfig,
    /// Rules only for router rules that cache; the service is filled in per target.
    pub cache: CacheConfig,
}

pub fn group_configs(group: &GroupKey, routes: &[&CompiledRoute]) -> GroupConfigs {
    let mut router = RouterConfig::default();
    let mut auth = crate::model::auth_defaults();
    let mut ratelimit = RateLimitConfig {
        domain: format!("nexus.{}.{}", group.namespace, group.name()),
        descriptors: Vec::new(),
    };
    let mut cache = CacheConfig::default();
    for r in routes {
        for rule in &r.rules {
            router
                .categories
                .entry(rule.router.category.clone())
                .or_insert_with(|| nexus_config::router::Category {
                    upstream: rule.upstream.token.clone(),
                    timeout_ms: Some(rule.timeout_ms),
                    retry: None,
                });
            router.rules.push(rule.router.clone());
        }
        if let (Some((cat, up, t)), NoMatch::Reject) = (&r.default_upstream, &router.on_no_match) {
            router.categories.entry(cat.clone()).or_insert_with(|| {
                nexus_config::router::Category {
                    upstream: up.token.clone(),
                    timeout_ms: Some(*t),
                    retry: None,
                }
            });
            router.on_no_match = NoMatch::Default {
                category: cat.clone(),
            };
        }
        auth.providers
            .extend(r.auth.providers.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(keys) = &r.auth.api_keys {
            let merged = auth
                .api_keys
                .get_or_insert_with(|| nexus_config::auth::ApiKeys {
                    header: keys.header.clone(),
                    keys: Vec::new(),
                });
            for k in &keys.keys {
                if !merged.keys.iter().any(|m| m.sha256 == k.sha256) {
                    merged.keys.push(k.clone());
                }
            }
        }
        auth.rules.extend(r.auth.rules.iter().cloned());
        ratelimit.descriptors.extend(r.rate_limits.iter().cloned());
        for rule in &r.rules {
            if let Some(c) = &rule.cache {
                // Keyed on the router's decision, so cache and routing never disagree.
                cache.rules.push(CacheRule {
                    name: rule.name.clone(),
                    matcher: RequestMatch {
                        headers: vec![HeaderMatch {
                            name: contract::RULE.to_string(),
                            present: None,
                            exact: Some(rule.name.clone()),
                            prefix: None,
                            regex: None,
                        }],
                        ..Default::default()
                    },
                    policy: c.policy.clone(),
                });
            }
        }
    }
    if let Some(keys) = &mut auth.api_keys {
        keys.keys.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    }
    GroupConfigs {
        router,
        auth,
        ratelimit,
        cache,
    }
}

/// Envoy clusters through which the filters reach the Nexus services.
pub struct ServiceClusters {
    /// HTTP/2 cluster of the rate-limit service.
    pub ratelimit: String,
    /// HTTP/2 cluster of the cache-coherency service.
    pub cache: String,
    /// The cache filter's writer id (its puts' tie-breaker); `None`: one per worker.
    pub cache_writer: Option<String>,
}

/// Each filter (in [`FILTERS`] order) with its plugin configuration (JSON text): what both
/// the EnvoyFilter and the standalone Envoy configuration load. The cache filter is left out
/// when no rule caches: it would cost every request for nothing.
pub fn filter_configurations(
    cfg: &GroupConfigs,
    services: &ServiceClusters,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let ratelimit = RateLimitFilterConfig {
        limits: cfg.ratelimit.clone(),
        service: Some(RateLimitService {
            cluster: services.ratelimit.clone(),
            timeout_ms: 50,
        }),
        failure_mode: FailureMode::LocalFallback,
        failure_mode_by_route: Default::default(),
        response_headers: true,
        over_limit_cache: true,
    };
    let mut out = vec![
        ("router", serde_json::to_string(&cfg.router)?),
        ("auth", serde_json::to_string(&cfg.auth)?),
        ("ratelimit", serde_json::to_string(&ratelimit)?),
    ];
    if !cfg.cache.rules.is_empty() {
        let cache = CacheConfig {
            service: Some(CacheService::new(services.cache.clone())),
            writer: services.cache_writer.clone(),
            ..cfg.cache.clone()
        };
        out.push(("cache", serde_json::to_string(&cache)?));
    }
    Ok(out)
}

/// EnvoyFilter + rate-limit ConfigMap of one group. `routes` must be the group's accepted
/// routes sorted oldest first (see [`crate::model::age_key`]).
pub fn render_group(
    group: &GroupKey,
    routes: &[&CompiledRoute],
    settings: &Settings,
) -> anyhow::Result<Vec<Value>> {
    let name = group.name();
    let cfg = group_configs(group, routes);
    let mut owners: Vec<Value> = routes.iter().map(|r| owner_ref(r, false)).collect();
    owners.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
    let labels = json!({ LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_GROUP: name });
    let context = match group.kind {
        TargetKind::Gateway => "GATEWAY",
        TargetKind::Sidecar => "SIDECAR_INBOUND",
    };
    let fail_open = routes.iter().any(|r| r.fail_open);
    let services = ServiceClusters {
        ratelimit: format!(
            "outbound|{RATELIMIT_PORT}||nexus-controller.{}.svc.cluster.local",
            settings.controller_namespace
        ),
        cache: format!(
            "outbound|{CACHE_PORT}||nexus-controller.{}.svc.cluster.local",
            settings.controller_namespace
        ),
        cache_writer: None,
    };
    let mut patches = Vec::new();
    for (filter, configuration) in filter_configurations(&cfg, &services)? {
        let sha = settings
            .modules
            .get(filter)
            .ok_or_else(|| anyhow::anyhow!("no sha256 for the {filter} module"))?;
        let fname = format!("nexus.{filter}");
        patches.push(json!({
            "applyTo": "HTTP_FILTER",
            "match": {
                "context": context,
                "listener": { "filterChain": { "filter": {
                    "name": "envoy.filters.network.http_connection_manager",
                    "subFilter": { "name": "envoy.filters.http.router" }
                }}}
            },
            "patch": {
                "operation": "INSERT_BEFORE",
                "value": {
                    "name": fname,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": {
                            "name": fname,
                            "root_id": fname,
                            "failure_policy": if fail_open { "FAIL_OPEN" } else { "FAIL_CLOSED" },
                            "configuration": {
                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": configuration,
                            },
                            "vm_config": {
                                "vm_id": nexus_config::vm_id(&fname, &configuration),
                                "runtime": "envoy.wasm.runtime.v8",
                                "code": { "remote": {
                                    "http_uri": {
                                        "uri": format!(
                                            "http://nexus-controller.{}.svc:{}/modules/{sha}.wasm",
                                            settings.controller_namespace, settings.module_port
                                        ),
                                        "cluster": format!(
                                            "outbound|{}||nexus-controller.{}.svc.cluster.local",
                                            settings.module_port, settings.controller_namespace
                                        ),
                                        "timeout": "10s",
                                    },
                                    "sha256": sha,
                                    "retry_policy": { "num_retries": 3 },
                                }},
                            },
                        },
                    },
                },
            },
        }));
    }
    let envoy_filter = json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": meta(&name, &group.namespace, labels.clone(), owners.clone()),
        "spec": {
            "workloadSelector": { "labels": group.selector },
            "configPatches": patches,
        },
    });
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&format!("{name}-ratelimit"), &group.namespace, labels, owners),
        "data": { "config.yaml": serde_yaml::to_string(&cfg.ratelimit)? },
    });
    Ok(vec![envoy_filter, config_map])
}

fn upstream_headers(rule_name: Option<&str>, token: &str) -> Value {
    let mut h = json!({ contract::UPSTREAM: { "exact": token } });
    if let Some(n) = rule_name {
        h[contract::RULE] = json!({ "exact": n });
    }
    h
}

fn destination(u: &ResolvedUpstream) -> Value {
    json!({ "destination": { "host": u.host, "port": { "number": u.port } } })
}

/// VirtualService + DestinationRules of one accepted route.
pub fn render_route(r: &CompiledRoute) -> Vec<Value> {
    let labels = json!({ LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_ROUTE: r.name });
    let owners = vec![owner_ref(r, true)];
    let mut http = Vec::new();
    for rule in &r.rules {
        let mut retries = json!({
            "attempts": rule.retry.max_retries,
            "retryOn": rule.retry.retry_on,
        });
        if let Some(t) = rule.per_try_timeout_ms {
            retries["perTryTimeout"] = json!(duration_text(t));
        }
        http.push(json!({
            "name": rule.name,
            "match": [{ "headers": upstream_headers(Some(&rule.name), &rule.upstream.token) }],
            "route": [destination(&rule.upstream)],
            "timeout": duration_text(rule.timeout_ms),
            "retries": retries,
        }));
    }
    // Fallbacks: anything the router sent to one of this route's upstreams (by upstream alone),
    // then the default category's upstream.
    let mut upstreams: BTreeMap<&str, &ResolvedUpstream> = BTreeMap::new();
    for u in r.upstreams() {
        upstreams.entry(u.token.as_str()).or_insert(u);
    }
    for (token, u) in &upstreams {
        http.push(json!({
            "name": format!("{}.upstream.{token}", r.name),
            "match": [{ "headers": upstream_headers(None, token) }],
            "route": [destination(u)],
        }));
    }
    if let Some((cat, u, t)) = &r.default_upstream {
        http.push(json!({
            "name": format!("{}.default.{cat}", r.name),
            "route": [destination(u)],
            "timeout": duration_text(*t),
        }));
    }
    let hosts: Vec<String> = if r.hosts.is_empty() {
        vec!["*".to_string()]
    } else {
        r.hosts.clone()
    };
    let gateways: Vec<String> = match r.group.kind {
        TargetKind::Gateway => r.gateways.clone(),
        TargetKind::Sidecar => vec!["mesh".to_string()],
    };
    let mut out = vec![json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": meta(&format!("nexus-{}", r.name), &r.namespace, labels.clone(), owners.clone()),
        "spec": { "hosts": hosts, "gateways": gateways, "http": http },
    })];
    for (token, u) in &upstreams {
        let mut pool = json!({});
        let p = &r.pool;
        let mut tcp = serde_json::Map::new();
        if let Some(v) = p.max_connections {
            tcp.insert("maxConnections".into(), json!(v));
        }
        if let Some(v) = p
            .connect_timeout
            .as_deref()
            .and_then(crate::model::parse_duration_ms)
        {
            tcp.insert("connectTimeout".into(), json!(duration_text(v)));
        }
        let mut h = serde_json::Map::new();
        if let Some(v) = p.http1_max_pending_requests {
            h.insert("http1MaxPendingRequests".into(), json!(v));
        }
        if let Some(v) = p.http2_max_requests {
            h.insert("http2MaxRequests".into(), json!(v));
        }
        if let Some(v) = p.max_requests_per_connection {
            h.insert("maxRequestsPerConnection".into(), json!(v));
        }
        if matches!(u.protocol, Protocol::GRPC | Protocol::HTTP2) {
            h.insert("h2UpgradePolicy".into(), json!("UPGRADE"));
        }
        if !tcp.is_empty() {
            pool["tcp"] = Value::Object(tcp);
        }
        if !h.is_empty() {
            pool["http"] = Value::Object(h);
        }
        let mut policy = json!({
            "outlierDetection": {
                "consecutive5xxErrors": r.outlier.consecutive_errors,
                "interval": duration_text(r.outlier.interval_ms),
                "baseEjectionTime": duration_text(r.outlier.base_ejection_ms),
                "maxEjectionPercent": r.outlier.max_ejection_percent,
            },
        });
        if pool.as_object().is_some_and(|m| !m.is_empty()) {
            policy["connectionPool"] = pool;
        }
        out.push(json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": meta(&format!("nexus-{}-{token}", r.name), &r.namespace, labels.clone(), owners.clone()),
            "spec": { "host": u.host, "trafficPolicy": policy },
        }));
    }
    out
}
