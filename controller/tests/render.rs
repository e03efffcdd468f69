//! Render and validation without an API server: golden files (`UPDATE_GOLDEN=1` rewrites
//! them), Istio schema validation of every rendered object, the checked-in CRD, the CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_config::auth::AuthConfig;
use nexus_config::ratelimit::RateLimitConfig;
use nexus_config::ratelimit_filter::{FailureMode, RateLimitFilterConfig};
use nexus_config::router::RouterConfig;
use nexus_controller::crd::NexusRoute;
use nexus_controller::render::Settings;
use nexus_controller::{crd, input, plan};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

fn settings() -> Settings {
    Settings {
        controller_namespace: "nexus-system".into(),
        module_port: 8082,
        modules: Settings::load_modules(&fixtures().join("modules")).unwrap(),
        allowed_routes: Default::default(),
        report_interval_ms: nexus_config::report::DEFAULT_INTERVAL_MS,
        access_log_port: None,
        audit_port: None,
        audit_on_unavailable: Default::default(),
    }
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Top-level keys of the auth filter config the golden files pin. The auth filter's config
/// type grows (caches, identity options) with defaults of its own; those are checked by
/// `envoy_filter_configs_parse_with_the_filters_own_types`, not pinned here.
const PINNED_AUTH_KEYS: [&str; 4] = ["providers", "api_keys", "rules", "on_no_match"];

/// Rendered YAML with the auth filter configuration reduced to [`PINNED_AUTH_KEYS`].
fn normalize(yaml: &str) -> String {
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "EnvoyFilter" {
            for p in v["spec"]["configPatches"].as_array_mut().unwrap() {
                if p["patch"]["value"]["name"] != "nexus.auth" {
                    continue;
                }
                let cfg =
                    &mut p["patch"]["value"]["typed_config"]["config"]["configuration"]["value"];
                let mut auth: serde_json::Map<String, Value> =
                    serde_json::from_str(cfg.as_str().unwrap()).unwrap();
                auth.retain(|k, _| PINNED_AUTH_KEYS.contains(&k.as_str()));
                *cfg = Value::String(serde_json::to_string(&auth).unwrap());
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&v).unwrap());
    }
    out
}

/// Compares with (or, with UPDATE_GOLDEN=1, writes) `tests/golden/<name>`.
fn golden(name: &str, actual: &str) {
    let actual = &if name.ends_with(".yaml") {
        normalize(actual)
    } else {
        actual.to_string()
    };
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("missing golden file {}: run `UPDATE_GOLDEN=1 cargo test -p nexus-controller --test render`", path.display())
    });
    if expected != *actual {
        let diff_line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendered output at line {}:\n  golden:   {:?}\n  rendered: {:?}\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p nexus-controller --test render",
            path.display(),
            diff_line + 1,
            expected.lines().nth(diff_line),
            actual.lines().nth(diff_line)
        );
    }
}

fn render_file(file: &Path) -> (String, String) {
    let inputs = input::read_files(&[file.to_path_buf()]).unwrap();
    assert!(inputs.errors.is_empty(), "{:?}", inputs.errors);
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let (objects, outcomes) = plan::render_all(&routes, &inputs.secrets, &settings()).unwrap();
    let mut yaml = String::new();
    for o in &objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(o).unwrap());
    }
    let mut problems = String::new();
    for ((ns, name), out) in &outcomes {
        match out {
            Ok(c) => {
                problems.push_str(&format!("{ns}/{name}: accepted ({} rules)\n", c.rule_count))
            }
            Err(ps) => {
                for p in ps {
                    problems.push_str(&format!(
                        "{ns}/{name}: {} {}: {}\n",
                        p.reason.as_str(),
                        p.path,
                        p.message
                    ));
                }
            }
        }
    }
    (yaml, problems)
}

#[test]
fn golden_render_and_validation() {
    for case in cases() {
        let stem = case.file_stem().unwrap().to_str().unwrap().to_string();
        let (yaml, problems) = render_file(&case);
        golden(&format!("{stem}.rendered.yaml"), &yaml);
        golden(&format!("{stem}.outcomes.txt"), &problems);
    }
}

