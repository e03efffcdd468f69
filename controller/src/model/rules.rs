//! The route's rules, in order. Each becomes a router rule with everything it inherits from its
//! category and the route resolved; a gRPC rule with `restFallback` becomes two (the second
//! named `<rule>.rest`). Each router rule gets its auth rule and rate-limit descriptor.

use std::collections::{BTreeMap, BTreeSet};

use nexus_config::ratelimit::Descriptor;
use nexus_config::router::{self, HeaderMatch, PathMatch, RequestMatch, RetryPolicy};

use crate::crd::{GrpcTranscoding, Protocol, RestFallback, Rule};

use super::auth::RouteAuth;
use super::categories::Category;
use super::compiled::{CompiledRule, RouteLimits, Transcoding};
use super::problem::Ctx;
use super::syntax::is_dns_label;
use super::upstream::{self, ResolvedUpstream, Tokens};
use super::{cache, graphql, guard, matching, ratelimit, resilience};

/// What rules inherit from the route.
pub(super) struct Inherited<'a> {
    /// The route's name: rule names are `<route>.<rule>`.
    pub(super) route: &'a str,
    pub(super) categories: &'a BTreeMap<String, Category>,
    pub(super) retry: (RetryPolicy, Option<u64>),
    /// The `:authority` match every rule adds (none for any host).
    pub(super) host: Option<HeaderMatch>,
}

/// Compiles every rule; the auth rules go into `auth.config`.
pub(super) fn compile(
    cx: &mut Ctx,
    rules: &[Rule],
    inherited: &Inherited,
    auth: &mut RouteAuth,
) -> (Vec<CompiledRule>, RouteLimits) {
    let mut compiled = Vec::new();
    let mut limits = RouteLimits::default();
    let mut names = BTreeSet::new();
    let mut tokens = Tokens::default();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("$.spec.rules[{i}]");
        check_name(cx, &r.name, &at, &mut names);
        let Some(these) = compile_rule(cx, r, &at, inherited) else {
            continue;
        };
        for (c, path) in these.iter().zip(["upstream", "restFallback.upstream"]) {
            tokens.claim(cx, &c.upstream, format!("{at}.{path}"));
            for u in &c.graphql_upstreams {
                tokens.claim(cx, u, format!("{at}.graphql"));
            }
        }
        if let Some(u) = these[0]
            .transcoding
            .as_ref()
            .and_then(|t| t.failover.as_ref())
        {
            tokens.claim(cx, u, format!("{at}.grpcTranscoding.restFailover"));
        }
        let requirement = auth.for_rule(cx, r.auth.as_ref(), &at);
        for c in &these {
            auth.config.rules.push(nexus_config::auth::AuthRule {
                name: c.name.clone(),
                matcher: c.router.matcher.clone(),
                requirement: requirement.clone(),
            });
        }
        // One descriptor per router rule: the REST fallback counts apart from its gRPC rule.
        if let Some(l) = ratelimit::descriptor(cx, &r.rate_limits, &at, &these[0].name) {
            for c in &these {
                limits.descriptors.push(Descriptor {
                    value: Some(c.name.clone()),
                    ..l.descriptor.clone()
                });
                if !l.failure_modes.is_empty() {
                    limits
                        .failure_modes
                        .insert(c.name.clone(), l.failure_modes.clone());
                }
                if !l.leases.is_empty() {
                    limits.leases.insert(c.name.clone(), l.leases.clone());
                }
            }
        }
        compiled.extend(these);
    }
    (compiled, limits)
}

/// Rule names are DNS labels, unique in the route.
fn check_name(cx: &mut Ctx, name: &str, at: &str, seen: &mut BTreeSet<String>) {
    if !is_dns_label(name) {
        cx.bad(format!("{at}.name"), format!("{name:?} is not [a-z0-9-]+"));
    } else if !seen.insert(name.to_string()) {
        cx.bad(
            format!("{at}.name"),
            format!("duplicate rule name {name:?}"),
        );
    }
}

