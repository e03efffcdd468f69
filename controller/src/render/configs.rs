//! A group's routes merged into each filter's configuration.

use nexus_config::audit::{AuditSink, OnUnavailable};
use nexus_config::auth::AuthConfig;
use nexus_config::cache::{CacheConfig, CacheRule, CacheService};
use nexus_config::contract;
use nexus_config::guard::{GuardConfig, GuardRule};
use nexus_config::ratelimit::RateLimitConfig;
use nexus_config::ratelimit_filter::{
    FailureMode, FailureModesByLimit, RateLimitFilterConfig, RateLimitService,
};
use nexus_config::router::{HeaderMatch, NoMatch, RequestMatch, RouterConfig};

use crate::model::{CompiledRoute, GroupKey};

/// The merged filter configurations of a group (routes sorted oldest first).
pub struct GroupConfigs {
    pub router: RouterConfig,
    pub auth: AuthConfig,
    pub ratelimit: RateLimitConfig,
    /// The failure modes rate limits set (`failureMode`), by router rule then descriptor key.
    pub ratelimit_failure_modes: FailureModesByLimit,
    /// The limits in leased mode (`mode: Leased`), by router rule then descriptor key.
    pub ratelimit_leases: nexus_config::ratelimit_filter::LeasesByLimit,
    /// Rules only for router rules that cache; the service is filled in per target.
    pub cache: CacheConfig,
    /// Rules only for router rules with a `guard` block.
    pub guard: GuardConfig,
}

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB), which also bounds what a
/// filter may buffer of one HTTP/1 request or response body.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

impl GroupConfigs {
    /// The listener buffer limit the guard needs, if it needs more than Envoy's default: it
    /// buffers a body it may redact or block up to `max_scan_bytes`, and Envoy refuses a body
    /// a filter buffers beyond the listener's limit (413 for requests, 500 or a reset for
    /// responses) instead of letting the guard pass it on unscanned as documented.
    pub fn buffer_limit_bytes(&self) -> Option<u32> {
        let scan = self
            .guard
            .rules
            .iter()
            .map(|r| r.policy.max_scan_bytes)
            .max()?;
        (scan > ENVOY_DEFAULT_BUFFER_LIMIT).then_some(scan)
    }
}

/// A filter rule keyed on the router's decision (`x-nexus-rule`), so routing and the later
/// filters never disagree about which rule a request matched.
fn rule_match(rule: &str) -> RequestMatch {
    RequestMatch {
        headers: vec![HeaderMatch {
            name: contract::RULE.to_string(),
            present: None,
            exact: Some(rule.to_string()),
            prefix: None,
            regex: None,
        }],
        ..Default::default()
    }
}

/// One filter, one session cookie: the oldest route's settings hold, and the headers sessions
/// may set are every route's.
fn merge_sessions(auth: &mut AuthConfig, route: Option<&nexus_config::auth::Sessions>) {
    let Some(route) = route else {
        return;
    };
    let merged = auth.sessions.get_or_insert_with(|| route.clone());
    for h in &route.headers {
        if !merged.headers.contains(h) {
            merged.headers.push(h.clone());
        }
    }
}