#[test]
fn invalid_routes_report_json_paths_and_render_nothing() {
    let (yaml, problems) = render_file(&fixtures().join("cases/invalid.yaml"));
    for expected in [
        "default/bad-spec: InvalidSpec $.spec.rules[0].match.path.regex: invalid regex \"(unclosed\"",
        "default/bad-spec: InvalidSpec $.spec.rules[1].match.methods[0]",
        "default/bad-spec: InvalidSpec $.spec.rules[1].auth.jwt.providers[0]: unknown provider \"nobody\"",
        "default/bad-spec: InvalidSpec $.spec.rules[2].category: unknown category \"nope\"",
        "default/bad-spec: InvalidSpec $.spec.rules[3].timeout",
        "default/bad-spec: InvalidSpec $.spec.rules[3].retries.retryOn",
        "default/bad-spec: InvalidSpec $.spec.rules[3].rateLimits[0].requests",
        "default/bad-spec: InvalidSpec $.spec.rules[3].rateLimits[0].header",
        "default/bad-spec: InvalidSpec $.spec.auth.providers[0].jwksUri",
        "default/missing-secret: SecretNotFound $.spec.auth.apiKeys.secretRef: Secret default/not-there not found",
        "default/second: Conflict $.spec.rules[1].match.path: host \"shared.example.com\" with this path is already claimed by the older NexusRoute default/first",
        "default/first: accepted (1 rules)",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    // Only the winner of the conflict is rendered.
    assert!(yaml.contains("name: nexus-first"), "{yaml}");
    for loser in ["bad-spec", "missing-secret", "second"] {
        assert!(
            !yaml.contains(&format!("nexus.datapunk.io/route: {loser}")),
            "{loser} rendered:\n{yaml}"
        );
    }
}

fn objects(file: &str) -> Vec<Value> {
    let inputs = input::read_files(&[fixtures().join("cases").join(file)]).unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    plan::render_all(&routes, &inputs.secrets, &settings())
        .unwrap()
        .0
}

fn filter_config(ef: &Value, filter: &str) -> Vec<u8> {
    let patch = ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["patch"]["value"]["name"] == format!("nexus.{filter}"))
        .unwrap();
    let cfg = &patch["patch"]["value"]["typed_config"]["config"];
    assert_eq!(
        cfg["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    cfg["configuration"]["value"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[test]
fn envoy_filter_configs_parse_with_the_filters_own_types() {
    let objs = objects("gateway-full.yaml");
    let ef = objs.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
    let router: RouterConfig = nexus_config::parse(&filter_config(ef, "router")).unwrap();
    let names: Vec<&str> = router.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "api.health",
            "api.lake-query",
            "api.stream",
            "api.cortex-grpc",
            "api.cortex-grpc.rest",
            "api.models"
        ]
    );
    assert_eq!(router.rules[3].upstream.as_deref(), Some("cortex"));
    assert_eq!(router.rules[3].timeout_ms, Some(10_000));
    let auth: AuthConfig = nexus_config::parse(&filter_config(ef, "auth")).unwrap();
    assert_eq!(auth.api_keys.as_ref().unwrap().keys.len(), 2);
    assert!(auth.providers.contains_key("api.corp"));
    let rl_filter: RateLimitFilterConfig =
        nexus_config::parse(&filter_config(ef, "ratelimit")).unwrap();
    // Each limit's failureMode, by router rule and the key it counts by; the rest fall back.
    let modes = &rl_filter.failure_mode_by_limit;
    assert_eq!(
        modes.keys().collect::<Vec<_>>(),
        ["api.lake-query"],
        "{modes:?}"
    );
    assert_eq!(modes["api.lake-query"]["client_id"], FailureMode::FailOpen);
    assert_eq!(modes["api.lake-query"]["route"], FailureMode::FailClosed);
    assert_eq!(rl_filter.failure_mode, FailureMode::LocalFallback);
    let rl = rl_filter.limits;
    assert_eq!(rl.descriptors.len(), 2);
    assert_eq!(
        rl_filter.service.unwrap().cluster,
        "outbound|8081||nexus-controller.nexus-system.svc.cluster.local"
    );
    // The cache filter caches the lake-query rule per client, keyed on the router's decision.
    let cache: nexus_config::cache::CacheConfig =
        nexus_config::parse(&filter_config(ef, "cache")).unwrap();
    assert_eq!(cache.rules.len(), 1);
    assert_eq!(cache.rules[0].name, "api.lake-query");
    assert_eq!(cache.rules[0].matcher.headers[0].name, "x-nexus-rule");
    assert_eq!(cache.rules[0].policy.ttl, 30);
    assert_eq!(
        cache.rules[0].policy.key_by,
        nexus_config::cache::KeyBy::Client
    );
    assert_eq!(
        cache.service.unwrap().cluster,
        "outbound|8083||nexus-controller.nexus-system.svc.cluster.local"
    );
    // Order: router (strips client-sent x-nexus-*), auth, ratelimit, cache, each before
    // envoy.filters.http.router, fail closed.
    let order: Vec<&str> = ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["patch"]["operation"], "INSERT_BEFORE");
            assert_eq!(p["match"]["context"], "GATEWAY");
            assert_eq!(
                p["patch"]["value"]["typed_config"]["config"]["failure_policy"],
                "FAIL_CLOSED"
            );
            p["patch"]["value"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        order,
        [
            "nexus.router",
            "nexus.auth",
            "nexus.ratelimit",
            "nexus.cache"
        ]
    );
    let remote = &ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["vm_config"]["code"]["remote"];
    let sha = settings().modules["router"].clone();
    assert_eq!(remote["sha256"], sha.as_str());
    assert_eq!(
        remote["http_uri"]["uri"],
        format!("http://nexus-controller.nexus-system.svc:8082/modules/{sha}.wasm").as_str()
    );
    assert_eq!(
        remote["http_uri"]["cluster"],
        "outbound|8082||nexus-controller.nexus-system.svc.cluster.local"
    );
    // The rate-limit ConfigMap holds the same config as envoyproxy/ratelimit YAML.
    let cm = objs.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let from_cm: RateLimitConfig =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(from_cm, rl);
}

