//! The Helm chart (charts/nexus) with real helm (`nexus_toolenv::helm`): lint, template with
//! defaults and with every option on, the generated values schema (fresh, matching values.yaml,
//! rejecting bad values), and `helm install` into a real kube-apiserver, where the real
//! controller then runs with exactly the chart's RBAC (impersonating its ServiceAccount).
//!
//! Missing tools are failures, not skips: `cargo xtask test` provisions them.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use nexus_controller::chart::ChartValues;
use nexus_controller::crd::NexusRoute;
use serde::Deserialize;
use serde_json::{json, Value};
use support::*;

const NS: &str = "nexus-system";

fn chart() -> PathBuf {
    repo_root().join("charts/nexus")
}

/// helm with its own HOME and XDG dirs (no user repositories, cache or plugins).
struct Helm {
    home: tempfile::TempDir,
    helm: PathBuf,
}

impl Helm {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            helm: nexus_toolenv::helm::helm().unwrap_or_else(|e| panic!("{e:#}")),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let h = self.home.path();
        Command::new(&self.helm)
            .args(args)
            .env("HOME", h)
            .env("XDG_CACHE_HOME", h.join("cache"))
            .env("XDG_CONFIG_HOME", h.join("config"))
            .env("XDG_DATA_HOME", h.join("data"))
            .env("HELM_CACHE_HOME", h.join("cache/helm"))
            .env("HELM_CONFIG_HOME", h.join("config/helm"))
            .env("HELM_DATA_HOME", h.join("data/helm"))
            .env_remove("KUBECONFIG")
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "helm {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `helm template` → the rendered objects.
    fn template(&self, extra: &[&str]) -> Vec<Value> {
        self.template_in(NS, extra)
    }

    fn template_in(&self, ns: &str, extra: &[&str]) -> Vec<Value> {
        let chart = chart();
        let mut args = vec!["template", "nx", chart.to_str().unwrap(), "-n", ns];
        args.extend_from_slice(extra);
        parse_docs(&self.ok(&args))
    }

    /// `helm template` that must fail → what helm said.
    fn template_err(&self, extra: &[&str]) -> String {
        let chart = chart();
        let mut args = vec!["template", "nx", chart.to_str().unwrap(), "-n", NS];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(!out.status.success(), "helm {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:#?}", kinds(objs)))
}

fn kinds(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
        .collect()
}

const FULL: [&str; 14] = [
    "--set",
    "autoscaling.enabled=true",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "redis.existingSecret=nexus-redis",
    "--set",
    "cache.warmUrl=http://istio-ingressgateway.istio-system",
    "--set",
    "audit.enabled=true",
];

