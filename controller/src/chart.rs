//! The values of the Helm chart (`charts/nexus/values.yaml`) as Rust types: their JSON Schema
//! is the chart's `values.schema.json` (`nexus chart-schema`), so Helm rejects a mistyped or
//! unknown value before rendering anything.
//!
//! Every struct denies unknown fields (`additionalProperties: false`) and every field is
//! required: Helm validates the *merged* values (chart defaults + user overrides), so a missing
//! key can only mean values.yaml and this file disagree. Free-form Kubernetes fragments
//! (affinity, tolerations, extra env, the pod securityContext) stay untyped objects.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Values of the `nexus` Helm chart.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "nexus chart values")]
pub struct ChartValues {
    /// Controller replicas (one leader reconciles; every replica serves modules and rate
    /// limits). Ignored when `autoscaling.enabled`.
    #[schemars(range(min = 1))]
    pub replica_count: u32,
    pub image: Image,
    /// Secrets for pulling the image.
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub service_account: ServiceAccount,
    pub rbac: Rbac,
    pub controller: Controller,
    pub redis: Redis,
    pub events: Events,
    pub cache: Cache,
    pub access_log: AccessLog,
    pub audit: Audit,
    pub ports: Ports,
    pub service: Service,
    pub resources: Resources,
    pub probes: Probes,
    pub pod_disruption_budget: PodDisruptionBudget,
    pub autoscaling: Autoscaling,
    pub service_monitor: ServiceMonitor,
    pub prometheus_rule: PrometheusRule,
    pub grafana_dashboard: GrafanaDashboard,
    pub pod_annotations: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    /// Pod-level securityContext (the container's is fixed by the chart: non-root, read-only
    /// root filesystem, no capabilities, RuntimeDefault seccomp).
    pub pod_security_context: Map<String, Value>,
    pub priority_class_name: String,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Map<String, Value>>,
    pub affinity: Map<String, Value>,
    pub topology_spread_constraints: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    /// Image with the `nexus` binary and the filter modules.
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Defaults to the chart's appVersion when empty.
    pub tag: String,
    pub pull_policy: PullPolicy,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalObjectReference {
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccount {
    /// Create the ServiceAccount (otherwise `name` must exist).
    pub create: bool,
    /// Defaults to `nexus-controller` when empty.
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rbac {
    /// ClusterRole/Binding for routes, Secrets, Istio objects, ConfigMaps and Events, and a
    /// Role/Binding for the leader-election Lease.
    pub create: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Controller {
    /// Directory of the filter modules (`*.wasm`, `*.wasm.sha256`) in the image
    /// (`--modules`, `NEXUS_MODULES`).
    #[schemars(length(min = 1))]
    pub modules_dir: String,
    /// `RUST_LOG` filter, e.g. `info` or `nexus_controller=debug,info`.
    pub log_level: String,
    pub leader_election: LeaderElection,
    /// Which route namespaces may attach filters to the gateways of a namespace
    /// (`--allowed-routes NS=FROM`): gateway namespace → `All`, `Same`, or a comma-separated
    /// list of namespaces. Unlisted gateway namespaces allow `Same`; `istio-system` allows
    /// `All` unless listed here.
    pub allowed_routes: BTreeMap<String, String>,
    /// Namespaces whose routes the controller watches and writes objects in
    /// (`--watch-namespaces`); the chart then grants Roles there (and in the release and
    /// gateway namespaces) instead of a ClusterRole. Empty: the whole cluster.
    pub watch_namespaces: Vec<String>,
    /// With `watchNamespaces`: where gateways run (`--gateway-namespaces`); a Role there lets
    /// the controller write gateway EnvoyFilters and nothing else (no Secrets).
    pub gateway_namespaces: Vec<String>,
    pub proxy_reports: ProxyReports,
    /// Extra arguments to `nexus controller`.
    pub extra_args: Vec<String>,
    /// Extra container environment variables (Kubernetes `EnvVar` objects).
    pub extra_env: Vec<Map<String, Value>>,
}

/// What proxies report of the filters they run (`--proxy-report-interval-ms`,
/// `--trust-xfcc`): the `Enforced` condition.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyReports {
    /// Milliseconds between a filter's reports; a proxy silent for three intervals counts
    /// as missing.
    #[schemars(range(min = 100))]
    pub interval_ms: u32,
    /// Identify a reporting proxy by the mesh identity in `x-forwarded-client-cert`: only
    /// when the controller pod runs an Istio sidecar, which overwrites that header. Off: a
    /// report counts only when it comes from the reporting pod's own IP.
    pub trust_forwarded_client_cert: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElection {
    /// Name of the Lease in the release namespace.
    #[schemars(length(min = 1))]
    pub lease_name: String,
    /// Seconds a Lease stays valid without renewal.
    #[schemars(range(min = 1))]
    pub lease_duration: u32,
    /// Seconds between renewals.
    #[schemars(range(min = 1))]
    pub renew_interval: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redis {
    /// Secret (release namespace) with the Redis URL (`redis://host:6379`, or a Redis Cluster's
    /// seeds as `redis+cluster://host1:6379,host2:6379`); empty keeps counters in memory.
    pub existing_secret: String,
    /// Key of the URL in that Secret.
    #[schemars(length(min = 1))]
    pub secret_key: String,
}

/// The event bus on RabbitMQ: events on `service.events`, commands from `service.commands`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Events {
    /// Secret (release namespace) with the AMQP URL (`amqp://user:password@host:5672/vhost`,
    /// `NEXUS_AMQP_URL`); empty: no event bus.
    pub existing_secret: String,
    /// Key of the URL in that Secret.
    #[schemars(length(min = 1))]
    pub secret_key: String,
    /// Whether a RabbitMQ outage fails readiness (the Datapunk design: it does).
    pub required: bool,
    /// Names the command queue (`nexus.commands.<deployment>`) and the Redis outbox; empty:
    /// the release name.
    pub deployment: String,
}

/// The cache-coherency service (nexus.cache.v1) on `ports.cache`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// Pass `--cache-addr=0.0.0.0:<ports.cache>`: serve the cache-coherency service.
    pub enabled: bool,
    /// Secret with the bearer token of `POST /cache/invalidate` (`NEXUS_CACHE_TOKEN`); empty
    /// refuses every HTTP invalidation.
    pub token_secret: String,
    /// Key of the token in that Secret.
    #[schemars(length(min = 1))]
    pub token_key: String,
    /// Gateway (`http://host[:port]`) the leader fetches `cache.warm` paths through
    /// (`--warm-url`); empty: no warming.
    #[schemars(regex(pattern = r"^(http://[^/\s]+/?)?$"))]
    pub warm_url: String,
}

/// Gateways' access log, streamed to the controller (`envoy.access_loggers.http_grpc`): the
/// request metrics on `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    /// Pass `--access-log-port=<ports.accessLog>`: rendered EnvoyFilters stream each request's
    /// entry to the controller, which counts it.
    pub enabled: bool,
}

/// The audit service: proxies send their decisions (auth, rate limit, guard) to every replica,
/// which appends them to one hash-chained log kept in Redis (`nexus audit verify --redis`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Audit {
    /// Pass `--audit-port=<ports.audit>`: rendered filters send audit records to the
    /// controller. Needs `redis.existingSecret` (the chain lives in Redis); off: proxies only
    /// count their decisions.
    pub enabled: bool,
    /// The Redis stream holding the chain.
    #[schemars(length(min = 1))]
    pub stream: String,
    /// What proxies do while the audit service does not take records: `buffer`, `drop`, or
    /// `refuse` (nexus-guard answers 503 to the requests it guards; auth and ratelimit buffer).
    pub on_unavailable: nexus_config::audit::OnUnavailable,
}

/// Container ports; the Service `nexus-controller` exposes them under the same numbers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ports {
    /// Health and /metrics (Service port `http-metrics`).
    #[schemars(range(min = 1))]
    pub http: u16,
    /// Rate-limit gRPC service (`grpc-ratelimit`).
    #[schemars(range(min = 1))]
    pub ratelimit: u16,
    /// Filter modules (`http-modules`); rendered EnvoyFilters fetch from this port.
    #[schemars(range(min = 1))]
    pub modules: u16,
    /// Cache-coherency gRPC service (`grpc-cache`).
    #[schemars(range(min = 1))]
    pub cache: u16,
    /// Access log gRPC service (`grpc-access-log`), when `accessLog.enabled`.
    #[schemars(range(min = 1))]
    pub access_log: u16,
    /// Audit service (`http-audit`), when `audit.enabled`.
    #[schemars(range(min = 1))]
    pub audit: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    #[serde(rename = "type")]
    pub type_: ServiceType,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// Container resources (`cpu`, `memory`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    pub requests: BTreeMap<String, Quantity>,
    pub limits: BTreeMap<String, Quantity>,
}

