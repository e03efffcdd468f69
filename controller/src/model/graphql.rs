//! A rule's `graphql` block: its owners resolved to upstream tokens for nexus-router, and the
//! upstreams it may send to (each needs a route).

use nexus_config::router_graphql::GraphqlRule;

use crate::crd::GraphqlSpec;

use super::problem::Ctx;
use super::upstream::{self, ResolvedUpstream};

pub(super) fn compile(
    cx: &mut Ctx,
    g: &GraphqlSpec,
    at: &str,
) -> (GraphqlRule, Vec<ResolvedUpstream>) {
    let defaults = GraphqlRule::default();
    let mut upstreams = Vec::new();
    let mut resolve = |cx: &mut Ctx, u, path: String| {
        let resolved = upstream::resolve(cx, u, &path);
        let token = resolved.token.clone();
        upstreams.push(resolved);
        token
    };
    let fields = g
        .fields
        .iter()
        .map(|(f, u)| (f.clone(), resolve(cx, u, format!("{at}.fields.{f}"))))
        .collect();
    let operations = g
        .operations
        .iter()
        .map(|(o, u)| (o.clone(), resolve(cx, u, format!("{at}.operations.{o}"))))
        .collect();
    let default_upstream = g
        .default_upstream
        .as_ref()
        .map(|u| resolve(cx, u, format!("{at}.defaultUpstream")));
    let rule = GraphqlRule {
        fields,
        operations,
        default_upstream,
        max_body_bytes: g.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_depth: g.max_depth.unwrap_or(defaults.max_depth),
        max_cost: g.max_cost.unwrap_or(defaults.max_cost),
        persisted_queries: g.persisted_queries.unwrap_or(defaults.persisted_queries),
    };
    let mut problems = Vec::new();
    rule.validate(at, &mut problems);
    for p in problems {
        cx.bad(p.path, p.message);
    }
    (rule, upstreams)
}
