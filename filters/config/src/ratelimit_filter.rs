//! `nexus-ratelimit`: which descriptors a request sends, where limits are enforced, and what
//! happens when the global service cannot answer.
//!
//! The limits themselves are the same [`RateLimitConfig`] tree the rate-limit service loads
//! (envoyproxy/ratelimit's format), so the filter derives its descriptors from it: for the
//! router rule a request matched (`x-nexus-rule`), it sends `[route=<rule>]` when that node has
//! a limit, and `[route=<rule>, <key>=<value>]` for each child key: `client_id` (the identity
//! nexus-auth set), `category`, `method`, `path`, or `header.<name>`.
//!
//! The route's node is found as the service finds nodes (exact rule name, then a wildcard value
//! such as `api.*`, then a key-only node). Local buckets (no service, or `local_fallback`) apply
//! the same semantics as the service: every unit (week, month and year included), `unlimited`
//! (no bucket), `shadow_mode` (drawn from, never denies), wildcard values and
//! `share_threshold` (one bucket per pattern), `replaces` and `quota_mode`. Per-descriptor
//! metrics (`detailed_metric`, `value_to_metric`) and `metadata` are the service's: the filter
//! accepts them and has nothing local to do with them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ratelimit::RateLimitConfig;
use crate::{ConfigError, Validate};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFilterConfig {
    pub limits: RateLimitConfig,
    /// The global rate-limit service (`envoy.service.ratelimit.v3`); without it every limit is
    /// enforced locally, per Envoy, in token buckets shared by its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<RateLimitService>,
    /// What to do when the service fails or times out.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Per router rule overrides of `failure_mode`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_mode_by_route: BTreeMap<String, FailureMode>,
    /// Per limit overrides of both: by router rule, then by the descriptor key the limit
    /// counts by (`route` for the rule's own limit, `client_id`, `header.x-tenant`, ...).
    /// When the service fails, each of a request's limits applies its own mode: one
    /// `fail_closed` limit refuses the request, the `local_fallback` ones are enforced
    /// locally, the `fail_open` ones are skipped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_mode_by_limit: FailureModesByLimit,
    /// Limits in leased mode, by router rule then descriptor key (as `failure_mode_by_limit`);
    /// every other limit is strict (each request asks the service). A leased limit's requests
    /// are admitted from quota this proxy leased from the service's window budget, with no
    /// call per request; see [`LeaseConfig`]. Needs `service`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leases_by_limit: LeasesByLimit,
    /// Add `RateLimit-Policy` / `RateLimit` headers (IETF httpapi draft) to allowed responses.
    #[serde(default = "crate::yes")]
    pub response_headers: bool,
    /// Remember, per descriptor, the service's OVER_LIMIT answers until that descriptor's window
    /// resets, and answer the client's next requests 429 locally (same body and headers, the
    /// remaining seconds in `Retry-After`) without a service call, counted in
    /// `nexus_ratelimit.over_limit_local`. On by default, as in envoyproxy/ratelimit's local
    /// cache: a client over its limit is refused until the window resets either way, so asking
    /// the service again only spends a network round trip per abusive request. The cache holds
    /// a fixed number of entries in shared data (see the filter's `OVER_LIMIT_CACHE_SLOTS`);
    /// shadow-mode and quota-mode limits are never cached. A `ratelimit.reset` clears its
    /// entries through `resets_cluster`; turn the cache off when something else resets
    /// counters early (an operator clearing Redis, say) and clients must see that at once.
    #[serde(default = "crate::yes")]
    pub over_limit_cache: bool,
    /// Envoy cluster (HTTP/2) of the cache-coherency service, whose `Subscribe` stream carries
    /// `ratelimit.reset`s to every proxy (invalidation keys made by
    /// [`crate::ratelimit::reset_key`]): each clears the over-limit entries it matches at once,
    /// so a reset client is allowed again without waiting for its window to end. While the
    /// stream is not live the over-limit cache is not used (every request asks the service),
    /// and it is emptied when the stream is back. None: resets reach the service's counters
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_cluster: Option<String>,
    /// Where each denial (429) is recorded (one audit record, with the rule and client);
    /// none: denials are only counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditSink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitService {
    /// Envoy cluster (HTTP/2) of the rate-limit service.
    pub cluster: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Router rule → descriptor key of one of its limits → how that limit is leased.
pub type LeasesByLimit = BTreeMap<String, BTreeMap<String, LeaseConfig>>;

/// How a leased limit takes quota from the service. Every Envoy holds at most one lease per
/// counter (its workers share it in shared data); grants come out of the same fixed-window
/// counter strict requests count on, and are void when that window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Size of one lease, in percent of the limit's `requests_per_unit` (at least one request):
    /// larger leases mean fewer service calls, smaller ones share a tight budget more evenly
    /// between proxies.
    #[serde(default = "default_share_percent")]
    pub share_percent: u32,
    /// Renew (in the background, one call per counter at a time) once the lease is down to this
    /// percent of a lease: the renewal must answer before the rest is spent, or the limit's
    /// failure mode decides for the requests in between.
    #[serde(default = "default_renew_below_percent")]
    pub renew_below_percent: u32,
    /// Quota unused for this long goes back to the service, for other proxies to lease.
    #[serde(default = "default_idle_return_ms")]
    pub idle_return_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            share_percent: default_share_percent(),
            renew_below_percent: default_renew_below_percent(),
            idle_return_ms: default_idle_return_ms(),
        }
    }
}

