//! `nexus-cache`: ordered rules choose a caching policy per request; a two-level cache (L1 in
//! the Envoy's shared data, L2 in the cache-coherency service `nexus.cache.v1.Cache`) serves
//! what the policy allows, and the service's event stream keeps every L1 coherent.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::router::RequestMatch;
use crate::{ConfigError, Validate};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Evaluated in order; the first rule that matches decides. A request no rule matches is
    /// not looked at (no `x-nexus-cache` header either).
    #[serde(default)]
    pub rules: Vec<CacheRule>,
    /// Entries kept in this Envoy's L1 (shared by its workers); the oldest stored is evicted.
    #[serde(default = "default_l1_max_entries")]
    pub l1_max_entries: u32,
    /// The cache-coherency service. Without it the cache is L1 only (per Envoy, no events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<CacheService>,
    /// Identifies this proxy in `Put` versions (tie breaks) and lets it ignore its own
    /// `Update` events. Default: generated per VM at start. Render the pod name here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            l1_max_entries: default_l1_max_entries(),
            service: None,
            writer: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Shown in logs.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RequestMatch,
    pub policy: CachePolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// How long a stored response is fresh, in seconds (upper bound: `max-age` / `s-maxage`
    /// only lower it).
    pub ttl: u64,
    /// Cacheable request methods (upper case).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers whose values are part of the key (`accept`, `accept-encoding`, ...).
    /// A response whose `Vary` names a header not listed here is not stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary: Vec<String>,
    #[serde(default)]
    pub key_by: KeyBy,
    /// Honour `no-store`, `no-cache`, `private` (request and response) and let a response's
    /// `max-age` / `s-maxage` lower `ttl`.
    #[serde(default = "crate::yes")]
    pub respect_cache_control: bool,
    /// Larger responses are served but not stored.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Response header with comma-separated tags, sent to the service for tag invalidation.
    #[serde(default = "default_tags_header")]
    pub tags_header: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// One copy for everyone: requests carrying `authorization` or `x-nexus-client-id` bypass.
    #[default]
    Shared,
    /// One copy per client (`x-nexus-client-id`, set by nexus-auth); anonymous requests bypass.
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheService {
    /// Envoy cluster (HTTP/2) of `nexus.cache.v1.Cache`.
    pub cluster: String,
    /// Deadline of `Get` and `Put`; a late answer counts as a miss.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Follow the `Subscribe` event stream (invalidations, updates, flushes). Without it an
    /// L1 copy lives out its TTL whatever happens in the service.
    #[serde(default = "crate::yes")]
    pub subscribe: bool,
    /// First reconnect delay after the stream breaks; doubled per failure up to the max.
    #[serde(default = "default_backoff_initial_ms")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub reconnect_max_ms: u64,
}

impl CacheService {
    /// The service at `cluster`, with default timeout, subscription and backoff.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            timeout_ms: default_timeout_ms(),
            subscribe: true,
            reconnect_initial_ms: default_backoff_initial_ms(),
            reconnect_max_ms: default_backoff_max_ms(),
        }
    }
}

fn default_l1_max_entries() -> u32 {
    1024
}
fn default_methods() -> Vec<String> {
    vec!["GET".to_string(), "HEAD".to_string()]
}
fn default_max_object_bytes() -> u64 {
    1 << 20
}
fn default_tags_header() -> String {
    crate::contract::CACHE_TAGS.to_string()
}
fn default_timeout_ms() -> u64 {
    50
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

/// Envoy's shared data holds whole entries; keep them well below its message limits.
pub const MAX_OBJECT_BYTES_LIMIT: u64 = 16 << 20;
pub const L1_MAX_ENTRIES_LIMIT: u32 = 100_000;

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
}

impl Validate for CacheConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.l1_max_entries == 0 || self.l1_max_entries > L1_MAX_ENTRIES_LIMIT {
            errors.push(ConfigError::new(
                format!("{path}.l1_max_entries"),
                format!(
                    "{} is outside 1..={L1_MAX_ENTRIES_LIMIT}",
                    self.l1_max_entries
                ),
            ));
        }
        if self.writer.as_deref().is_some_and(str::is_empty) {
            errors.push(ConfigError::new(
                format!("{path}.writer"),
                "must not be empty (omit it to generate one)",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{path}.rules[{i}]");
            if rule.name.is_empty() {
                errors.push(ConfigError::new(format!("{at}.name"), "must not be empty"));
            } else if !names.insert(rule.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate rule name {:?}", rule.name),
                ));
            }
            rule.matcher.validate(&format!("{at}.match"), errors);
            rule.policy.validate(&format!("{at}.policy"), errors);
        }
        if let Some(s) = &self.service {
            let at = format!("{path}.service");
            if s.cluster.is_empty() {
                errors.push(ConfigError::new(
                    format!("{at}.cluster"),
                    "must not be empty",
                ));
            }
            if s.timeout_ms == 0 || s.timeout_ms > 10_000 {
                errors.push(ConfigError::new(
                    format!("{at}.timeout_ms"),
                    format!("{} ms is outside 1..=10000", s.timeout_ms),
                ));
            }
            if s.reconnect_initial_ms == 0 {
                errors.push(ConfigError::new(
                    format!("{at}.reconnect_initial_ms"),
                    "must be at least 1",
                ));
            }
            if s.reconnect_max_ms < s.reconnect_initial_ms {
                errors.push(ConfigError::new(
                    format!("{at}.reconnect_max_ms"),
                    "must not be below reconnect_initial_ms",
                ));
            }
        }
    }
}

