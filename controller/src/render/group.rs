//! The EnvoyFilter (and rate-limit ConfigMap) of one group of routes.

use serde_json::{json, Value};

use super::{
    filter_configurations, group_configs, meta, object, owner_ref, ServiceClusters, Settings,
};
use super::{CACHE_PORT, FIELD_MANAGER, LABEL_GROUP, LABEL_MANAGED_BY, RATELIMIT_PORT};
use crate::crd::TargetKind;
use crate::model::{CompiledRoute, GroupKey};
use crate::objects::{Kind, Object};

/// EnvoyFilter + rate-limit ConfigMap of one group. `routes` must be the group's accepted
/// routes sorted oldest first (see [`crate::model::age_key`]).
pub fn render_group(
    group: &GroupKey,
    routes: &[&CompiledRoute],
    settings: &Settings,
) -> anyhow::Result<Vec<Object>> {
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
    let envoy_filter = object(
        Kind::EnvoyFilter,
        meta(&name, &group.namespace, labels.clone(), owners.clone()),
        json!({ "spec": {
            "workloadSelector": { "labels": group.selector },
            "configPatches": patches,
        }}),
    );
    let config_map = object(
        Kind::ConfigMap,
        meta(
            &format!("{name}-ratelimit"),
            &group.namespace,
            labels,
            owners,
        ),
        json!({ "data": { "config.yaml": serde_yaml::to_string(&cfg.ratelimit)? } }),
    );
    Ok(vec![envoy_filter, config_map])
}

/// Kind and name of each object [`render_group`] writes for the group named `name`.
pub fn group_object_names(name: &str) -> [(Kind, String); 2] {
    [
        (Kind::EnvoyFilter, name.to_string()),
        (Kind::ConfigMap, format!("{name}-ratelimit")),
    ]
}