#[test]
fn helm_lint_passes_strict_with_defaults_and_every_option() {
    let helm = Helm::new();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let out = helm.ok(&["lint", "--strict", chart]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let mut args = vec!["lint", "--strict", chart];
    args.extend_from_slice(&FULL);
    helm.ok(&args);
}

fn container(objs: &[Value]) -> &Value {
    &find(objs, "Deployment", "nexus-controller")["spec"]["template"]["spec"]["containers"][0]
}

fn env_var<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn template_defaults() {
    let objs = Helm::new().template(&[]);
    let kinds: BTreeSet<String> = objs
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
        "HPA and ServiceMonitor are off by default"
    );
    for o in &objs {
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "nexus", "{o}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{o}");
        assert_eq!(labels["helm.sh/chart"], "nexus-0.1.0", "{o}");
    }

    let deploy = find(&objs, "Deployment", "nexus-controller");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "nexus-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(&objs);
    assert_eq!(c["image"], "ghcr.io/nexus-gateway/nexus:0.1.0");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for (probe, path) in [
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
        ("startupProbe", "/health/startup"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let spread = &pod["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let ports: Vec<(String, u64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 8080),
            ("ratelimit", 8081),
            ("modules", 8082),
            ("cache", 8083),
            ("access-log", 8084),
            ("audit", 8085)
        ]
        .map(|(n, p)| (n.to_string(), p))
    );
    // The args are ones `nexus controller` accepts (checked against the binary below).
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "controller");
    for want in [
        "--controller-namespace=nexus-system",
        "--lease-namespace=nexus-system",
        "--lease-name=nexus-controller",
        "--lease-duration=15",
        "--renew-interval=5",
        "--http-addr=0.0.0.0:8080",
        "--modules-addr=0.0.0.0:8082",
        "--ratelimit-addr=0.0.0.0:8081",
        "--modules=/opt/nexus/modules",
        "--access-log-port=8084",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(
            env_var(c, var).unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            field
        );
    }
    assert!(
        env_var(c, "REDIS_URL").is_none(),
        "no Redis by default: counters in memory"
    );

    let svc = find(&objs, "Service", "nexus-controller");
    assert_eq!(svc["metadata"]["namespace"], NS);
    let sports: Vec<(String, u64, String)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        sports,
        [
            ("http-metrics", 8080, "http"),
            ("grpc-ratelimit", 8081, "ratelimit"),
            ("http-modules", 8082, "modules"),
            ("grpc-cache", 8083, "cache"),
            ("grpc-access-log", 8084, "access-log"),
            ("http-audit", 8085, "audit"),
        ]
        .map(|(n, p, t)| (n.to_string(), p, t.to_string()))
    );
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    let pdb = find(&objs, "PodDisruptionBudget", "nexus-controller");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // RBAC: exactly the verbs the controller's calls need.
    let rules = |o: &Value| -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for r in o["rules"].as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for v in r["verbs"].as_array().unwrap() {
                        out.insert((
                            g.as_str().unwrap().to_string(),
                            res.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
        out
    };
    let expand = |spec: &[(&str, &[&str], &[&str])]| -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for (g, resources, verbs) in spec {
            for r in *resources {
                for v in *verbs {
                    out.insert((g.to_string(), r.to_string(), v.to_string()));
                }
            }
        }
        out
    };
    let crud: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    assert_eq!(
        rules(find(&objs, "ClusterRole", "nexus-controller")),
        expand(&[
            (
                "nexus.datapunk.io",
                &["nexusroutes"],
                &["get", "list", "watch", "patch"]
            ),
            ("nexus.datapunk.io", &["nexusroutes/status"], &["patch"]),
            ("", &["secrets"], &["get", "list", "watch"]),
            (
                "networking.istio.io",
                &["envoyfilters", "virtualservices", "destinationrules"],
                crud
            ),
            ("events.k8s.io", &["events"], &["create", "patch"]),
            ("", &["pods"], &["list"]),
        ])
    );
    // Rate-limit ConfigMaps, and the replica's own pod label: the release namespace only.
    let cm_role = find(&objs, "Role", "nexus-controller");
    assert_eq!(cm_role["metadata"]["namespace"], NS);
    assert_eq!(
        rules(cm_role),
        expand(&[
            ("", &["configmaps"], crud),
            ("", &["pods"], &["get", "patch"])
        ])
    );
    let role = find(&objs, "Role", "nexus-controller-leader-election");
    assert_eq!(role["metadata"]["namespace"], NS);
    assert_eq!(
        rules(role),
        expand(&[(
            "coordination.k8s.io",
            &["leases"],
            &["create", "get", "update"]
        )])
    );
    assert_eq!(
        role["rules"][1]["resourceNames"],
        json!(["nexus-controller"])
    );
    for (binding, role_kind, role_name) in [
        ("ClusterRoleBinding", "ClusterRole", "nexus-controller"),
        ("RoleBinding", "Role", "nexus-controller-leader-election"),
        ("RoleBinding", "Role", "nexus-controller"),
    ] {
        let b = find(&objs, binding, role_name);
        assert_eq!(b["roleRef"]["kind"], role_kind);
        assert_eq!(b["roleRef"]["name"], role_name);
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "nexus-controller", "namespace": NS}])
        );
    }
}