impl LeaseConfig {
    /// Requests one lease asks for, for a limit of `requests_per_unit`.
    pub fn lease_size(&self, requests_per_unit: u32) -> u64 {
        (u64::from(requests_per_unit) * u64::from(self.share_percent))
            .div_ceil(100)
            .max(1)
    }

    /// Renew once a lease holds this many requests or fewer.
    pub fn renew_at(&self, requests_per_unit: u32) -> u64 {
        self.lease_size(requests_per_unit) * u64::from(self.renew_below_percent) / 100
    }

    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !(1..=100).contains(&self.share_percent) {
            errors.push(ConfigError::new(
                format!("{path}.share_percent"),
                format!("{} is outside 1..=100", self.share_percent),
            ));
        }
        if self.renew_below_percent > 99 {
            errors.push(ConfigError::new(
                format!("{path}.renew_below_percent"),
                format!("{} is outside 0..=99", self.renew_below_percent),
            ));
        }
        if !(100..=3_600_000).contains(&self.idle_return_ms) {
            errors.push(ConfigError::new(
                format!("{path}.idle_return_ms"),
                format!("{} ms is outside 100..=3600000", self.idle_return_ms),
            ));
        }
    }
}

fn default_share_percent() -> u32 {
    10
}

fn default_renew_below_percent() -> u32 {
    50
}

fn default_idle_return_ms() -> u64 {
    2_000
}

/// Router rule → descriptor key of one of its limits → that limit's failure mode.
pub type FailureModesByLimit = BTreeMap<String, BTreeMap<String, FailureMode>>;

/// What a limit does while the service cannot answer; each is counted per request in
/// `nexus_ratelimit.degraded.<mode>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through.
    FailOpen,
    /// Answer 500 `rate_limit_unavailable`, as Envoy's own ratelimit filter does with
    /// `failure_mode_deny` (its default `status_on_error`), so dashboards and alerts
    /// built for it keep their meaning. A shadow-mode limit never refuses: there it acts as
    /// `local_fallback`.
    FailClosed,
    /// Enforce the same limits locally (per Envoy) until the service answers again.
    #[default]
    LocalFallback,
}

impl FailureMode {
    /// The name in configurations and in the `nexus_ratelimit.degraded.<mode>` counters.
    pub fn name(self) -> &'static str {
        match self {
            FailureMode::FailOpen => "fail_open",
            FailureMode::FailClosed => "fail_closed",
            FailureMode::LocalFallback => "local_fallback",
        }
    }
}

fn default_timeout_ms() -> u64 {
    50
}

/// Descriptor keys the filter knows how to fill, besides `header.<name>`.
pub const VALUE_SOURCES: [&str; 5] = ["route", "client_id", "category", "method", "path"];