impl Validate for CachePolicy {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.ttl == 0 || self.ttl > 365 * 86_400 {
            errors.push(ConfigError::new(
                format!("{path}.ttl"),
                format!("{} s is outside 1..=31536000", self.ttl),
            ));
        }
        if self.methods.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.methods"),
                "must name at least one method",
            ));
        }
        for (i, m) in self.methods.iter().enumerate() {
            // Only safe methods have responses that can be replayed to another request.
            if !matches!(m.as_str(), "GET" | "HEAD") {
                errors.push(ConfigError::new(
                    format!("{path}.methods[{i}]"),
                    format!("{m:?} is not cacheable (GET or HEAD)"),
                ));
            }
        }
        for (i, h) in self.vary.iter().enumerate() {
            if !is_header_name(h) {
                errors.push(ConfigError::new(
                    format!("{path}.vary[{i}]"),
                    format!("{h:?} is not a lower-case header name"),
                ));
            }
        }
        if self.max_object_bytes == 0 || self.max_object_bytes > MAX_OBJECT_BYTES_LIMIT {
            errors.push(ConfigError::new(
                format!("{path}.max_object_bytes"),
                format!(
                    "{} is outside 1..={MAX_OBJECT_BYTES_LIMIT}",
                    self.max_object_bytes
                ),
            ));
        }
        if !is_header_name(&self.tags_header) {
            errors.push(ConfigError::new(
                format!("{path}.tags_header"),
                format!("{:?} is not a lower-case header name", self.tags_header),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn minimal_rule_gets_the_documented_defaults() {
        let cfg: CacheConfig = parse(
            br#"{"rules": [{"name": "tables", "match": {"path": {"prefix": "/lake/tables/"}},
                 "policy": {"ttl": 60}}]}"#,
        )
        .unwrap();
        let p = &cfg.rules[0].policy;
        assert_eq!(p.methods, ["GET", "HEAD"]);
        assert_eq!(p.key_by, KeyBy::Shared);
        assert!(p.respect_cache_control);
        assert_eq!(p.max_object_bytes, 1 << 20);
        assert_eq!(p.tags_header, "x-nexus-cache-tags");
        assert_eq!(cfg.l1_max_entries, 1024);
        assert_eq!(cfg.service, None);
    }

    #[test]
    fn service_defaults() {
        let cfg: CacheConfig = parse(br#"{"service": {"cluster": "nexus-cache"}}"#).unwrap();
        let s = cfg.service.unwrap();
        assert_eq!(
            (
                s.timeout_ms,
                s.subscribe,
                s.reconnect_initial_ms,
                s.reconnect_max_ms
            ),
            (50, true, 500, 30_000)
        );
    }

    #[test]
    fn bad_configs_are_rejected_with_paths() {
        let err = parse::<CacheConfig>(
            br#"{"l1_max_entries": 0, "writer": "",
                 "rules": [
                   {"name": "a", "policy": {"ttl": 0, "methods": ["POST"], "vary": ["Accept"],
                    "max_object_bytes": 0, "tags_header": "X Tags"}},
                   {"name": "a", "match": {"path": {"regex": "("}}, "policy": {"ttl": 5, "methods": []}}],
                 "service": {"cluster": "", "timeout_ms": 0, "reconnect_initial_ms": 10,
                             "reconnect_max_ms": 5}}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "$.l1_max_entries",
            "$.writer",
            "$.rules[0].policy.ttl",
            "$.rules[0].policy.methods[0]",
            "$.rules[0].policy.vary[0]",
            "$.rules[0].policy.max_object_bytes",
            "$.rules[0].policy.tags_header",
            "$.rules[1].name",
            "$.rules[1].policy.methods",
            "$.service.cluster",
            "$.service.timeout_ms",
            "$.service.reconnect_max_ms",
        ] {
            assert!(paths.contains(&want), "{want} missing in {paths:?}");
        }
    }

    #[test]
    fn type_errors_and_unknown_fields_report_their_path() {
        let err = parse::<CacheConfig>(
            br#"{"rules": [{"name": "a", "policy": {"ttl": 5, "key_by": "user"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.0[0].path, "$.rules[0].policy.key_by");
        let err =
            parse::<CacheConfig>(br#"{"service": {"cluster": "c", "tmeout_ms": 5}}"#).unwrap_err();
        assert_eq!(err.0[0].path, "$.service.tmeout_ms");
    }

    #[test]
    fn schema_names_the_fields_the_controller_renders() {
        let schema = crate::schema_json::<CacheConfig>();
        for field in [
            "l1_max_entries",
            "respect_cache_control",
            "key_by",
            "tags_header",
            "reconnect_max_ms",
        ] {
            assert!(schema.contains(field), "{field}");
        }
    }
}