#[test]
fn template_with_hpa_servicemonitor_and_redis() {
    let objs = Helm::new().template(&FULL);
    let deploy = find(&objs, "Deployment", "nexus-controller");
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    let hpa = find(&objs, "HorizontalPodAutoscaler", "nexus-controller");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "nexus-controller");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    let rule = find(&objs, "PrometheusRule", "nexus-controller");
    let rules_file: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("files/prometheus-rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], rules_file["groups"]);
    let dashboard = find(&objs, "ConfigMap", "nexus-controller-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["nexus.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "nexus-overview");
    let sm = find(&objs, "ServiceMonitor", "nexus-controller");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let args = container(&objs)["args"].as_array().unwrap().clone();
    for want in ["--audit-port=8085", "--audit-stream=nexus:audit"] {
        assert!(args.contains(&json!(want)), "{want} missing from {args:?}");
    }
    assert!(
        !Helm::new()
            .template(&[])
            .iter()
            .any(|o| o.to_string().contains("--audit-port")),
        "audit off by default"
    );
    // The chain lives in Redis: audit without one is refused with the reason.
    let err = Helm::new().template_err(&["--set", "audit.enabled=true"]);
    assert!(
        err.contains("audit.enabled needs redis.existingSecret: the audit chain lives in Redis"),
        "{err}"
    );
    let redis = env_var(container(&objs), "REDIS_URL").unwrap();
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"],
        json!({"name": "nexus-redis", "key": "redis-url"})
    );
    let c = container(&objs);
    assert!(c["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--cache-addr=0.0.0.0:8083")));
    assert!(env_var(c, "NEXUS_CACHE_TOKEN").is_none());
    let objs = Helm::new().template(&["--set", "cache.enabled=false"]);
    assert!(!container(&objs)["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().starts_with("--cache-addr")));
    let objs = Helm::new().template(&FULL);
    assert!(container(&objs)["args"]
        .as_array()
        .unwrap()
        .contains(&json!(
            "--warm-url=http://istio-ingressgateway.istio-system"
        )));
    let objs = Helm::new().template(&["--set", "cache.tokenSecret=nexus-cache"]);
    let c = container(&objs);
    assert!(c["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--cache-addr=0.0.0.0:8083")));
    assert_eq!(
        env_var(c, "NEXUS_CACHE_TOKEN").unwrap()["valueFrom"]["secretKeyRef"],
        json!({"name": "nexus-cache", "key": "token"})
    );
    let objs = Helm::new().template(&[
        "--set",
        "redis.existingSecret=r",
        "--set",
        "redis.secretKey=url",
    ]);
    assert_eq!(
        env_var(container(&objs), "REDIS_URL").unwrap()["valueFrom"]["secretKeyRef"],
        json!({"name": "r", "key": "url"})
    );
}

#[test]
fn old_clusters_get_the_beta_pdb_and_hpa_apis() {
    let mut args = vec!["--kube-version", "1.20.0"];
    args.extend_from_slice(&FULL);
    let objs = Helm::new().template(&args);
    assert_eq!(
        find(&objs, "PodDisruptionBudget", "nexus-controller")["apiVersion"],
        "policy/v1beta1"
    );
    assert_eq!(
        find(&objs, "HorizontalPodAutoscaler", "nexus-controller")["apiVersion"],
        "autoscaling/v2beta2"
    );
}