#[test]
fn routes_on_the_same_workloads_merge_deterministically() {
    let objs = objects("sidecar-merge.yaml");
    let efs: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "EnvoyFilter").collect();
    assert_eq!(efs.len(), 2, "two selectors, two EnvoyFilters");
    let lake = efs
        .iter()
        .find(|e| e["spec"]["workloadSelector"]["labels"]["app"] == "lake")
        .unwrap();
    // Group objects may live in another namespace than their routes, where owner references
    // cannot point: labels name the group, the routes' finalizer removes it.
    assert!(lake["metadata"].get("ownerReferences").is_none());
    assert_eq!(
        lake["metadata"]["labels"]["nexus.datapunk.io/group-namespace"],
        lake["metadata"]["namespace"]
    );
    let router: RouterConfig = nexus_config::parse(&filter_config(lake, "router")).unwrap();
    let names: Vec<&str> = router.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["lake-internal.query", "lake-admin.admin"],
        "older route first"
    );
    // Any input order gives the same bytes.
    let inputs = input::read_files(&[fixtures().join("cases/sidecar-merge.yaml")]).unwrap();
    let mut routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let a = plan::render_all(&routes, &inputs.secrets, &settings())
        .unwrap()
        .0;
    routes.reverse();
    let b = plan::render_all(&routes, &inputs.secrets, &settings())
        .unwrap()
        .0;
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn virtual_service_and_destination_rule_carry_the_seed_policies() {
    let objs = objects("sidecar-merge.yaml");
    let vs = objs
        .iter()
        .find(|o| o["kind"] == "VirtualService" && o["metadata"]["name"] == "nexus-lake-internal")
        .unwrap();
    let first = &vs["spec"]["http"][0];
    assert_eq!(
        first["match"][0]["headers"]["x-nexus-upstream"]["exact"],
        "lake"
    );
    assert_eq!(
        first["route"][0]["destination"]["host"],
        "lake.data.svc.cluster.local"
    );
    assert_eq!(first["timeout"], "30s");
    assert_eq!(first["retries"]["attempts"], 3);
    assert_eq!(vs["spec"]["gateways"][0], "mesh");
    let dr = objs
        .iter()
        .find(|o| {
            o["kind"] == "DestinationRule" && o["metadata"]["name"] == "nexus-lake-internal-lake"
        })
        .unwrap();
    let od = &dr["spec"]["trafficPolicy"]["outlierDetection"];
    assert_eq!(od["consecutive5xxErrors"], 5);
    assert_eq!(od["baseEjectionTime"], "60s");
    assert_eq!(
        vs["metadata"]["ownerReferences"][0]["uid"],
        "22222222-2222-2222-2222-222222222222"
    );
    assert_eq!(vs["metadata"]["ownerReferences"][0]["controller"], true);
}

#[test]
fn every_rendered_istio_object_passes_istio_validate() {
    let mut files = Vec::new();
    for case in cases() {
        let stem = case.file_stem().unwrap().to_str().unwrap().to_string();
        let p = root()
            .join("tests/golden")
            .join(format!("{stem}.rendered.yaml"));
        let text = std::fs::read_to_string(&p).unwrap();
        if text.contains("networking.istio.io") {
            files.push(p);
        }
    }
    assert!(files.len() >= 2);
    let report = nexus_toolenv::istio::validate(&files).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(report.contains("ok   EnvoyFilter/"), "{report}");
}

#[test]
fn checked_in_crd_is_fresh() {
    let path = root().join("../charts/nexus/crds/nexusroutes.yaml");
    let current = crd::crd_yaml();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "charts/nexus/crds/nexusroutes.yaml is stale; regenerate it with:\n  cargo run -p nexus-controller --bin nexus -- crd > charts/nexus/crds/nexusroutes.yaml"
    );
}

#[test]
fn cli_validate_prints_file_and_path_and_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["validate", "-f"])
        .arg(fixtures().join("cases/invalid.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid.yaml: NexusRoute default/bad-spec: $.spec.rules[0].match.path.regex (InvalidSpec)"), "{err}");
    let ok = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["validate", "-f"])
        .arg(fixtures().join("cases/gateway-full.yaml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn cli_render_prints_the_golden_objects_and_crd_prints_the_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["render", "--modules"])
        .arg(fixtures().join("modules"))
        .arg("-f")
        .arg(fixtures().join("cases/gateway-full.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden =
        std::fs::read_to_string(root().join("tests/golden/gateway-full.rendered.yaml")).unwrap();
    assert_eq!(normalize(&String::from_utf8_lossy(&out.stdout)), golden);
    let crd_out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("crd")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&crd_out.stdout), crd::crd_yaml());
}

/// A route in `namespace` targeting the ingress gateway (in `gateway_ns`, or Istio's default).
fn gateway_route(namespace: &str, gateway_ns: Option<&str>) -> NexusRoute {
    let mut target =
        serde_json::json!({ "kind": "Gateway", "selector": { "istio": "ingressgateway" } });
    if let Some(ns) = gateway_ns {
        target["namespace"] = serde_json::json!(ns);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
        "metadata": { "name": format!("r-{namespace}"), "namespace": namespace,
                      "uid": format!("uid-{namespace}"), "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "target": target, "gateways": ["istio-system/nexus-gateway"],
                  "hosts": [format!("{namespace}.example.com")],
                  "rules": [{ "name": "all", "match": { "path": { "prefix": "/" } }, "category": "data_operations" }] },
    }))
    .unwrap()
}