/// The rule (and its REST fallback); `None` if its category or upstream is unknown.
fn compile_rule(
    cx: &mut Ctx,
    r: &Rule,
    at: &str,
    inherited: &Inherited,
) -> Option<Vec<CompiledRule>> {
    let matcher = matching::request_match(cx, &r.matcher, &format!("{at}.match"), &inherited.host);
    let Some(cat) = inherited.categories.get(&r.category) else {
        let known: Vec<&str> = inherited.categories.keys().map(String::as_str).collect();
        cx.bad(
            format!("{at}.category"),
            format!(
                "unknown category {:?} (known: {})",
                r.category,
                known.join(", ")
            ),
        );
        return None;
    };
    let upstream = match &r.upstream {
        Some(u) => Some(upstream::resolve(cx, u, &format!("{at}.upstream"))),
        None => cat.upstream.clone(),
    }?;
    let timeout_ms = cx
        .duration(&r.timeout, &format!("{at}.timeout"))
        .unwrap_or(cat.timeout_ms);
    let (retry, per_try) = match &r.retries {
        Some(rt) => resilience::retries(cx, rt, &format!("{at}.retries")),
        None => cat.retry.clone().unwrap_or_else(|| inherited.retry.clone()),
    };
    let name = format!("{}.{}", inherited.route, r.name);
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| cache::compile(cx, c, &format!("{at}.cache")));
    let guard = r
        .guard
        .as_ref()
        .and_then(|g| guard::compile(cx, g, &format!("{at}.guard")));
    let transcoding = r
        .grpc_transcoding
        .as_ref()
        .map(|t| transcoding(cx, t, &upstream, &format!("{at}.grpcTranscoding")));
    let graphql = r
        .graphql
        .as_ref()
        .map(|g| graphql::compile(cx, g, &format!("{at}.graphql")));
    let (graphql, graphql_upstreams) = graphql.map_or((None, Vec::new()), |(g, u)| (Some(g), u));
    let rule = CompiledRule {
        name: name.clone(),
        router: router::RouteRule {
            name,
            matcher,
            category: r.category.clone(),
            upstream: Some(upstream.token.clone()),
            timeout_ms: Some(timeout_ms),
            retry: Some(retry.clone()),
            graphql,
        },
        upstream,
        timeout_ms,
        retry,
        per_try_timeout_ms: per_try,
        cache,
        guard,
        transcoding,
        graphql_upstreams,
    };
    let fallback = r
        .rest_fallback
        .as_ref()
        .map(|fb| rest_fallback(cx, fb, &rule, &format!("{at}.restFallback")));
    Some(std::iter::once(rule).chain(fallback).collect())
}

/// The `.rest` twin of a gRPC rule: REST requests under `pathPrefix` go to the fallback
/// upstream, with the gRPC rule's methods, headers, timeout, retries, cache and guard.
fn rest_fallback(cx: &mut Ctx, fb: &RestFallback, grpc: &CompiledRule, at: &str) -> CompiledRule {
    if grpc.router.matcher.grpc_service.is_none() {
        cx.bad(at, "restFallback needs match.grpcService");
    }
    if !fb.path_prefix.starts_with('/') {
        cx.bad(format!("{at}.pathPrefix"), "must start with '/'");
    }
    let upstream = upstream::resolve(cx, &fb.upstream, &format!("{at}.upstream"));
    let mut matcher = RequestMatch {
        path: Some(PathMatch::Prefix(fb.path_prefix.clone())),
        methods: grpc.router.matcher.methods.clone(),
        headers: grpc.router.matcher.headers.clone(),
        grpc_service: None,
        grpc_method: None,
    };
    matcher.headers.dedup();
    let name = format!("{}.rest", grpc.name);
    CompiledRule {
        name: name.clone(),
        router: router::RouteRule {
            name,
            matcher,
            category: grpc.router.category.clone(),
            upstream: Some(upstream.token.clone()),
            timeout_ms: Some(grpc.timeout_ms),
            retry: Some(grpc.retry.clone()),
            graphql: None,
        },
        upstream,
        timeout_ms: grpc.timeout_ms,
        retry: grpc.retry.clone(),
        per_try_timeout_ms: grpc.per_try_timeout_ms,
        cache: grpc.cache.clone(),
        guard: grpc.guard.clone(),
        transcoding: None,
        graphql_upstreams: Vec::new(),
    }
}

/// The gRPC upstream must speak gRPC and the services must be in the descriptor set built
/// from `proto/` (what the transcoder is given).
fn transcoding(
    cx: &mut Ctx,
    t: &GrpcTranscoding,
    grpc: &ResolvedUpstream,
    at: &str,
) -> Transcoding {
    if grpc.protocol != Protocol::GRPC {
        cx.bad(at, "grpcTranscoding needs an upstream with protocol GRPC");
    }
    if t.services.is_empty() {
        cx.bad(format!("{at}.services"), "name at least one gRPC service");
    }
    let known = nexus_proto::transcodable_services();
    for (i, s) in t.services.iter().enumerate() {
        if !known.contains(s) {
            cx.bad(
                format!("{at}.services[{i}]"),
                format!(
                    "{s:?} is not in the descriptor set built from proto/ (known: {})",
                    known.join(", ")
                ),
            );
        }
    }
    let failover = t
        .rest_failover
        .as_ref()
        .map(|u| upstream::resolve(cx, u, &format!("{at}.restFailover")));
    Transcoding {
        services: t.services.clone(),
        failover,
    }
}
