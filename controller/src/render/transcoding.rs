//! gRPC primary, REST fallback (a rule's `grpcTranscoding`), as Envoy configuration shared by
//! `nexus up` and the mesh's EnvoyFilter.
//!
//! Why this shape: REST clients send JSON; the gRPC upstream needs it transcoded, the REST
//! twin needs it as sent. Envoy's gRPC-JSON transcoder is a downstream filter, so it cannot
//! run on one try and not on the next of the same request. So the rule's route sends to an
//! **aggregate cluster** of two priorities: first an internal listener ("hop") that runs the
//! transcoder in front of the gRPC cluster, then the REST cluster. The route's retry policy
//! moves a failed try to the next priority (`previous_priorities`): a try the hop marks as
//! gRPC `UNAVAILABLE` or unreachable is retried, for every method, on the REST twin with the
//! original request; and the hop's outlier detection ejects it after consecutive 5xx, after
//! which the aggregate sends everything to REST without trying gRPC. A
//! `retry_priority` on the plain gRPC cluster alone could not fail over, and a route-level
//! fallback does not exist in Envoy. The reverse bridge (gRPC clients → REST) was not chosen:
//! the REST twin would receive protobuf, not the JSON REST clients and the twin speak.
//!
//! `x-nexus-served-by` names the upstream that answered: the hop sets the gRPC upstream's
//! name, the route adds the REST upstream's when no hop set one.

use base64::Engine;
use serde_json::{json, Value};

use crate::model::{CompiledRoute, CompiledRule, ResolvedUpstream};

/// The response header naming the upstream that answered a transcoded request.
pub const SERVED_BY: &str = "x-nexus-served-by";
/// What the hop tells the route about a failed try: the gRPC status it got (`14` is
/// `UNAVAILABLE`), or that the gRPC upstream could not be reached. Only these tries fail over
/// for every method: a 503 from the REST twin is retried by the rule's own policy (not for a
/// POST), and the route removes both headers before the client sees an answer.
const GRPC_STATUS: &str = "x-nexus-grpc-status";
const GRPC_UNREACHABLE: &str = "x-nexus-grpc-unreachable";

/// The internal listener (and its cluster) transcoding `rule`'s requests to gRPC.
pub fn hop_name(rule: &str) -> String {
    format!("transcode.{rule}")
}

/// The aggregate cluster of `rule`: the hop, then the REST twin.
pub fn failover_name(rule: &str) -> String {
    format!("failover.{rule}")
}

/// The cluster a transcoding rule's route sends to (none for other rules).
pub fn route_cluster(rule: &CompiledRule) -> Option<String> {
    let t = rule.transcoding.as_ref()?;
    Some(match t.failover {
        Some(_) => failover_name(&rule.name),
        None => hop_name(&rule.name),
    })
}

/// Envoy's gRPC-JSON transcoder for `services`, with the descriptor set built from `proto/`.
pub fn transcoder_filter(services: &[String]) -> Value {
    json!({
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor_bin": base64::engine::general_purpose::STANDARD
                .encode(nexus_proto::TRANSCODING_DESCRIPTOR_SET),
            "services": services,
            // A gRPC error becomes its HTTP status (UNAVAILABLE → 503) with a JSON body, which
            // is what the route's retry policy fails over on.
            "convert_grpc_status": true,
            "print_options": { "preserve_proto_field_names": true, "always_print_primitive_fields": true },
            // A path no binding maps must not reach the gRPC upstream as REST.
            "request_validation_options": { "reject_unknown_method": true },
        },
    })
}

/// The hop: an internal listener running the transcoder, routing everything to `grpc_cluster`
/// and naming `grpc_upstream` in [`SERVED_BY`].
pub fn hop_listener(rule: &CompiledRule, grpc_cluster: &str) -> Option<Value> {
    let t = rule.transcoding.as_ref()?;
    let name = hop_name(&rule.name);
    Some(json!({
        "name": name,
        "internal_listener": {},
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "name": name, "virtual_hosts": [{
                    "name": name, "domains": ["*"],
                    "routes": [{
                        "match": { "prefix": "/" },
                        "route": { "cluster": grpc_cluster, "timeout": format!("{}.{:03}s", rule.timeout_ms / 1000, rule.timeout_ms % 1000) },
                        "response_headers_to_add": [
                            served_by(&rule.upstream.token, "OVERWRITE_IF_EXISTS_OR_ADD"),
                            header(GRPC_STATUS, "%GRPC_STATUS(NUMBER)%", "OVERWRITE_IF_EXISTS_OR_ADD"),
                        ],
                    }],
                }]},
                // The hop's own 503s (connect failure, no healthy host, overflow).
                "local_reply_config": { "mappers": [{
                    "filter": { "response_flag_filter": { "flags": ["UF", "UH", "URX", "UO"] } },
                    "headers_to_add": [header(GRPC_UNREACHABLE, "1", "OVERWRITE_IF_EXISTS_OR_ADD")],
                }]},
                "http_filters": [
                    transcoder_filter(&t.services),
                    { "name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } },
                ],
            },
        }]}],
    }))
}