impl Validate for RateLimitFilterConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        self.limits.validate(&format!("{path}.limits"), errors);
        if let Some(a) = &self.audit {
            a.validate(&format!("{path}.audit"), errors);
        }
        for (i, top) in self.limits.descriptors.iter().enumerate() {
            let at = format!("{path}.limits.descriptors[{i}]");
            if top.key != crate::ratelimit::ROUTE_KEY {
                errors.push(ConfigError::new(
                    format!("{at}.key"),
                    format!(
                        "top-level descriptors are keyed by route (the router rule), not {:?}",
                        top.key
                    ),
                ));
            }
            for (j, child) in top.descriptors.iter().enumerate() {
                if !fillable(&child.key) {
                    errors.push(ConfigError::new(
                        format!("{at}.descriptors[{j}].key"),
                        format!(
                            "the filter cannot fill descriptor key {:?} (known: {}, header.<name>)",
                            child.key,
                            VALUE_SOURCES.join(", ")
                        ),
                    ));
                }
                if !child.descriptors.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{at}.descriptors[{j}].descriptors"),
                        "the filter sends at most two levels: route, then one key",
                    ));
                }
            }
        }
        for (rule, modes) in &self.failure_mode_by_limit {
            for key in modes.keys().filter(|k| !fillable(k)) {
                errors.push(ConfigError::new(
                    format!("{path}.failure_mode_by_limit.{rule}.{key}"),
                    format!(
                        "no limit counts by {key:?} (known: {}, header.<name>)",
                        VALUE_SOURCES.join(", ")
                    ),
                ));
            }
        }
        for (rule, leases) in &self.leases_by_limit {
            for (key, lease) in leases {
                let at = format!("{path}.leases_by_limit.{rule}.{key}");
                if !fillable(key) {
                    errors.push(ConfigError::new(
                        at.clone(),
                        format!(
                            "no limit counts by {key:?} (known: {}, header.<name>)",
                            VALUE_SOURCES.join(", ")
                        ),
                    ));
                }
                if self.service.is_none() {
                    errors.push(ConfigError::new(
                        at.clone(),
                        "a leased limit leases from the service: configure service",
                    ));
                }
                lease.validate(&at, errors);
            }
        }
        if self.resets_cluster.as_deref() == Some("") {
            errors.push(ConfigError::new(
                format!("{path}.resets_cluster"),
                "must not be empty",
            ));
        }
        if let Some(service) = &self.service {
            if service.cluster.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.service.cluster"),
                    "must not be empty",
                ));
            }
            if service.timeout_ms == 0 || service.timeout_ms > 10_000 {
                errors.push(ConfigError::new(
                    format!("{path}.service.timeout_ms"),
                    format!("{} ms is outside 1..=10000", service.timeout_ms),
                ));
            }
        }
    }
}

/// Whether the filter can fill a descriptor key from a request.
fn fillable(key: &str) -> bool {
    VALUE_SOURCES.contains(&key)
        || key
            .strip_prefix(crate::ratelimit::HEADER_KEY_PREFIX)
            .is_some_and(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn minimal_config_enforces_locally_with_fallback_default() {
        let cfg: RateLimitFilterConfig = parse(
            br#"{"limits": {"domain": "nexus", "descriptors": [{"key": "route", "value": "lake",
                 "descriptors": [{"key": "client_id", "rate_limit": {"unit": "second", "requests_per_unit": 5}}]}]}}"#,
        )
        .unwrap();
        assert_eq!(cfg.service, None);
        assert_eq!(cfg.failure_mode, FailureMode::LocalFallback);
        assert!(cfg.response_headers);
        assert!(cfg.over_limit_cache);
    }

    #[test]
    fn unknown_sources_and_deep_trees_are_rejected_with_paths() {
        let err = parse::<RateLimitFilterConfig>(
            br#"{"limits": {"domain": "nexus", "descriptors": [
                  {"key": "client_id"},
                  {"key": "route", "value": "lake", "descriptors": [
                     {"key": "user_agent"},
                     {"key": "client_id", "descriptors": [{"key": "path"}]}]}]},
                 "service": {"cluster": "", "timeout_ms": 0},
                 "failure_mode_by_limit": {"lake": {"client_id": "fail_open", "user_agent": "fail_closed"}}}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.limits.descriptors[0].key",
                "$.limits.descriptors[1].descriptors[0].key",
                "$.limits.descriptors[1].descriptors[1].descriptors",
                "$.failure_mode_by_limit.lake.user_agent",
                "$.service.cluster",
                "$.service.timeout_ms",
            ]
        );
    }

    #[test]
    fn leases_need_the_service_known_keys_and_sane_settings() {
        let err = parse::<RateLimitFilterConfig>(
            br#"{"limits": {"domain": "nexus", "descriptors": [{"key": "route", "value": "lake",
                 "rate_limit": {"unit": "minute", "requests_per_unit": 100}}]},
                 "leases_by_limit": {"lake": {"route": {"share_percent": 0, "renew_below_percent": 100,
                   "idle_return_ms": 5}, "user_agent": {}}}}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.leases_by_limit.lake.route",
                "$.leases_by_limit.lake.route.share_percent",
                "$.leases_by_limit.lake.route.renew_below_percent",
                "$.leases_by_limit.lake.route.idle_return_ms",
                "$.leases_by_limit.lake.user_agent",
                "$.leases_by_limit.lake.user_agent",
            ]
        );
        let lease = LeaseConfig::default();
        assert_eq!((lease.lease_size(1000), lease.renew_at(1000)), (100, 50));
        assert_eq!(lease.lease_size(3), 1, "at least one request per lease");
    }
}