#[test]
fn a_gateway_routes_envoy_filter_lives_where_the_gateway_runs() {
    // Istio applies a selector-scoped EnvoyFilter only to workloads in its own namespace:
    // the datapunk example's routes live in `default`, its ingress gateway in istio-system.
    let dir = root().join("../examples/datapunk");
    let inputs = input::read_files(&[
        dir.join("routes.yaml"),
        dir.join("api-keys.yaml"),
        dir.join("portal-oidc.yaml"),
    ])
    .unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    assert!(routes
        .iter()
        .all(|r| r.metadata.namespace.as_deref() == Some("default")));
    let (objs, _) = plan::render_all(&routes, &inputs.secrets, &settings()).unwrap();
    let placed: Vec<(&str, &str)> = objs
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        placed.contains(&("EnvoyFilter", "istio-system")),
        "{placed:?}"
    );
    assert!(!placed.contains(&("EnvoyFilter", "default")), "{placed:?}");
    assert!(
        placed.contains(&("VirtualService", "default")),
        "{placed:?}"
    );
    assert!(
        placed.contains(&("ConfigMap", "nexus-system")),
        "{placed:?}"
    );
}

#[test]
fn routes_of_many_namespaces_share_their_gateways_envoy_filter() {
    let (a, b) = (gateway_route("team-a", None), gateway_route("team-b", None));
    let secrets = std::collections::BTreeMap::new();
    let (objs, outcomes) = plan::render_all(&[&a, &b], &secrets, &settings()).unwrap();
    assert!(outcomes.values().all(|o| o.is_ok()));
    let efs: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "EnvoyFilter").collect();
    assert_eq!(efs.len(), 1, "one gateway, one EnvoyFilter");
    assert_eq!(efs[0]["metadata"]["namespace"], "istio-system");
    let router: RouterConfig = nexus_config::parse(&filter_config(efs[0], "router")).unwrap();
    assert_eq!(router.rules.len(), 2, "both namespaces' rules");
}

#[test]
fn a_gateway_refuses_routes_its_namespace_does_not_allow() {
    let mut settings = settings();
    settings.allowed_routes =
        nexus_controller::policy::AllowedRoutes::parse(&["edge=team-a".into()]).unwrap();
    let allowed = gateway_route("team-a", Some("edge"));
    let refused = gateway_route("team-b", Some("edge"));
    let secrets = std::collections::BTreeMap::new();
    let (objs, outcomes) = plan::render_all(&[&allowed, &refused], &secrets, &settings).unwrap();
    assert!(outcomes[&("team-a".to_string(), "r-team-a".to_string())].is_ok());
    let problems = outcomes[&("team-b".to_string(), "r-team-b".to_string())]
        .as_ref()
        .unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason.as_str(), "NotAllowedByGateway");
    assert_eq!(problems[0].path, "$.spec.target.namespace");
    assert!(
        problems[0].message.contains("\"team-b\"") && problems[0].message.contains("team-a"),
        "{}",
        problems[0].message
    );
    let status =
        nexus_controller::status::conditions(&[], Some(1), &Err(problems.clone()), None, "T");
    let accepted = status.iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "NotAllowedByGateway")
    );
    // The refused route contributes nothing: no VirtualService, no rule in the EnvoyFilter.
    assert!(!objs.iter().any(|o| o["metadata"]["namespace"] == "team-b"));
    let ef = objs.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
    let router: RouterConfig = nexus_config::parse(&filter_config(ef, "router")).unwrap();
    assert_eq!(router.rules.len(), 1);
}