/// The cluster of the hop, with `outlier_detection` so a failing gRPC upstream is ejected
/// (and the aggregate sends straight to REST) after consecutive 5xx.
pub fn hop_cluster(rule: &str, outlier_detection: Value) -> Value {
    let name = hop_name(rule);
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "envoy_internal_address": { "server_listener_name": name } } },
        }]}]},
        "outlier_detection": outlier_detection,
    })
}

/// The aggregate cluster: the hop (priority 0), then `rest_cluster` (priority 1).
pub fn aggregate_cluster(rule: &str, rest_cluster: &str) -> Value {
    json!({
        "name": failover_name(rule),
        "connect_timeout": "1s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": [hop_name(rule), rest_cluster],
            },
        },
    })
}

/// What a failing-over rule's route adds: its retries move to the next priority; a try the
/// hop marks as gRPC `UNAVAILABLE` or unreachable is retried for every method (the gRPC
/// upstream did not take the request); a REST answer is named in [`SERVED_BY`].
pub fn failover_route(rule: &CompiledRule, route: &mut Value, retry: &mut Value) {
    let Some(rest) = rule.transcoding.as_ref().and_then(|t| t.failover.as_ref()) else {
        return;
    };
    let retry_on = retry["retry_on"].as_str().unwrap_or_default().to_string();
    retry["retry_on"] = json!(format!("{retry_on},retriable-headers"));
    retry["retriable_headers"] = json!([
        { "name": GRPC_STATUS, "string_match": { "exact": "14" } },
        { "name": GRPC_UNREACHABLE, "present_match": true },
    ]);
    if retry["num_retries"].as_u64().unwrap_or(0) == 0 {
        retry["num_retries"] = json!(1);
    }
    retry["retry_priority"] = json!({
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            "update_frequency": 1,
        },
    });
    route["response_headers_to_add"] = json!([served_by(&rest.token, "ADD_IF_ABSENT")]);
    route["response_headers_to_remove"] = json!([GRPC_STATUS, GRPC_UNREACHABLE]);
}

fn served_by(token: &str, action: &str) -> Value {
    header(SERVED_BY, token, action)
}

fn header(key: &str, value: &str, action: &str) -> Value {
    json!({ "header": { "key": key, "value": value }, "append_action": action })
}

/// Istio's cluster name of an upstream Service port.
fn istio_cluster(u: &ResolvedUpstream) -> String {
    format!("outbound|{}||{}", u.port, u.host)
}

/// The mesh's form: the VirtualService cannot name an aggregate cluster, a retry priority or
/// an internal listener, so the group's EnvoyFilter adds the hop listener and clusters and
/// merges the failover into the rule's route (Istio names it after the VirtualService's
/// HTTP route, the rule's name). Needs proxies whose bootstrap loads Envoy's internal listener
/// extension (`envoy.bootstrap.internal_listener`).
pub fn mesh_patches(context: &str, routes: &[&CompiledRoute]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in routes {
        for rule in r.rules.iter().filter(|x| x.transcoding.is_some()) {
            out.extend(rule_patches(context, r, rule));
        }
    }
    out
}

fn rule_patches(context: &str, r: &CompiledRoute, rule: &CompiledRule) -> Vec<Value> {
    let add = |apply_to: &str, value: Value| {
        json!({
            "applyTo": apply_to,
            "match": { "context": context },
            "patch": { "operation": "ADD", "value": value },
        })
    };
    let mut out = Vec::new();
    if let Some(l) = hop_listener(rule, &istio_cluster(&rule.upstream)) {
        out.push(add("LISTENER", l));
    }
    let outlier = super::envoy_outlier_detection(&r.outlier);
    out.push(add("CLUSTER", hop_cluster(&rule.name, outlier)));
    let failover = rule.transcoding.as_ref().and_then(|t| t.failover.as_ref());
    if let Some(rest) = failover {
        out.push(add(
            "CLUSTER",
            aggregate_cluster(&rule.name, &istio_cluster(rest)),
        ));
    }
    // Only what changes: the cluster, the retry policy's failover additions (whole, since a
    // MERGE replaces a scalar), and the REST answer's header.
    let mut retry = json!({
        "retry_on": rule.retry.any_method_retry_on(),
        "num_retries": rule.retry.max_retries,
    });
    let mut value = json!({});
    failover_route(rule, &mut value, &mut retry);
    value["route"] = json!({
        "cluster": route_cluster(rule),
        "retry_policy": retry,
    });
    out.push(json!({
        "applyTo": "HTTP_ROUTE",
        "match": {
            "context": context,
            "routeConfiguration": { "vhost": { "route": { "name": rule.name } } },
        },
        "patch": { "operation": "MERGE", "value": value },
    }));
    out
}