#[test]
fn chart_args_are_accepted_by_nexus_controller() {
    // clap rejects unknown flags: every rendered argument must parse. `--help` after them makes
    // clap stop before running anything, but only once all earlier args parsed.
    let objs = Helm::new().template(&FULL);
    let args: Vec<String> = container(&objs)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nexus {args:?} --help:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(&args)
        .args(["--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "the check above would catch typos");
}

/// The chart renders no Istio-typed objects; the Istio objects the controller renders point at
/// the chart's Service by name, namespace and port, and those ports carry the protocol Istio
/// infers from the port name.
#[test]
fn istio_objects_the_controller_renders_match_the_chart_service() {
    let ns = "gateway-ops";
    let objs = Helm::new().template_in(ns, &FULL);
    let istio: Vec<String> = objs
        .iter()
        .filter(|o| o["apiVersion"].as_str().unwrap().contains("istio.io"))
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        istio.is_empty(),
        "the chart renders Istio objects {istio:?}: validate them with nexus_toolenv::istio"
    );
    let svc = find(&objs, "Service", "nexus-controller");
    assert_eq!(svc["metadata"]["namespace"], ns);
    let port_names: Vec<(u64, String, String)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["name"].as_str().unwrap().to_string(),
                p["appProtocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Istio's protocol selection: `<protocol>[-<suffix>]` names; appProtocol agrees.
    for (_, name, app) in &port_names {
        let proto = name.split('-').next().unwrap();
        assert!(
            ["http", "grpc"].contains(&proto),
            "port {name}: Istio would treat it as plain TCP"
        );
        assert_eq!(proto, app, "port {name}: appProtocol {app}");
    }

    // What the controller renders with this namespace (as the chart passes it).
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "render",
            "--controller-namespace",
            ns,
            "--access-log-port",
            "8084",
            "--audit-port",
            "8085",
        ])
        .arg("--modules")
        .arg(fixtures.join("modules"))
        .arg("-f")
        .arg(fixtures.join("cases/gateway-full.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).to_string();
    let host = format!("nexus-controller.{ns}.svc.cluster.local");
    let re = regex::Regex::new(r"outbound\|(\d+)\|\|(nexus-controller\.[a-z0-9.-]+)").unwrap();
    let mut used = BTreeSet::new();
    for c in re.captures_iter(&rendered) {
        assert_eq!(&c[2], host, "the controller points at another Service");
        used.insert(c[1].parse::<u64>().unwrap());
    }
    assert_eq!(
        used,
        BTreeSet::from([8081, 8082, 8083, 8084, 8085]),
        "{rendered}"
    );
    let name_of = |port: u64| {
        port_names
            .iter()
            .find(|(p, _, _)| *p == port)
            .map(|(_, n, _)| n.clone())
            .unwrap_or_else(|| panic!("the chart's Service has no port {port}"))
    };
    assert!(
        name_of(8082).starts_with("http-"),
        "modules are fetched over HTTP"
    );
    assert!(name_of(8081).starts_with("grpc-"), "rate limits are gRPC");
    assert!(
        name_of(8083).starts_with("grpc-"),
        "cache coherency is gRPC"
    );
    assert!(name_of(8084).starts_with("grpc-"), "the access log is gRPC");
    assert!(
        name_of(8085).starts_with("http-"),
        "audit batches are HTTP POSTs"
    );
    assert!(rendered.contains(&format!("http://nexus-controller.{ns}.svc:8082/modules/")));
    // Proxies report to the leader alone: the leader Service, HTTP, selecting the label the
    // lease holder puts on its pod.
    let leader = find(&objs, "Service", "nexus-controller-leader");
    assert_eq!(
        leader["spec"]["selector"]["nexus.datapunk.io/leader"],
        "true"
    );
    assert_eq!(leader["spec"]["ports"][0]["port"], 8080);
    assert_eq!(leader["spec"]["ports"][0]["name"], "http-reports");
    assert!(rendered.contains(&format!(
        "outbound|8080||nexus-controller-leader.{ns}.svc.cluster.local"
    )));

    // And those Istio objects are valid for Istio.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    if let Err(e) = nexus_toolenv::istio::validate(&[file]) {
        panic!("{e:#}");
    }
}

fn values_yaml() -> String {
    std::fs::read_to_string(chart().join("values.yaml")).unwrap()
}

#[test]
fn values_yaml_deserializes_into_chart_values() {
    let text = values_yaml();
    let de = serde_yaml::Deserializer::from_str(&text);
    let v: ChartValues = serde_path_to_error::deserialize(de)
        .unwrap_or_else(|e| panic!("values.yaml does not match ChartValues: {e}"));
    assert_eq!(v.replica_count, 2);
    assert_eq!(v.ports.modules, 8082);
    assert_eq!(v.controller.modules_dir, "/opt/nexus/modules");
    // And a typo does not.
    let typo = values_yaml().replace("existingSecret:", "existingSecert:");
    let err = serde_yaml::from_str::<ChartValues>(&typo).unwrap_err();
    assert!(err.to_string().contains("existingSecert"), "{err}");
}

#[test]
fn checked_in_values_schema_is_fresh() {
    let path = chart().join("values.schema.json");
    let current = nexus_controller::chart::schema_json();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "charts/nexus/values.schema.json is stale; regenerate it with:\n  cargo run -p nexus-controller --bin nexus -- chart-schema > charts/nexus/values.schema.json"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("chart-schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), current);
}

#[test]
fn bad_values_are_rejected_by_the_schema_naming_the_field() {
    let helm = Helm::new();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for (args, field) in [
        (vec!["--set", "replicaCount=two"], "replicaCount"),
        (vec!["--set", "replicaCount=0"], "replicaCount"),
        (vec!["--set", "redis.existingSecert=r"], "existingSecert"),
        (vec!["--set", "replicas=3"], "replicas"),
        (vec!["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (vec!["--set", "ports.modules=70000"], "modules"),
        (vec!["--set", "serviceMonitor.interval=often"], "interval"),
        (vec!["--set", "cache.warmUrl=https://gw"], "warmUrl"),
    ] {
        let mut a = vec!["template", "nx", chart];
        a.extend_from_slice(&args);
        let out = helm.run(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(field),
            "{args:?}: error does not name {field}: {err}"
        );
    }
    // A values file with a typo, too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "controller:\n  leaderElection:\n    leaseDurationSeconds: 10\n",
    )
    .unwrap();
    let out = helm.run(&["template", "nx", chart, "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leaseDurationSeconds"), "{err}");
}

fn dynamic(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A kubeconfig like `base` whose user impersonates the chart's ServiceAccount.
fn impersonating_kubeconfig(base: &Path, out: &Path) {
    let mut kc: Value = serde_yaml::from_str(&std::fs::read_to_string(base).unwrap()).unwrap();
    for u in kc["users"].as_array_mut().unwrap() {
        u["user"]["as"] = json!(format!("system:serviceaccount:{NS}:nexus-controller"));
    }
    std::fs::write(out, serde_yaml::to_string(&kc).unwrap()).unwrap();
}

/// `helm install nexus` of the chart into NS (created), with `extra` arguments; its output.
fn install(helm: &Helm, kubeconfig: &str, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "install",
        "nexus",
        chart.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
        "-n",
        NS,
        "--create-namespace",
        "--timeout",
        "2m",
    ];
    args.extend_from_slice(extra);
    helm.ok(&args)
}

/// Istio's CRDs (the fixture the controller tests use), served before this returns.
async fn install_istio_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-crds.yaml"),
    )
    .unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd = CustomResourceDefinition::deserialize(doc).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    for kind in ["EnvoyFilter", "VirtualService", "DestinationRule"] {
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &nexus_controller::controller::api_resource(kind),
        );
        wait_for(Duration::from_secs(30), || {
            let api = api.clone();
            async move { api.list(&Default::default()).await.is_ok() }
        })
        .await;
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
}

async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// `nexus controller` as the chart runs it, with `kubeconfig`'s credentials.
fn spawn_controller(
    kubeconfig: &Path,
    modules: &Path,
    http_port: u16,
    log: &Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("controller")
        .arg("--modules")
        .arg(modules)
        .args(["--controller-namespace", NS])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--modules-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ratelimit-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--identity", "rbac-check"])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits (up to 60 s, while the controller runs) for `Programmed=True`; how long it took.
async fn wait_programmed(
    routes: &Api<NexusRoute>,
    name: &str,
    child: &mut std::process::Child,
    logs: &dyn Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = routes.get(name).await.unwrap();
        let cond = r.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Programmed")
                .map(|c| (c.status.clone(), c.message.clone()))
        });
        if let Some((status, _)) = &cond {
            if status == "True" {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "never Programmed with the chart's RBAC: {:?}\n{}",
            r.status,
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_into_a_real_apiserver_and_run_the_controller_with_the_chart_rbac() {
    let env = TestEnv::start();
    let helm = Helm::new();
    let kubeconfig = env.kubeconfig.to_str().unwrap().to_string();
    let chart = chart();
    let start = Instant::now();
    let out = install(&helm, &kubeconfig, &[]);
    let install = start.elapsed();
    eprintln!("helm install took {install:?}");
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kubectl get nexusroutes"), "NOTES: {out}");

    let client = env.client().await;
    let deploy: Deployment = Api::namespaced(client.clone(), NS)
        .get("nexus-controller")
        .await
        .unwrap();
    let spec = deploy.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let c = &spec.template.spec.unwrap().containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .get("nexus-controller")
        .await
        .unwrap();
    let svc: Service = Api::namespaced(client.clone(), NS)
        .get("nexus-controller")
        .await
        .unwrap();
    let names: Vec<String> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.name.unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "http-metrics",
            "grpc-ratelimit",
            "http-modules",
            "grpc-cache",
            "grpc-access-log",
            "http-audit"
        ]
    );
    Api::<ClusterRole>::all(client.clone())
        .get("nexus-controller")
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .get("nexus-controller")
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), NS)
        .get("nexus-controller-leader-election")
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), NS)
        .get("nexus-controller-leader-election")
        .await
        .unwrap();
    // kube-apiserver 1.20 serves PodDisruptionBudget as policy/v1beta1 only: the chart chose it.
    let pdb = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        NS,
        &dynamic(
            "policy",
            "v1beta1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        ),
    )
    .get("nexus-controller")
    .await
    .unwrap();
    assert_eq!(pdb.data["spec"]["minAvailable"], 1);
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get("nexusroutes.nexus.datapunk.io")
        .await
        .unwrap();
    assert_eq!(crd.spec.names.kind, "NexusRoute");

    // The real controller, with only the chart's RBAC (impersonating its ServiceAccount),
    // programs a route end to end: finalizer, Secret read, server-side applies, status, events,
    // Lease, and the rate-limit ConfigMap watch.
    install_istio_crds(&client).await;
    let apps = "apps";
    create_namespace(&client, apps).await;
    let sa_kubeconfig = env.dir.path().join("sa-kubeconfig");
    impersonating_kubeconfig(&env.kubeconfig, &sa_kubeconfig);
    let modules = module_dir();
    let http_port = free_port();
    let log = env.dir.path().join("controller.log");
    let mut child = spawn_controller(&sa_kubeconfig, modules.path(), http_port, &log, &[]);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    // The impersonation is real: the ServiceAccount may not list Deployments.
    let sa_client = client_for(&sa_kubeconfig).await;
    let deployments: Api<Deployment> = Api::all(sa_client);
    let denied = deployments.list(&Default::default()).await.unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");

    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), apps);
    let route: NexusRoute = serde_json::from_value(json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1",
        "kind": "NexusRoute",
        "metadata": { "name": "shop", "namespace": apps },
        "spec": {
            "target": { "kind": "Sidecar", "selector": { "app": "shop" } },
            "hosts": ["shop.apps.svc.cluster.local"],
            "rules": [{ "name": "orders", "match": { "path": { "prefix": "/orders/" } }, "category": "data_operations",
                        "rateLimits": [{ "by": "Client", "requests": 5, "per": "Second" }] }],
        },
    }))
    .unwrap();
    routes.create(&PostParams::default(), &route).await.unwrap();
    let programmed = wait_programmed(&routes, "shop", &mut child, &logs).await;
    eprintln!("programmed under the chart's RBAC after {programmed:?}");
    // No pod matches the route's selector: nothing enforces it, and status says so.
    wait_for(Duration::from_secs(30), || {
        let routes = routes.clone();
        async move {
            let r = routes.get("shop").await.unwrap();
            r.status.and_then(|s| s.enforced).as_deref() == Some("0/0")
        }
    })
    .await;
    // What a user sees (the CRD's printer columns), with the real kubectl.
    let kubectl = nexus_toolenv::helm::kubectl().unwrap();
    let get = Command::new(&kubectl)
        .args(["--kubeconfig", &kubeconfig, "get", "nexusroutes", "-A"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&get.stdout).to_string();
    eprintln!("kubectl get nexusroutes -A:\n{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "HOSTS",
            "RULES",
            "ACCEPTED",
            "PROGRAMMED",
            "ENFORCED",
            "AGE"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        [
            "apps",
            "shop",
            "[\"shop.apps.svc.cluster.local\"]",
            "1",
            "True",
            "True",
            "0/0"
        ]
    );

    let (code, ready) = http_get(http_port, "/health/ready");
    assert_eq!(code, 200, "{ready}");
    eprintln!("/health/ready: {ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(ready["components"]["ratelimit"]["status"], "ok", "{ready}");
    assert_eq!(ready["components"]["apiserver"]["status"], "ok", "{ready}");
    assert_eq!(
        ready["components"]["redis"]["status"], "disabled",
        "{ready}"
    );
    assert_eq!(ready["components"]["modules"]["count"], 5, "{ready}");
    assert_eq!(ready["leader"], true, "{ready}");
    let ef = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        apps,
        &nexus_controller::controller::api_resource("EnvoyFilter"),
    )
    .list(&Default::default())
    .await
    .unwrap();
    assert_eq!(ef.items.len(), 1);

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), apps);
    wait_for(Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop"))
        }
    })
    .await;

    // Deleting the route: the finalizer cleans up (delete verbs), then the route goes away.
    routes.delete("shop", &Default::default()).await.unwrap();
    wait_for(Duration::from_secs(60), || {
        let routes = routes.clone();
        async move { routes.get_opt("shop").await.unwrap().is_none() }
    })
    .await;
    let all_logs = logs();
    let forbidden: Vec<&str> = all_logs
        .lines()
        .filter(|l| l.contains("forbidden"))
        .collect::<Vec<_>>();
    assert!(
        forbidden.is_empty(),
        "the controller was denied something:\n{}",
        forbidden.join("\n")
    );
    let _ = child.kill();
    let _ = child.wait();

    // Upgrade to the HPA (autoscaling/v2beta2 on this 1.20 apiserver) and Redis from a Secret.
    let start = Instant::now();
    helm.ok(&[
        "upgrade",
        "nexus",
        chart.to_str().unwrap(),
        "--kubeconfig",
        &kubeconfig,
        "-n",
        NS,
        "--set",
        "autoscaling.enabled=true",
        "--set",
        "redis.existingSecret=nexus-redis",
    ]);
    eprintln!("helm upgrade took {:?}", start.elapsed());
    let hpa = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        NS,
        &dynamic(
            "autoscaling",
            "v2beta2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
        ),
    )
    .get("nexus-controller")
    .await
    .unwrap();
    assert_eq!(hpa.data["spec"]["maxReplicas"], 5);
    let deploy: Deployment = Api::namespaced(client.clone(), NS)
        .get("nexus-controller")
        .await
        .unwrap();
    let env = deploy.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let redis = env.iter().find(|e| e.name == "REDIS_URL").unwrap();
    let key = redis
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("nexus-redis", "redis-url")
    );
    // A bad value is refused before anything reaches the cluster.
    let out = helm.run(&[
        "upgrade",
        "nexus",
        chart.to_str().unwrap(),
        "--kubeconfig",
        &kubeconfig,
        "-n",
        NS,
        "--set",
        "replicaCount=two",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("at '/replicaCount': got string, want integer"));

    let start = Instant::now();
    helm.ok(&["uninstall", "nexus", "--kubeconfig", &kubeconfig, "-n", NS]);
    eprintln!("helm uninstall took {:?}", start.elapsed());
    assert!(Api::<Deployment>::namespaced(client.clone(), NS)
        .get_opt("nexus-controller")
        .await
        .unwrap()
        .is_none());
}