/// With `--watch-namespaces`, a gateway namespace outside the route and gateway namespaces is
/// one the controller holds no Role in: the route says so instead of failing to apply.
#[test]
fn a_gateway_outside_the_controllers_namespaces_is_refused_with_the_reason() {
    use nexus_controller::policy::{AllowedRoutes, WatchScope};
    let scope = WatchScope::parse(&["team-a".into()], &["istio-system".into()]);
    let policy = AllowedRoutes::default().within(scope);
    let secrets = std::collections::BTreeMap::new();
    let inside = gateway_route("team-a", Some("istio-system"));
    let outside = gateway_route("team-a", Some("edge"));
    let outcomes = plan::outcomes(&[&inside], &secrets, &policy);
    assert!(outcomes.values().next().unwrap().is_ok());
    let outcomes = plan::outcomes(&[&outside], &secrets, &policy);
    let problems = outcomes.values().next().unwrap().as_ref().unwrap_err();
    assert_eq!(problems[0].reason.as_str(), "NamespaceNotWatched");
    assert_eq!(problems[0].path, "$.spec.target.namespace");
    assert!(
        problems[0].message.contains("\"edge\""),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_sidecar_target_cannot_reach_into_another_namespace() {
    let mut r = gateway_route("team-a", Some("team-b"));
    r.spec.target.kind = nexus_controller::crd::TargetKind::Sidecar;
    let secrets = std::collections::BTreeMap::new();
    let outcomes = plan::outcomes(&[&r], &secrets, &Default::default());
    let problems = outcomes.values().next().unwrap().as_ref().unwrap_err();
    assert_eq!(problems[0].path, "$.spec.target.namespace");
    assert_eq!(problems[0].reason.as_str(), "InvalidSpec");
}

#[test]
fn sessions_render_to_the_controllers_services_and_bad_ones_are_refused_with_paths() {
    let (yaml, problems) = render_file(&fixtures().join("sessions.yaml"));
    assert!(
        problems.contains("default/portal: accepted (2 rules)"),
        "{problems}"
    );
    for expected in [
        "default/no-sessions: InvalidSpec $.spec.auth.sessions.cookie: \"bad cookie\" is not a cookie name",
        "default/no-sessions: InvalidSpec $.spec.rules[0].auth: give exactly one of allow, jwt, apiKey, session, oauth2, anyOf",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    assert!(
        !yaml.contains("nexus.datapunk.io/route: no-sessions"),
        "{yaml}"
    );
    let inputs = input::read_files(&[fixtures().join("sessions.yaml")]).unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let objs = plan::render_all(&routes, &inputs.secrets, &settings())
        .unwrap()
        .0;
    let ef = objs.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
    let auth: AuthConfig = nexus_config::parse(&filter_config(ef, "auth")).unwrap();
    let s = auth.sessions.unwrap();
    assert_eq!(
        s.cluster,
        "outbound|8080||nexus-controller.nexus-system.svc.cluster.local"
    );
    assert_eq!(
        s.revocations_cluster.as_deref(),
        Some("outbound|8083||nexus-controller.nexus-system.svc.cluster.local")
    );
    assert_eq!(
        (s.cookie.as_str(), s.cache_ttl_s, s.sign_in_path.as_deref()),
        ("nexus-session", 10, Some("/_nexus/sign-in"))
    );
    assert_eq!(s.headers, ["x-nexus-email"]);
    let reqs: Vec<String> = auth
        .rules
        .iter()
        .map(|r| serde_json::to_string(&r.requirement).unwrap())
        .collect();
    assert!(reqs.contains(&r#"{"session":{}}"#.to_string()), "{reqs:?}");
    assert!(
        reqs.contains(&r#"{"any_of":[{"session":{"scopes":["lake"]}}]}"#.to_string()),
        "{reqs:?}"
    );
}

#[test]
fn opaque_token_providers_render_without_their_secrets() {
    let file = fixtures().join("oauth2.yaml");
    let (yaml, problems) = render_file(&file);
    assert!(
        problems.contains("default/api: accepted (2 rules)"),
        "{problems}"
    );
    for expected in [
        "default/broken: InvalidSecret $.spec.auth.providers[0].github.clientSecretRef: Secret default/oauth-clients has no key \"nope\"",
        "default/broken: InvalidSpec $.spec.rules[0].auth.oauth2.providers[0]: unknown opaque-token provider \"gitlab\" (known: github)",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    let inputs = input::read_files(&[file]).unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let (objs, outcomes) = plan::render_all(&routes, &inputs.secrets, &settings()).unwrap();
    // The secrets reach the sessions service (in the compiled route), never an object.
    let compiled = outcomes[&("default".to_string(), "api".to_string())]
        .as_ref()
        .unwrap();
    let github = &compiled.introspection["default.api.github"];
    assert_eq!(github.client_secret, "gh-app-secret-0c5e7f2a91d84b36");
    assert_eq!(github.cache_ttl.as_secs(), 120);
    assert_eq!(
        compiled.introspection["default.api.corp"].client_secret,
        "corp-introspection-secret-77ad91"
    );
    // Every replica's sessions service compiles the same providers from routes and Secrets
    // (a standby reconciles nothing); the invalid route gives none.
    let all: Vec<std::sync::Arc<NexusRoute>> = routes
        .iter()
        .map(|r| std::sync::Arc::new((*r).clone()))
        .collect();
    let followed = nexus_controller::sessions::providers_of(&all, &inputs.secrets);
    let keys: Vec<&str> = followed.keys().map(String::as_str).collect();
    assert_eq!(keys, ["default.api.corp", "default.api.github"]);
    assert_eq!(
        followed["default.api.github"].client_secret,
        "gh-app-secret-0c5e7f2a91d84b36"
    );
    let rendered = serde_json::to_string(&objs).unwrap() + &yaml;
    for secret in [
        "gh-app-secret-0c5e7f2a91d84b36",
        "corp-introspection-secret-77ad91",
    ] {
        assert!(!rendered.contains(secret), "{secret} rendered");
    }
    let ef = objs.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
    let auth: AuthConfig = nexus_config::parse(&filter_config(ef, "auth")).unwrap();
    let i = auth.introspection.unwrap();
    assert_eq!(
        i.cluster,
        "outbound|8080||nexus-controller.nexus-system.svc.cluster.local"
    );
    let names: Vec<&str> = i.providers.keys().map(String::as_str).collect();
    assert_eq!(names, ["default.api.corp", "default.api.github"]);
    let gh = &i.providers["default.api.github"];
    assert_eq!((gh.cache_ttl_s, gh.negative_cache_ttl_s), (120, 5));
    assert_eq!(gh.headers, ["x-nexus-github-login"]);
    let reqs: Vec<String> = auth
        .rules
        .iter()
        .map(|r| serde_json::to_string(&r.requirement).unwrap())
        .collect();
    assert!(
        reqs.contains(
            &r#"{"oauth2":{"providers":["default.api.github"],"scopes":["repo"]}}"#.to_string()
        ),
        "{reqs:?}"
    );
    assert!(
        reqs.contains(
            &r#"{"any_of":[{"oauth2":{"providers":["default.api.corp","default.api.github"]}}]}"#
                .to_string()
        ),
        "{reqs:?}"
    );
}

fn patch_names(ef: &Value) -> Vec<String> {
    ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| match p["applyTo"].as_str().unwrap() {
            "HTTP_FILTER" => p["patch"]["value"]["name"].as_str().unwrap().to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn guard_is_rendered_after_auth_only_where_a_rule_guards() {
    let objs = objects("guard.yaml");
    let ef = |app: &str| {
        objs.iter()
            .find(|o| {
                o["kind"] == "EnvoyFilter"
                    && (o["spec"]["workloadSelector"]["labels"]["app"] == app
                        || o["spec"]["workloadSelector"]["labels"]["istio"] == app)
            })
            .unwrap_or_else(|| panic!("no EnvoyFilter for {app}"))
    };
    // The gateway's 4 MiB scan cap raises its listeners' buffer limit; the guard runs after auth.
    let gateway = ef("ingressgateway");
    assert_eq!(
        patch_names(gateway),
        [
            "nexus.router",
            "nexus.auth",
            "nexus.guard",
            "nexus.ratelimit",
            "LISTENER"
        ]
    );
    let listener = gateway["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "LISTENER")
        .unwrap();
    assert_eq!(listener["match"]["context"], "GATEWAY");
    assert_eq!(listener["patch"]["operation"], "MERGE");
    assert_eq!(
        listener["patch"]["value"]["per_connection_buffer_limit_bytes"],
        4_194_304
    );
    // Only the rule with a guard block is guarded, keyed on the router's decision.
    let guard: nexus_config::guard::GuardConfig =
        nexus_config::parse(&filter_config(gateway, "guard")).unwrap();
    assert_eq!(guard.rules.len(), 1);
    assert_eq!(guard.rules[0].name, "payments.pay");
    assert_eq!(guard.rules[0].matcher.headers[0].name, "x-nexus-rule");
    assert_eq!(
        guard.rules[0].matcher.headers[0].exact.as_deref(),
        Some("payments.pay")
    );
    assert_eq!(
        guard.rules[0].policy.request.action,
        nexus_config::guard::PiiAction::Block
    );
    assert_eq!(guard.default, None, "unmatched requests are not looked at");
    // Envoy's default buffer limit already holds the default 1 MiB cap: no listener patch.
    assert_eq!(
        patch_names(ef("profiles")),
        [
            "nexus.router",
            "nexus.auth",
            "nexus.guard",
            "nexus.ratelimit"
        ]
    );
    // A rejected route renders nothing; the problems name the guard block's own keys.
    assert!(!objs
        .iter()
        .any(|o| o["spec"]["workloadSelector"]["labels"]["app"] == "bad"));
    let (_, problems) = render_file(&fixtures().join("cases/guard.yaml"));
    for expected in [
        "shop/bad-guard: InvalidSpec $.spec.rules[0].guard.max_scan_bytes: 99999999 is above 16777216",
        "shop/bad-guard: InvalidSpec $.spec.rules[0].guard.methods[0]: \"post\" is not an upper-case method",
        "shop/bad-guard: InvalidSpec $.spec.rules[0].guard.request.fields.allow[0]: \"id\" is in both allow and deny",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
}

#[test]
fn a_misspelt_guard_key_is_refused_with_its_name() {
    let text = r#"
apiVersion: nexus.datapunk.io/v1alpha1
kind: NexusRoute
metadata: { name: typo, namespace: shop }
spec:
  target: { kind: Sidecar, selector: { app: typo } }
  rules:
    - name: pay
      category: data_operations
      guard: { max_scan_byte: 1024 }
"#;
    let mut inputs = input::Inputs::default();
    input::read_str(Path::new("typo.yaml"), text, &mut inputs);
    assert!(inputs.routes.is_empty());
    let (file, error) = &inputs.errors[0];
    assert_eq!(file, Path::new("typo.yaml"));
    assert!(error.contains("max_scan_byte"), "{error}");
}

#[test]
fn sign_in_routes_nexus_paths_to_the_sessions_service_past_the_filters() {
    let file = root().join("tests/fixtures/cases/sign-in.yaml");
    let (yaml, problems) = render_file(&file);
    assert!(
        problems.contains("default/portal: accepted (1 rules)"),
        "{problems}"
    );
    for expected in [
        "default/no-sessions: InvalidSpec $.spec.auth.providers[0].signIn.redirectUri: \"https://other.example.com/callback\" must be an http(s) URI whose path is /_nexus/callback",
        "default/no-sessions: InvalidSpec $.spec.auth.sessions: a provider with signIn needs sessions (the cookie it sets)",
        "default/in-sidecar: InvalidSpec $.spec.target.kind: browser sign-in (a provider's signIn) needs kind Gateway",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    assert!(
        !yaml.contains("GOCSPX-google-secret-5d1f0e9a"),
        "the secret was rendered"
    );

    let inputs = input::read_files(&[file]).unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let (objs, outcomes) = plan::render_all(&routes, &inputs.secrets, &settings()).unwrap();
    // The sessions service gets the provider with its secret and the route's cookie.
    let portal = outcomes[&("default".to_string(), "portal".to_string())]
        .as_ref()
        .unwrap();
    let s = portal.sign_in.as_ref().unwrap();
    assert_eq!(s.issuer, "https://accounts.google.com");
    assert_eq!(s.client_secret, "GOCSPX-google-secret-5d1f0e9a");
    assert_eq!(
        (s.cookie.as_str(), s.client_id_claim.as_str()),
        ("nexus-session", "email")
    );
    assert_eq!(s.claims_to_headers["email"], "x-nexus-email");

    // The VirtualService sends /_nexus/ to the controller before any rule.
    let vs = objs.iter().find(|o| o["kind"] == "VirtualService").unwrap();
    let first = &vs["spec"]["http"][0];
    assert_eq!(first["name"], "portal.nexus-sign-in");
    assert_eq!(first["match"][0]["uri"]["prefix"], "/_nexus/");
    assert_eq!(
        first["route"][0]["destination"]["host"],
        "nexus-controller.nexus-system.svc.cluster.local"
    );
    // ... and the EnvoyFilter turns every Nexus filter off on that route.
    let ef = objs.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
    let patch = ef["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "HTTP_ROUTE")
        .unwrap();
    assert_eq!(
        patch["match"]["routeConfiguration"]["vhost"]["route"]["name"],
        "portal.nexus-sign-in"
    );
    let off = patch["patch"]["value"]["typed_per_filter_config"]
        .as_object()
        .unwrap();
    let mut names: Vec<&str> = off.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["nexus.auth", "nexus.ratelimit", "nexus.router"]);
    assert_eq!(off["nexus.auth"]["disabled"], true);
    // Browsers without a session go to the sign-in start; the email header is the session's.
    let auth: AuthConfig = nexus_config::parse(&filter_config(ef, "auth")).unwrap();
    let sessions = auth.sessions.unwrap();
    assert_eq!(sessions.sign_in_path.as_deref(), Some("/_nexus/sign-in"));
    assert_eq!(sessions.headers, ["x-nexus-email"]);
    // The `google` preset also makes it a JWT provider with Google's keys.
    let google = &auth.providers["portal.google"];
    assert_eq!(google.issuer, "https://accounts.google.com");
    let nexus_config::auth::Jwks::Remote(keys) = &google.jwks else {
        panic!("{:?}", google.jwks)
    };
    assert_eq!(keys.uri, "https://www.googleapis.com/oauth2/v3/certs");
    assert_eq!(keys.cluster, "outbound|443||www.googleapis.com");
}

/// With `--access-log-port`, a group's EnvoyFilter appends the controller's gRPC access log to
/// its HTTP connection managers (a `NETWORK_FILTER` MERGE Istio accepts), with the headers the
/// request metrics are labelled by.
#[test]
fn the_access_log_patch_streams_to_the_controller_and_passes_istio_validate() {
    let objects = gateway_full_with(Some(8084));
    let ef = objects
        .iter()
        .find(|o| o["kind"] == "EnvoyFilter")
        .expect("an EnvoyFilter");
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    let patch = patches
        .iter()
        .find(|p| p["applyTo"] == "NETWORK_FILTER")
        .unwrap_or_else(|| panic!("no access-log patch in {ef}"));
    assert_eq!(patch["patch"]["operation"], "MERGE");
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    let log = &patch["patch"]["value"]["typed_config"]["access_log"][0];
    assert_eq!(log["name"], "envoy.access_loggers.http_grpc");
    let config = &log["typed_config"];
    assert_eq!(
        config["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"],
        "outbound|8084||nexus-controller.nexus-system.svc.cluster.local"
    );
    assert_eq!(
        config["additional_request_headers_to_log"],
        serde_json::json!(["x-nexus-category", "x-nexus-upstream", "x-nexus-rule"])
    );
    assert_eq!(
        config["additional_response_headers_to_log"],
        serde_json::json!(["x-nexus-cache"])
    );
    // Without the port, nothing is patched.
    let plain = serde_json::to_string(&gateway_full_with(None)).unwrap();
    assert!(!plain.contains("http_grpc"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoyfilter.yaml");
    std::fs::write(&file, serde_yaml::to_string(ef).unwrap()).unwrap();
    let report = nexus_toolenv::istio::validate(&[file]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(report.contains("ok   EnvoyFilter/"), "{report}");
}

/// The objects of `cases/gateway-full.yaml`, rendered with `access_log_port`.
fn gateway_full_with(access_log_port: Option<u16>) -> Vec<Value> {
    let inputs = input::read_files(&[fixtures().join("cases/gateway-full.yaml")]).unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let settings = Settings {
        access_log_port,
        ..settings()
    };
    plan::render_all(&routes, &inputs.secrets, &settings)
        .unwrap()
        .0
}

/// gRPC primary, REST fallback in the mesh: the VirtualService keeps the rule's route, the
/// DestinationRules carry the retry budget, and the group's EnvoyFilter adds the transcoding
/// hop and the aggregate cluster and points the rule's route at it with a retry priority.
#[test]
fn grpc_failover_renders_a_hop_an_aggregate_cluster_and_a_route_merge() {
    let objs = objects("grpc-failover.yaml");
    let kind = |k: &'static str| objs.iter().filter(move |o| o["kind"] == k);
    let vs = kind("VirtualService").next().unwrap();
    let http = &vs["spec"]["http"][0];
    assert_eq!(http["name"], "lake.tables");
    assert_eq!(http["retries"]["perTryTimeout"], "2s");
    for dr in kind("DestinationRule") {
        assert_eq!(
            dr["spec"]["trafficPolicy"]["retryBudget"]["percent"], 25.0,
            "{dr}"
        );
    }
    let hosts: Vec<&str> = kind("DestinationRule")
        .map(|d| d["spec"]["host"].as_str().unwrap())
        .collect();
    assert!(
        hosts.contains(&"lake-rest.istio-system.svc.cluster.local"),
        "{hosts:?}"
    );
    let ef = kind("EnvoyFilter").next().unwrap();
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    let by = |apply: &'static str| patches.iter().filter(move |p| p["applyTo"] == apply);
    let hop = by("LISTENER")
        .find(|p| p["patch"]["value"]["name"] == "transcode.lake.tables")
        .unwrap();
    assert_eq!(hop["patch"]["operation"], "ADD");
    let hcm = &hop["patch"]["value"]["filter_chains"][0]["filters"][0]["typed_config"];
    let transcoder = &hcm["http_filters"][0]["typed_config"];
    assert_eq!(transcoder["services"][0], "datapunk.lake.v1.Lake");
    assert!(transcoder["proto_descriptor_bin"].as_str().unwrap().len() > 100);
    assert_eq!(
        hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
        "outbound|9090||lake-grpc.istio-system.svc.cluster.local"
    );
    let agg = by("CLUSTER")
        .find(|p| p["patch"]["value"]["name"] == "failover.lake.tables")
        .unwrap();
    assert_eq!(
        agg["patch"]["value"]["cluster_type"]["typed_config"]["clusters"],
        serde_json::json!([
            "transcode.lake.tables",
            "outbound|8080||lake-rest.istio-system.svc.cluster.local"
        ])
    );
    let route = by("HTTP_ROUTE")
        .find(|p| p["match"]["routeConfiguration"]["vhost"]["route"]["name"] == "lake.tables")
        .unwrap();
    let value = &route["patch"]["value"];
    assert_eq!(value["route"]["cluster"], "failover.lake.tables");
    assert_eq!(
        value["route"]["retry_policy"]["retry_priority"]["name"],
        "envoy.retry_priorities.previous_priorities"
    );
    let retry = &value["route"]["retry_policy"];
    assert!(retry["retry_on"]
        .as_str()
        .unwrap()
        .ends_with(",retriable-headers"));
    assert_eq!(retry["retriable_headers"][0]["name"], "x-nexus-grpc-status");
    assert_eq!(retry["retriable_headers"][0]["string_match"]["exact"], "14");
    assert_eq!(
        value["response_headers_to_remove"],
        serde_json::json!(["x-nexus-grpc-status", "x-nexus-grpc-unreachable"])
    );
    assert_eq!(
        value["response_headers_to_add"][0]["header"]["value"],
        "lake-rest"
    );
}

#[test]
fn grpc_transcoding_refuses_unknown_services_and_non_grpc_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures().join("cases/grpc-failover.yaml"))
        .unwrap()
        .replace("datapunk.lake.v1.Lake", "datapunk.lake.v1.Nope")
        .replace("protocol: GRPC", "protocol: HTTP");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, text).unwrap();
    let (_, problems) = render_file(&file);
    let all = problems;
    assert!(
        all.contains("$.spec.rules[0].grpcTranscoding.services[0]")
            && all.contains(
                "\"datapunk.lake.v1.Nope\" is not in the descriptor set built from proto/"
            ),
        "{all}"
    );
    assert!(
        all.contains("grpcTranscoding needs an upstream with protocol GRPC"),
        "{all}"
    );
}

/// `--audit-port`: auth, ratelimit and guard send their records to the controller's Service on
/// that port, with the configured `onUnavailable` (`refuse` only where the filter can keep that
/// promise: the guard); without it they carry no sink and only count.
#[test]
fn an_audit_port_gives_the_deciding_filters_the_controllers_audit_sink() {
    let inputs = input::read_files(&[fixtures().join("cases/guard.yaml")]).unwrap();
    let routes: Vec<&NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let render = |audit_port, on_unavailable: &str| {
        let settings = Settings {
            audit_port,
            audit_on_unavailable: serde_json::from_value(json!(on_unavailable)).unwrap(),
            ..settings()
        };
        let objects = plan::render_all(&routes, &inputs.secrets, &settings)
            .unwrap()
            .0;
        let ef = objects
            .into_iter()
            .find(|o| {
                o["kind"] == "EnvoyFilter"
                    && o["spec"]["workloadSelector"]["labels"]["istio"] == "ingressgateway"
            })
            .unwrap();
        ["auth", "ratelimit", "guard"].map(|f| {
            let cfg: Value = serde_json::from_slice(&filter_config(&ef, f)).unwrap();
            cfg["audit"].clone()
        })
    };
    let cluster = "outbound|8085||nexus-controller.nexus-system.svc.cluster.local";
    let modes = |sinks: [Value; 3]| {
        sinks.map(|s| {
            assert_eq!(s["cluster"], cluster);
            s["on_unavailable"].as_str().unwrap().to_string()
        })
    };
    assert_eq!(modes(render(Some(8085), "buffer")), ["buffer"; 3]);
    assert_eq!(modes(render(Some(8085), "drop")), ["drop"; 3]);
    assert_eq!(
        modes(render(Some(8085), "refuse")),
        ["buffer", "buffer", "refuse"]
    );
    assert_eq!(
        render(None, "refuse"),
        [Value::Null, Value::Null, Value::Null]
    );
}
