//! Pure validation and compilation of NexusRoutes: no API server, no I/O.
//!
//! [`compile`] checks one route (with the Secrets it references) and resolves it into the
//! pieces every rendered object is made of; [`conflicts`] finds routes that claim a host and
//! path an older route already claims; [`group_key`] decides which routes share one
//! EnvoyFilter (same namespace, target kind and workload selector).
//!
//! One module per part of the spec, in the order [`compile`] reads them: `target` (selector,
//! hosts, gateways), `resilience` (default retries; circuit breaker and connection pool come
//! last), `categories`, `auth` and `requirements`, `rules` (with `matching`, `upstream`, `cache`,
//! `guard` and `ratelimit`). Every step reports into one `problem::Ctx`, so all of a route's problems
//! come back at once, in the order found. Around them: `compiled` (the output types),
//! `conflicts` (which of two routes keeps a path), `secrets` (Secret lookup and API-key
//! entries), `syntax` (durations, DNS labels).

mod auth;
mod cache;
mod categories;
mod compiled;
mod conflicts;
mod graphql;
mod guard;
mod matching;
mod problem;
mod ratelimit;
mod requirements;
mod resilience;
mod rules;
mod secrets;
mod sign_in;
mod syntax;
mod target;
mod upstream;

pub use auth::{auth_defaults, istio_cluster_for};
pub use cache::RuleCache;
pub use categories::SEED_PORT;
pub use compiled::{CompiledRoute, CompiledRule, RouteLimits, Transcoding};
pub use conflicts::{age_key, conflicts, created};
pub use problem::{Problem, Reason};
pub use resilience::{
    Outlier, DEFAULT_RETRY_ON, SEED_CONSECUTIVE_ERRORS, SEED_EJECTION_MS, SEED_RETRIES,
};
pub use secrets::{SecretData, SecretLookup};
pub use syntax::{duration_text, parse_duration_ms};
pub use target::{group_key, target_namespace, GroupKey};
pub use upstream::ResolvedUpstream;

use nexus_config::Validate;

use crate::crd::{FailurePolicy, NexusRoute};

use problem::Ctx;

/// Validates one route and resolves it. Every problem found is returned (not just the first),
/// each with the JSON path into the NexusRoute (`$.spec.rules[1].match.path.regex`).
pub fn compile(
    route: &NexusRoute,
    secrets: &dyn SecretLookup,
) -> Result<CompiledRoute, Vec<Problem>> {
    let ns = route.metadata.namespace.clone().unwrap_or_default();
    let name = route.metadata.name.clone().unwrap_or_default();
    let spec = &route.spec;
    let mut cx = Ctx::new(&ns);

    target::check(&mut cx, spec);
    let retry = resilience::default_retry(&mut cx, spec.retries.as_ref());
    let categories = categories::compile(&mut cx, &spec.categories);
    let mut auth = auth::compile(&mut cx, spec.auth.as_ref(), &name, secrets);
    if auth.sign_in.is_some() && spec.target.kind == crate::crd::TargetKind::Sidecar {
        // Browsers arrive through a gateway; a sidecar's inbound routes are not where the
        // sign-in endpoints could be routed.
        cx.bad(
            "$.spec.target.kind",
            "browser sign-in (a provider's signIn) needs kind Gateway",
        );
    }
    let inherited = rules::Inherited {
        route: &name,
        categories: &categories,
        retry,
        host: matching::host_header(&spec.hosts),
    };
    let (rules, rate_limits) = rules::compile(&mut cx, &spec.rules, &inherited, &mut auth);
    let default_upstream =
        categories::default_upstream(&mut cx, spec.default_category.as_ref(), &categories);
    let outlier = resilience::outlier(&mut cx, spec.circuit_breaker.as_ref());
    let pool = resilience::pool(&mut cx, spec.connection_pool.as_ref());
    let retry_budget = resilience::retry_budget(&mut cx, spec.retry_budget.as_ref());

    // Whatever the CRD-level checks missed, the filters' own validation catches.
    if cx.problems.is_empty() {
        let mut errors = Vec::new();
        auth.config.validate("$.spec.auth", &mut errors);
        cx.take_config_errors(errors);
    }
    if !cx.problems.is_empty() {
        return Err(cx.problems);
    }
    Ok(CompiledRoute {
        namespace: ns.clone(),
        name,
        uid: route.metadata.uid.clone().unwrap_or_default(),
        created: created(route),
        group: group_key(route),
        hosts: spec.hosts.clone(),
        gateways: spec.gateways.clone(),
        rules,
        default_upstream,
        introspection: auth.introspection,
        sign_in: auth.sign_in,
        auth: auth.config,
        rate_limits,
        outlier,
        pool,
        retry_budget,
        fail_open: spec.failure_policy == Some(FailurePolicy::FailOpen),
        rule_count: spec.rules.len() as u32,
    })
}
