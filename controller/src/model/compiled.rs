//! What [`compile`](super::compile) produces: a route with nothing left to inherit or look up,
//! from which every rendered object is made.

use nexus_config::auth::AuthConfig;
use nexus_config::ratelimit::Descriptor;
use nexus_config::ratelimit_filter::FailureModesByLimit;
use nexus_config::router::{self, RetryPolicy};

use crate::crd::{ConnectionPool, RetryBudget};

use super::cache::RuleCache;
use super::resilience::Outlier;
use super::target::GroupKey;
use super::upstream::ResolvedUpstream;

/// One router rule of a compiled route, fully resolved (no category inheritance left).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    /// `<route>.<rule>` (`.rest` appended for a REST fallback): unique in a group.
    pub name: String,
    pub router: router::RouteRule,
    pub upstream: ResolvedUpstream,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    pub per_try_timeout_ms: Option<u64>,
    /// The rule's caching, if any (also for its REST fallback).
    pub cache: Option<RuleCache>,
    /// The rule's guard policy, if any (also for its REST fallback).
    pub guard: Option<nexus_config::guard::GuardPolicy>,
    /// REST to the gRPC `upstream` through the transcoder, and the REST twin to fail over to.
    pub transcoding: Option<Transcoding>,
    /// Upstreams the rule's GraphQL block may route to besides its own.
    pub graphql_upstreams: Vec<ResolvedUpstream>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transcoding {
    /// gRPC services whose `google.api.http` bindings are served.
    pub services: Vec<String>,
    pub failover: Option<ResolvedUpstream>,
}

/// A route's rate limits: one descriptor per router rule that limits, and the failure modes
/// its limits set (by router rule, then descriptor key).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteLimits {
    pub descriptors: Vec<Descriptor>,
    pub failure_modes: FailureModesByLimit,
    /// The limits in leased mode (by router rule, then descriptor key).
    pub leases: nexus_config::ratelimit_filter::LeasesByLimit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRoute {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created: String,
    pub group: GroupKey,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub rules: Vec<CompiledRule>,
    /// Category name, upstream and timeout (ms) of `defaultCategory`, if set.
    pub default_upstream: Option<(String, ResolvedUpstream, u64)>,
    pub auth: AuthConfig,
    /// What the sessions service needs to check the route's opaque tokens (client secrets
    /// included: never rendered), by the provider's name in `auth.introspection`.
    pub introspection:
        std::collections::BTreeMap<String, nexus_sessions_service::introspect::ProviderSettings>,
    /// The provider browsers sign in with (client secret included: never rendered); the
    /// gateway then routes `/_nexus/*` to the sessions service.
    pub sign_in: Option<nexus_sessions_service::signin::OidcSettings>,
    pub rate_limits: RouteLimits,
    pub outlier: Outlier,
    pub pool: ConnectionPool,
    pub retry_budget: Option<RetryBudget>,
    pub fail_open: bool,
    /// Number of CRD rules.
    pub rule_count: u32,
}

impl CompiledRoute {
    /// Every upstream the route sends to: each rule's (and its REST failover), then the
    /// default category's.
    pub fn upstreams(&self) -> impl Iterator<Item = &ResolvedUpstream> {
        self.rules
            .iter()
            .flat_map(|rule| {
                let failover = rule.transcoding.as_ref().and_then(|t| t.failover.as_ref());
                std::iter::once(&rule.upstream)
                    .chain(failover)
                    .chain(&rule.graphql_upstreams)
            })
            .chain(self.default_upstream.iter().map(|(_, u, _)| u))
    }
}
