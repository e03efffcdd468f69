//! The EnvoyFilter (and rate-limit ConfigMap) of one group of routes.

use nexus_config::contract;
use nexus_config::report::{ReportSink, VmConfiguration};
use serde_json::{json, Value};

use super::RATELIMIT_PORT;
use super::{filter_configurations, group_configs, meta, object, ServiceClusters, Settings};
use super::{
    CACHE_PORT, FIELD_MANAGER, HTTP_PORT, LABEL_GROUP, LABEL_GROUP_NAMESPACE, LABEL_MANAGED_BY,
};
use crate::crd::TargetKind;
use crate::model::{CompiledRoute, GroupKey};
use crate::objects::{Kind, Object};

/// Where a group's objects live: the EnvoyFilter beside the workloads it patches (Istio
/// applies a selector-scoped EnvoyFilter only in its own namespace), the rate-limit
/// ConfigMap in the controller's namespace (where the rate-limit service reads it, and the
/// only namespace where the controller needs to write ConfigMaps). Neither can carry owner
/// references to routes in other namespaces, so neither carries any: labels name the group,
/// and the routes' finalizer removes them.
pub fn group_object_names(
    group_namespace: &str,
    name: &str,
    settings: &Settings,
) -> [(Kind, String, String); 2] {
    [
        (
            Kind::EnvoyFilter,
            group_namespace.to_string(),
            name.to_string(),
        ),
        (
            Kind::ConfigMap,
            settings.controller_namespace.clone(),
            format!("nexus-ratelimit.{group_namespace}.{name}"),
        ),
    ]
}

/// EnvoyFilter + rate-limit ConfigMap of one group. `routes` must be the group's accepted
/// routes sorted oldest first (see [`crate::model::age_key`]).
pub fn render_group(
    group: &GroupKey,
    routes: &[&CompiledRoute],
    settings: &Settings,
) -> anyhow::Result<Vec<Object>> {
    let name = group.name();
    let cfg = group_configs(group, routes);
    let labels = json!({
        LABEL_MANAGED_BY: FIELD_MANAGER,
        LABEL_GROUP: name,
        LABEL_GROUP_NAMESPACE: group.namespace,
    });
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
        sessions: format!(
            "outbound|{HTTP_PORT}||nexus-controller.{}.svc.cluster.local",
            settings.controller_namespace
        ),
        audit: settings.audit_port.map(|port| {
            format!(
                "outbound|{port}||nexus-controller.{}.svc.cluster.local",
                settings.controller_namespace
            )
        }),
        audit_on_unavailable: settings.audit_on_unavailable,
    };
    let fail_open = routes.iter().any(|r| r.fail_open);
    let mut patches = Vec::new();
    let filters = filter_configurations(&cfg, &services)?;
    let names: Vec<String> = filters.iter().map(|(f, _)| format!("nexus.{f}")).collect();
    for r in routes.iter().filter(|r| r.sign_in.is_some()) {
        patches.push(sign_in_route_patch(group.kind, r, &names));
    }
    for (filter, configuration) in filters {
        patches.push(wasm_patch(
            group.kind,
            filter,
            &configuration,
            fail_open,
            settings,
        )?);
    }
    patches.extend(super::transcoding::mesh_patches(
        patch_context(group.kind),
        routes,
    ));
    if let Some(bytes) = cfg.buffer_limit_bytes() {
        patches.push(buffer_limit_patch(group.kind, bytes));
    }
    if let Some(port) = settings.access_log_port {
        patches.push(access_log_patch(group.kind, port, settings));
    }
    let [(_, ef_ns, ef_name), (_, cm_ns, cm_name)] =
        group_object_names(&group.namespace, &name, settings);
    let envoy_filter = object(
        Kind::EnvoyFilter,
        meta(&ef_name, &ef_ns, labels.clone(), Vec::new()),
        json!({ "spec": {
            "workloadSelector": { "labels": group.selector },
            "configPatches": patches,
        }}),
    );
    let config_map = object(
        Kind::ConfigMap,
        meta(&cm_name, &cm_ns, labels, Vec::new()),
        json!({ "data": { "config.yaml": serde_yaml::to_string(&cfg.ratelimit)? } }),
    );
    Ok(vec![envoy_filter, config_map])
}

/// Every filter reports what it runs to the leader's HTTP port (the chart's
/// `nexus-controller-leader` Service), naming the module Envoy checked against `sha`.
fn vm_configuration(sha: &str, settings: &Settings) -> String {
    let mut sink = ReportSink::to_cluster(format!(
        "outbound|{HTTP_PORT}||nexus-controller-leader.{}.svc.cluster.local",
        settings.controller_namespace
    ));
    sink.module_sha256 = Some(sha.to_string());
    sink.interval_ms = settings.report_interval_ms;
    let vm = VmConfiguration { report: Some(sink) };
    serde_json::to_string(&vm).unwrap_or_default()
}