/// One filter, one introspection section: every route's providers (their names are unique
/// per namespace and route).
fn merge_introspection(auth: &mut AuthConfig, route: Option<&nexus_config::auth::Introspection>) {
    let Some(route) = route else {
        return;
    };
    let merged = auth.introspection.get_or_insert_with(|| route.clone());
    for (k, v) in &route.providers {
        merged
            .providers
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
}

pub fn group_configs(group: &GroupKey, routes: &[&CompiledRoute]) -> GroupConfigs {
    let mut router = RouterConfig::default();
    let mut auth = crate::model::auth_defaults();
    let mut ratelimit = RateLimitConfig {
        domain: format!("nexus.{}.{}", group.namespace, group.name()),
        descriptors: Vec::new(),
    };
    let mut ratelimit_failure_modes = FailureModesByLimit::new();
    let mut ratelimit_leases = nexus_config::ratelimit_filter::LeasesByLimit::new();
    let mut cache = CacheConfig::default();
    let mut guard = GuardConfig::default();
    for r in routes {
        for rule in &r.rules {
            router
                .categories
                .entry(rule.router.category.clone())
                .or_insert_with(|| nexus_config::router::Category {
                    upstream: rule.upstream.token.clone(),
                    timeout_ms: Some(rule.timeout_ms),
                    retry: None,
                });
            router.rules.push(rule.router.clone());
        }
        if let (Some((cat, up, t)), NoMatch::Reject) = (&r.default_upstream, &router.on_no_match) {
            router.categories.entry(cat.clone()).or_insert_with(|| {
                nexus_config::router::Category {
                    upstream: up.token.clone(),
                    timeout_ms: Some(*t),
                    retry: None,
                }
            });
            router.on_no_match = NoMatch::Default {
                category: cat.clone(),
            };
        }
        auth.providers
            .extend(r.auth.providers.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(keys) = &r.auth.api_keys {
            let merged = auth
                .api_keys
                .get_or_insert_with(|| nexus_config::auth::ApiKeys {
                    header: keys.header.clone(),
                    keys: Vec::new(),
                });
            for k in &keys.keys {
                if !merged.keys.iter().any(|m| m.sha256 == k.sha256) {
                    merged.keys.push(k.clone());
                }
            }
        }
        auth.rules.extend(r.auth.rules.iter().cloned());
        merge_sessions(&mut auth, r.auth.sessions.as_ref());
        merge_introspection(&mut auth, r.auth.introspection.as_ref());
        ratelimit
            .descriptors
            .extend(r.rate_limits.descriptors.iter().cloned());
        ratelimit_failure_modes.extend(r.rate_limits.failure_modes.clone());
        ratelimit_leases.extend(r.rate_limits.leases.clone());
        for rule in &r.rules {
            if let Some(c) = &rule.cache {
                cache.rules.push(CacheRule {
                    name: rule.name.clone(),
                    matcher: rule_match(&rule.name),
                    policy: c.policy.clone(),
                });
            }
            if let Some(g) = &rule.guard {
                guard.rules.push(GuardRule {
                    name: rule.name.clone(),
                    matcher: rule_match(&rule.name),
                    policy: g.clone(),
                });
            }
        }
    }
    if let Some(keys) = &mut auth.api_keys {
        keys.keys.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    }
    GroupConfigs {
        router,
        auth,
        ratelimit,
        ratelimit_failure_modes,
        ratelimit_leases,
        cache,
        guard,
    }
}

/// Envoy clusters through which the filters reach the Nexus services.
pub struct ServiceClusters {
    /// HTTP/2 cluster of the rate-limit service.
    pub ratelimit: String,
    /// HTTP/2 cluster of the cache-coherency service.
    pub cache: String,
    /// The cache filter's writer id (its puts' tie-breaker); `None`: one per worker.
    pub cache_writer: Option<String>,
    /// HTTP/1 cluster of the sessions service (the controller's HTTP port).
    pub sessions: String,
    /// Cluster of the audit service auth, ratelimit and guard send their decisions to;
    /// `None`: they only count them (a cluster without `--audit-port`).
    pub audit: Option<String>,
    /// What proxies do while the audit service does not take records. `refuse` applies to
    /// nexus-guard; auth and ratelimit buffer instead (auth cannot refuse yet, and ratelimit
    /// records only refusals).
    pub audit_on_unavailable: OnUnavailable,
}

impl ServiceClusters {
    /// The audit sink of a filter that can (`refuses`) or cannot fail closed.
    fn audit_sink(&self, refuses: bool) -> Option<AuditSink> {
        let on_unavailable = match self.audit_on_unavailable {
            OnUnavailable::Refuse if !refuses => OnUnavailable::Buffer,
            other => other,
        };
        self.audit.clone().map(|cluster| AuditSink {
            on_unavailable,
            ..AuditSink::new(cluster)
        })
    }
}

/// Each filter (in [`FILTERS`] order) with its plugin configuration (JSON text): what both
/// the EnvoyFilter and the standalone Envoy configuration load. The guard and cache filters
/// are left out when no rule has a `guard` or `cache` block: they would cost every request
/// for nothing.
pub fn filter_configurations(
    cfg: &GroupConfigs,
    services: &ServiceClusters,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let ratelimit = RateLimitFilterConfig {
        limits: cfg.ratelimit.clone(),
        service: Some(RateLimitService {
            cluster: services.ratelimit.clone(),
            timeout_ms: 50,
        }),
        failure_mode: FailureMode::LocalFallback,
        failure_mode_by_route: Default::default(),
        failure_mode_by_limit: cfg.ratelimit_failure_modes.clone(),
        leases_by_limit: cfg.ratelimit_leases.clone(),
        response_headers: true,
        over_limit_cache: true,
        // `ratelimit.reset`s ride the cache service's event stream, as session revocations
        // do; a filter without limits remembers nothing to clear.
        resets_cluster: (!cfg.ratelimit.descriptors.is_empty()).then(|| services.cache.clone()),
        audit: services.audit_sink(false),
    };
    let mut auth = AuthConfig {
        audit: services.audit_sink(false),
        ..cfg.auth.clone()
    };
    if let Some(s) = &mut auth.sessions {
        s.cluster = services.sessions.clone();
        // Revocations ride the cache service's event stream.
        s.revocations_cluster = Some(services.cache.clone());
    }
    if let Some(i) = &mut auth.introspection {
        i.cluster = services.sessions.clone();
    }
    let mut out = vec![
        ("router", serde_json::to_string(&cfg.router)?),
        ("auth", serde_json::to_string(&auth)?),
    ];
    if !cfg.guard.rules.is_empty() {
        let guard = GuardConfig {
            audit: services.audit_sink(true),
            ..cfg.guard.clone()
        };
        out.push(("guard", serde_json::to_string(&guard)?));
    }
    out.push(("ratelimit", serde_json::to_string(&ratelimit)?));
    if !cfg.cache.rules.is_empty() {
        let cache = CacheConfig {
            service: Some(CacheService::new(services.cache.clone())),
            writer: services.cache_writer.clone(),
            ..cfg.cache.clone()
        };
        out.push(("cache", serde_json::to_string(&cache)?));
    }
    Ok(out)
}
