//! Rate-limit configuration in envoyproxy/ratelimit's file format.
//!
//! The controller renders one [`RateLimitConfig`] per set of workloads into a ConfigMap (as YAML,
//! byte-compatible with what `envoyproxy/ratelimit` loads from its runtime directory); the Nexus
//! rate-limit service and the `nexus-ratelimit` filter read the same type (as JSON).
//!
//! ```yaml
//! domain: nexus.prod.gateway
//! descriptors:
//!   - key: route                      # the router rule name the request matched
//!     value: api.lake-query
//!     rate_limit: { unit: minute, requests_per_unit: 600 }   # the whole route
//!     descriptors:
//!       - key: client_id              # no value: one bucket per distinct client
//!         rate_limit: { unit: second, requests_per_unit: 10 }
//! ```

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Validate};

/// Descriptor key the filter sends with the matched router rule name as value.
pub const ROUTE_KEY: &str = "route";
/// Descriptor key the filter sends with the authenticated client id as value.
pub const CLIENT_KEY: &str = "client_id";
/// Prefix of descriptor keys carrying a request header's value (`header.x-tenant`).
pub const HEADER_KEY_PREFIX: &str = "header.";

/// One rate-limit domain: a tree of descriptors, each optionally limited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Namespaces the descriptors; the filter sends it with every request.
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<Descriptor>,
}

/// Matches one entry of the descriptor list a request carries (`key`, and `value` if given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub key: String,
    /// Without a value, every distinct value gets its own bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// No limit here means only nested descriptors limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Matches the next entry of the request's descriptor list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<Descriptor>,
    /// Count but never reject (envoyproxy/ratelimit `shadow_mode`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow_mode: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Never limited (envoyproxy/ratelimit `unlimited: true`); `requests_per_unit` is then 0.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unlimited: bool,
    pub unit: Unit,
    #[serde(default)]
    pub requests_per_unit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Validate for RateLimitConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.domain.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.domain"),
                "must not be empty",
            ));
        }
        check_level(&self.descriptors, &format!("{path}.descriptors"), errors);
    }
}

fn check_level(descriptors: &[Descriptor], at: &str, errors: &mut Vec<ConfigError>) {
    let mut seen = BTreeSet::new();
    for (i, d) in descriptors.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if d.key.is_empty() {
            errors.push(ConfigError::new(format!("{here}.key"), "must not be empty"));
        }
        if !seen.insert((d.key.as_str(), d.value.as_deref())) {
            errors.push(ConfigError::new(
                &here,
                format!(
                    "duplicate descriptor {}{}",
                    d.key,
                    d.value
                        .as_deref()
                        .map(|v| format!("={v}"))
                        .unwrap_or_default()
                ),
            ));
        }
        if let Some(limit) = &d.rate_limit {
            if limit.unlimited && limit.requests_per_unit != 0 {
                errors.push(ConfigError::new(
                    format!("{here}.rate_limit"),
                    "an unlimited rate_limit takes no requests_per_unit",
                ));
            }
            if !limit.unlimited && limit.requests_per_unit == 0 {
                errors.push(ConfigError::new(
                    format!("{here}.rate_limit.requests_per_unit"),
                    "must be at least 1 (use unlimited: true for no limit)",
                ));
            }
        }
        check_level(&d.descriptors, &format!("{here}.descriptors"), errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn envoyproxy_ratelimit_format_round_trips() {
        let json = br#"{"domain":"nexus.prod.gw","descriptors":[
            {"key":"route","value":"api.lake","rate_limit":{"unit":"minute","requests_per_unit":600},
             "descriptors":[{"key":"client_id","rate_limit":{"unit":"second","requests_per_unit":10}},
                            {"key":"header.x-tenant","value":"free","shadow_mode":true,
                             "rate_limit":{"unit":"hour","requests_per_unit":5}},
                            {"key":"client_id","value":"ops","rate_limit":{"unlimited":true,"unit":"second"}}]}]}"#;
        let cfg: RateLimitConfig = parse(json).unwrap();
        assert_eq!(cfg.descriptors[0].descriptors.len(), 3);
        let back = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(parse::<RateLimitConfig>(&back).unwrap(), cfg);
    }

    #[test]
    fn problems_carry_paths() {
        let err = parse::<RateLimitConfig>(
            br#"{"domain":"","descriptors":[{"key":"route","value":"a",
                "descriptors":[{"key":"client_id","rate_limit":{"unit":"second","requests_per_unit":0}}]},
                {"key":"route","value":"a"}]}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.domain",
                "$.descriptors[0].descriptors[0].rate_limit.requests_per_unit",
                "$.descriptors[1]"
            ]
        );
    }
}

/// The limit one request descriptor resolves to in a [`RateLimitConfig`] tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLimit<'a> {
    /// Domain and every entry, values included: unique per counter.
    pub key: String,
    pub limit: &'a RateLimit,
    pub shadow_mode: bool,
}

impl RateLimitConfig {
    /// Walks the tree as envoyproxy/ratelimit does: level by level, an exact `key`+`value` node
    /// before a `key`-only node (which gives each distinct value its own counter); the limit of
    /// the node the last entry reaches applies. A descriptor that leaves the tree, or ends on a
    /// node without a limit, is not limited. The rate-limit service and the filter both use this.
    pub fn resolve(&self, entries: &[(&str, &str)]) -> Option<ResolvedLimit<'_>> {
        let mut level: &[Descriptor] = &self.descriptors;
        let mut node: Option<&Descriptor> = None;
        let mut key = self.domain.clone();
        for (k, v) in entries {
            let found = level
                .iter()
                .find(|d| d.key == *k && d.value.as_deref() == Some(*v))
                .or_else(|| level.iter().find(|d| d.key == *k && d.value.is_none()))?;
            key.push('|');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
            level = &found.descriptors;
            node = Some(found);
        }
        let node = node?;
        Some(ResolvedLimit {
            key,
            limit: node.rate_limit.as_ref()?,
            shadow_mode: node.shadow_mode,
        })
    }
}

impl Unit {
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }
}