fn patch_context(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Gateway => "GATEWAY",
        TargetKind::Sidecar => "SIDECAR_INBOUND",
    }
}

/// Turns the Nexus filters off on the route's sign-in endpoints (see
/// [`super::route::sign_in_route_name`]): they are the sessions service's, not an API.
fn sign_in_route_patch(kind: TargetKind, r: &CompiledRoute, filters: &[String]) -> Value {
    json!({
        "applyTo": "HTTP_ROUTE",
        "match": {
            "context": patch_context(kind),
            "routeConfiguration": { "vhost": { "route": {
                "name": super::route::sign_in_route_name(&r.name),
            }}},
        },
        "patch": {
            "operation": "MERGE",
            "value": { "typed_per_filter_config": super::filters_disabled(filters.iter().map(String::as_str)) },
        },
    })
}

/// Raises the workloads' listener buffer limit (Istio's `LISTENER` + `MERGE` patch) to what the
/// guard buffers: Envoy refuses a body a filter buffers beyond the listener's
/// `per_connection_buffer_limit_bytes` (1 MiB unless set).
fn buffer_limit_patch(kind: TargetKind, bytes: u32) -> Value {
    json!({
        "applyTo": "LISTENER",
        "match": { "context": patch_context(kind) },
        "patch": {
            "operation": "MERGE",
            "value": { "per_connection_buffer_limit_bytes": bytes },
        },
    })
}

/// Adds the controller's access log service to the workloads' HTTP connection managers
/// (Istio's `NETWORK_FILTER` + `MERGE`: `access_log` is a repeated field, so the entry is
/// appended to Istio's own access logs, which stay). Each request's entry carries the
/// `x-nexus-*` headers the metrics are labelled by ([`crate::access_log_service`]).
fn access_log_patch(kind: TargetKind, port: u16, settings: &Settings) -> Value {
    use crate::access_log_service::{LOG_NAME, REQUEST_HEADERS, RESPONSE_HEADERS};
    let service = format!(
        "nexus-controller.{}.svc.cluster.local",
        settings.controller_namespace
    );
    json!({
        "applyTo": "NETWORK_FILTER",
        "match": {
            "context": patch_context(kind),
            "listener": { "filterChain": { "filter": {
                "name": "envoy.filters.network.http_connection_manager",
            }}},
        },
        "patch": {
            "operation": "MERGE",
            "value": { "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "access_log": [{
                    "name": "envoy.access_loggers.http_grpc",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                        "common_config": {
                            "log_name": LOG_NAME,
                            "transport_api_version": "V3",
                            // The authority defaults to the cluster name, whose `|` an
                            // HTTP/2 server refuses as malformed: name the Service instead.
                            "grpc_service": { "envoy_grpc": {
                                "cluster_name": format!("outbound|{port}||{service}"),
                                "authority": format!("{service}:{port}"),
                            }},
                            // Entries are batched: sent at 16 KiB or every second.
                            "buffer_flush_interval": "1s",
                        },
                        "additional_request_headers_to_log": REQUEST_HEADERS,
                        "additional_response_headers_to_log": RESPONSE_HEADERS,
                    },
                }],
            }},
        },
    })
}

/// The EnvoyFilter patch that inserts one Nexus filter before Envoy's router, its code
/// fetched from the controller's module server by sha256.
fn wasm_patch(
    kind: TargetKind,
    filter: &str,
    configuration: &str,
    fail_open: bool,
    settings: &Settings,
) -> anyhow::Result<Value> {
    let context = patch_context(kind);
    let sha = settings
        .modules
        .get(filter)
        .ok_or_else(|| anyhow::anyhow!("no sha256 for the {filter} module"))?;
    let fname = format!("nexus.{filter}");
    let mut patch = json!({
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
                            "vm_id": nexus_config::vm_id(&fname, configuration),
                            "runtime": "envoy.wasm.runtime.v8",
                            "configuration": {
                                "@type": "type.googleapis.com/google.protobuf.StringValue",
                                "value": vm_configuration(sha, settings),
                            },
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
    });
    if contract::STOPS_AT_HEADERS.contains(&filter) {
        patch["patch"]["value"]["typed_config"]["config"]["allow_on_headers_stop_iteration"] =
            json!(true);
    }
    Ok(patch)
}