/// A Kubernetes quantity: `100m`, `512Mi`, `1`, `0.5`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Quantity {
    Text(String),
    Number(f64),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probes {
    /// `/health/live`.
    pub liveness: Probe,
    /// `/health/ready`: 503 while the API server is unreachable.
    pub readiness: Probe,
    /// `/health/startup`: 503 until the HTTP, module and rate-limit servers run.
    pub startup: Probe,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[schemars(range(min = 1))]
    pub period_seconds: u32,
    #[schemars(range(min = 1))]
    pub timeout_seconds: u32,
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodDisruptionBudget {
    pub enabled: bool,
    /// Pods that must stay up during voluntary disruptions (a number or a percentage).
    pub min_available: IntOrString,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u32),
    String(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    /// A HorizontalPodAutoscaler (autoscaling/v2) instead of a fixed `replicaCount`.
    pub enabled: bool,
    #[schemars(range(min = 1))]
    pub min_replicas: u32,
    #[schemars(range(min = 1))]
    pub max_replicas: u32,
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitor {
    /// A Prometheus-operator ServiceMonitor (monitoring.coreos.com/v1) for `/metrics`.
    pub enabled: bool,
    /// Prometheus duration, e.g. `30s`.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub scrape_timeout: String,
    /// Extra labels (to match the Prometheus `serviceMonitorSelector`).
    pub labels: BTreeMap<String, String>,
}

/// The chart's recording rules and alerts (`files/prometheus-rules.yaml`) as a PrometheusRule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRule {
    /// A Prometheus-operator PrometheusRule (monitoring.coreos.com/v1).
    pub enabled: bool,
    /// Extra labels (to match the Prometheus `ruleSelector`).
    pub labels: BTreeMap<String, String>,
}

/// The Nexus Grafana dashboard (`files/grafana-dashboard.json`) in a ConfigMap.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrafanaDashboard {
    pub enabled: bool,
    /// Labels Grafana's dashboard sidecar selects on (`grafana_dashboard: "1"` by default).
    pub labels: BTreeMap<String, String>,
}

/// The JSON Schema of [`ChartValues`], as checked in at `charts/nexus/values.schema.json`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(ChartValues);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_denies_unknown_top_level_and_nested_keys() {
        let v: Value = serde_json::from_str(&schema_json()).unwrap_or_default();
        assert_eq!(v["additionalProperties"], Value::Bool(false));
        assert_eq!(
            v["$defs"]["Redis"]["additionalProperties"],
            Value::Bool(false)
        );
        assert_eq!(v["properties"]["replicaCount"]["type"], "integer");
        assert_eq!(v["properties"]["replicaCount"]["minimum"], 1);
    }
}