/// `watchNamespaces`: Roles in the listed namespaces (routes, Secrets, Istio objects), a Role
/// in the gateway namespace (EnvoyFilters only), nothing cluster-wide.
#[test]
fn watch_namespaces_turns_the_cluster_role_into_roles() {
    let objs = Helm::new().template(&["--set", "controller.watchNamespaces={apps,shop}"]);
    let kinds = kinds(&objs);
    assert!(
        !kinds.iter().any(|k| k.starts_with("ClusterRole")),
        "{kinds:?}"
    );
    let role_in = |ns: &str, name: &str| -> Value {
        objs.iter()
            .find(|o| {
                o["kind"] == "Role"
                    && o["metadata"]["namespace"] == ns
                    && o["metadata"]["name"] == name
            })
            .unwrap_or_else(|| panic!("no Role {name} in {ns}"))
            .clone()
    };
    for ns in ["apps", "shop"] {
        let rules = role_in(ns, "nexus-controller-routes")["rules"].clone();
        let resources: Vec<&str> = rules
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap())
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            resources.contains(&"nexusroutes") && resources.contains(&"secrets"),
            "{resources:?}"
        );
    }
    let gateway = role_in("istio-system", "nexus-controller-gateway");
    assert_eq!(
        gateway["rules"],
        json!([{ "apiGroups": ["networking.istio.io"], "resources": ["envoyfilters"],
                 "verbs": ["get", "list", "watch", "create", "patch", "delete"] },
               { "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }])
    );
    let args = container(&objs)["args"].clone();
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--watch-namespaces=apps,shop"), "{args:?}");
    assert!(
        args.contains(&"--gateway-namespaces=istio-system"),
        "{args:?}"
    );
}

/// With `watchNamespaces`, the helm-installed RBAC lets the real controller program a gateway
/// route in a listed namespace (its EnvoyFilter in istio-system), and the API server refuses
/// (403) what it would do anywhere else: Secrets and ConfigMaps of other namespaces, Secrets
/// of the gateway namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespaces_keeps_the_controller_inside_them_on_a_real_apiserver() {
    let env = TestEnv::start();
    let helm = Helm::new();
    let kubeconfig = env.kubeconfig.to_str().unwrap().to_string();
    let client = env.client().await;
    for ns in ["apps", "other", "istio-system"] {
        create_namespace(&client, ns).await;
    }
    install(
        &helm,
        &kubeconfig,
        &["--set", "controller.watchNamespaces={apps}"],
    );
    install_istio_crds(&client).await;
    let sa_kubeconfig = env.dir.path().join("sa-kubeconfig");
    impersonating_kubeconfig(&env.kubeconfig, &sa_kubeconfig);
    let sa = client_for(&sa_kubeconfig).await;

    let forbidden = |e: kube::Error| match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected a 403, got {other}"),
    };
    let secrets_elsewhere =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(sa.clone(), "other");
    assert_eq!(
        forbidden(
            secrets_elsewhere
                .list(&Default::default())
                .await
                .unwrap_err()
        ),
        403
    );
    let gateway_secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(sa.clone(), "istio-system");
    assert_eq!(
        forbidden(gateway_secrets.get("istio-ca-secret").await.unwrap_err()),
        403
    );
    let system_config =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(sa.clone(), "kube-system");
    assert_eq!(
        forbidden(system_config.list(&Default::default()).await.unwrap_err()),
        403
    );
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "x" } })).unwrap();
    let other_config =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(sa.clone(), "other");
    assert_eq!(
        forbidden(
            other_config
                .create(&PostParams::default(), &cm)
                .await
                .unwrap_err()
        ),
        403
    );
    let all_routes = Api::<NexusRoute>::all(sa.clone());
    assert_eq!(
        forbidden(all_routes.list(&Default::default()).await.unwrap_err()),
        403
    );

    let log = env.dir.path().join("controller.log");
    let modules = module_dir();
    let scope = [
        "--watch-namespaces",
        "apps",
        "--gateway-namespaces",
        "istio-system",
    ];
    let mut child = spawn_controller(&sa_kubeconfig, modules.path(), free_port(), &log, &scope);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let route = |ns: &str| -> NexusRoute {
        serde_json::from_value(json!({
            "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
            "metadata": { "name": "shop", "namespace": ns },
            "spec": {
                "target": { "kind": "Gateway", "selector": { "istio": "ingressgateway" } },
                "hosts": [format!("shop.{ns}.example.com")],
                "gateways": ["istio-system/ingress"],
                "rules": [{ "name": "orders", "match": { "path": { "prefix": "/orders/" } },
                            "category": "data_operations" }],
            },
        }))
        .unwrap()
    };
    let unwatched: Api<NexusRoute> = Api::namespaced(client.clone(), "other");
    unwatched
        .create(&PostParams::default(), &route("other"))
        .await
        .unwrap();
    let routes: Api<NexusRoute> = Api::namespaced(client.clone(), "apps");
    routes
        .create(&PostParams::default(), &route("apps"))
        .await
        .unwrap();
    wait_programmed(&routes, "shop", &mut child, &logs).await;
    let efs = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "istio-system",
        &nexus_controller::controller::api_resource("EnvoyFilter"),
    )
    .list(&Default::default())
    .await
    .unwrap();
    assert_eq!(
        efs.items.len(),
        1,
        "the gateway EnvoyFilter is in istio-system"
    );
    assert!(
        unwatched.get("shop").await.unwrap().status.is_none(),
        "a route outside watchNamespaces is not the controller's"
    );
    let denied: Vec<String> = logs()
        .lines()
        .filter(|l| l.contains("forbidden"))
        .map(str::to_string)
        .collect();
    assert!(
        denied.is_empty(),
        "the controller reached outside its Roles:\n{}",
        denied.join("\n")
    );
    let _ = child.kill();
    let _ = child.wait();
}
