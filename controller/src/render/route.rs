//! The Istio routing objects of one accepted route: its VirtualService and one
//! DestinationRule per upstream.

use std::collections::BTreeMap;

use nexus_config::contract;
use serde_json::{json, Value};

use super::{
    meta, object, owner_ref, Settings, FIELD_MANAGER, HTTP_PORT, LABEL_MANAGED_BY, LABEL_ROUTE,
};
use crate::crd::{Protocol, TargetKind};
use crate::model::{duration_text, CompiledRoute, ResolvedUpstream};
use crate::objects::{Kind, Object};

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
pub fn render_route(r: &CompiledRoute, settings: &Settings) -> Vec<Object> {
    let labels = json!({ LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_ROUTE: r.name });
    let owners = vec![owner_ref(r, true)];
    let mut http = Vec::new();
    if r.sign_in.is_some() {
        http.push(sign_in_route(r, settings));
    }
    for rule in &r.rules {
        let mut retries = json!({
            "attempts": rule.retry.max_retries,
            // Only what any method may be retried on: Envoy ORs it with the router filter's
            // per-request x-envoy-retry-on, which adds the rest for idempotent methods.
            "retryOn": rule.retry.any_method_retry_on(),
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
    let mut out = vec![object(
        Kind::VirtualService,
        meta(
            &format!("nexus-{}", r.name),
            &r.namespace,
            labels.clone(),
            owners.clone(),
        ),
        json!({ "spec": { "hosts": hosts, "gateways": gateways, "http": http } }),
    )];
    for (token, u) in &upstreams {
        let policy = traffic_policy(r, u);
        out.push(object(
            Kind::DestinationRule,
            meta(
                &format!("nexus-{}-{token}", r.name),
                &r.namespace,
                labels.clone(),
                owners.clone(),
            ),
            json!({ "spec": { "host": u.host, "trafficPolicy": policy } }),
        ));
    }
    out
}

/// The Envoy route name of a route's sign-in endpoints (Istio names an Envoy route after its
/// VirtualService HTTP route): the group's EnvoyFilter turns the Nexus filters off on it.
pub fn sign_in_route_name(route: &str) -> String {
    format!("{route}.nexus-sign-in")
}

/// Browsers' `/_nexus/*` (sign-in, callback, logout) to the controller's sessions service,
/// first, so the router filter's headers never decide it.
fn sign_in_route(r: &CompiledRoute, settings: &Settings) -> Value {
    json!({
        "name": sign_in_route_name(&r.name),
        "match": [{ "uri": { "prefix": nexus_sessions_service::http::BROWSER_PREFIX } }],
        "route": [{ "destination": {
            "host": format!("nexus-controller.{}.svc.cluster.local", settings.controller_namespace),
            "port": { "number": HTTP_PORT },
        }}],
        "timeout": "30s",
    })
}

/// Outlier detection and connection pool of one upstream's DestinationRule.
fn traffic_policy(r: &CompiledRoute, u: &ResolvedUpstream) -> Value {
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
    if let Some(v) = p.max_retries {
        h.insert("maxRetries".into(), json!(v));
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
    if let Some(b) = &r.retry_budget {
        let mut rb = json!({ "percent": b.percent });
        if let Some(m) = b.min_retry_concurrency {
            rb["minRetryConcurrency"] = json!(m);
        }
        policy["retryBudget"] = rb;
    }
    policy
}
