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
//!       - key: client_id              # a wildcard value: `batch-*` clients, one bucket each
//!         value: batch-*
//!         rate_limit: { unit: day, requests_per_unit: 100000, name: batch }
//!       - key: client_id
//!         value: ops
//!         rate_limit: { unlimited: true }
//! ```
//!
//! Every field of envoyproxy/ratelimit's format is understood, with its meaning:
//!
//! - Matching, level by level: an exact `key`+`value` node, else the first wildcard node whose
//!   `value` pattern (`*` matches any run of characters, anywhere, any number of times) matches,
//!   else the `key`-only node. The limit of the node the request descriptor's last entry reaches
//!   applies; a descriptor that leaves the tree or ends on a node without a limit is not limited.
//! - `rate_limit`: `requests_per_unit` per `unit` (second, minute, hour, day, week = 7 days,
//!   month = 30 days, year = 365 days; any letter case), or `unlimited: true` (never limited,
//!   never counted). `name` names the limit (reported back as `current_limit.name`);
//!   `replaces: [{name: x}]` drops limit `x` from a request in which this limit matched too.
//! - `shadow_mode`: counted, reported, never rejected. `quota_mode`: an over-limit quota
//!   descriptor rejects a request only when every quota descriptor of it is over limit (and
//!   ordinary limits reject as always).
//! - `share_threshold` (wildcard values only): every value the wildcard matches draws from one
//!   counter instead of one counter per value.
//! - `detailed_metric`, `value_to_metric`: what the per-descriptor metric key
//!   ([`ResolvedLimit::metric_key`]) is made of; counters are unaffected.
//! - `metadata`: free-form, kept with the descriptor.
//!
//! Two dialects check a file ([`Dialect`]): envoyproxy/ratelimit's own refusals for its files,
//! and Nexus's for the JSON it renders and its filter reads.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{ConfigError, Validate};

/// Descriptor key the filter sends with the matched router rule name as value.
pub const ROUTE_KEY: &str = "route";
/// Descriptor key the filter sends with the authenticated client id as value.
pub const CLIENT_KEY: &str = "client_id";
/// Prefix of descriptor keys carrying a request header's value (`header.x-tenant`).
pub const HEADER_KEY_PREFIX: &str = "header.";

/// Prefix of the cache-coherency invalidation key that carries a `ratelimit.reset` to every
/// proxy (the stream nexus-auth follows for session revocations): see [`reset_key`].
pub const RESET_PREFIX: &str = "nexus-ratelimit:";

/// The invalidation key announcing that the counters of every descriptor carrying all of
/// `entries` were reset: [`RESET_PREFIX`] then `|k=v` per entry, as in counter keys
/// (`nexus-ratelimit:|route=cortex|client_id=alice`).
pub fn reset_key(entries: &[(String, String)]) -> String {
    let mut key = RESET_PREFIX.to_string();
    for (k, v) in entries {
        key.push('|');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// The entries of a [`reset_key`]; `None` when `key` is not one (another invalidation on the
/// same stream) or names no entry.
pub fn parse_reset_key(key: &str) -> Option<Vec<(String, String)>> {
    let rest = key.strip_prefix(RESET_PREFIX)?.strip_prefix('|')?;
    rest.split('|')
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// True when the counter key (`domain|k=v|k=v`, possibly followed by the service's
/// `:limit[:window]`) carries every `k=v` of `entries`. A value ends at the next `|` or `:`,
/// so `client_id=al` does not match `client_id=alice`. The rate-limit service deletes its
/// counters on a `ratelimit.reset` by this test, and the filter its over-limit entries.
pub fn key_matches(key: &str, entries: &[(String, String)]) -> bool {
    entries.iter().all(|(k, v)| {
        let needle = format!("|{k}={v}");
        key.match_indices(&needle).any(|(at, _)| {
            matches!(
                key.as_bytes().get(at + needle.len()),
                Some(b'|' | b':') | None
            )
        })
    })
}

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub key: String,
    /// Without a value (or with an empty one), every distinct value gets its own bucket. A value
    /// containing `*` is a wildcard pattern: `*` matches any run of characters (none included).
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
    /// Over limit rejects only when every quota-mode descriptor of the request is over limit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub quota_mode: bool,
    /// The metric key carries the request's values (`key_value` at every level).
    #[serde(default, skip_serializing_if = "is_false")]
    pub detailed_metric: bool,
    /// The metric key carries the request's value at this level when the configuration has none
    /// (or a wildcard).
    #[serde(default, skip_serializing_if = "is_false")]
    pub value_to_metric: bool,
    /// Every value this wildcard matches shares one counter (wildcard values only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub share_threshold: bool,
    /// Free-form data kept with the descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Never limited (envoyproxy/ratelimit `unlimited: true`): takes no `unit`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unlimited: bool,
    /// Required unless `unlimited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    /// 0 rejects every request (envoyproxy/ratelimit files only; Nexus refuses it, see
    /// [`Dialect::Nexus`]).
    #[serde(default)]
    pub requests_per_unit: u32,
    /// Names the limit: reported as `current_limit.name`, and what `replaces` refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Limits (by name) this one drops from a request in which both matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<Replaces>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replaces {
    #[serde(default)]
    pub name: String,
}

/// A limit's window, with envoyproxy/ratelimit's durations (a month is 30 days, a year 365).
/// Read in any letter case (`minute`, `MINUTE`), as envoyproxy/ratelimit does; written lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// A unit by name, in any letter case.
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(name))
    }
}

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Unit::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid rate limit unit {name:?} (second, minute, hour, day, week, month, year)"
            ))
        })
    }
}

impl Descriptor {
    /// The value this node matches; an empty value is no value, as in envoyproxy/ratelimit.
    pub fn match_value(&self) -> Option<&str> {
        self.value.as_deref().filter(|v| !v.is_empty())
    }

    /// Whether the value is a wildcard pattern.
    pub fn is_wildcard(&self) -> bool {
        self.match_value().is_some_and(|v| v.contains('*'))
    }
}

impl RateLimit {
    /// The limit's name; an empty name is none.
    pub fn limit_name(&self) -> Option<&str> {
        self.name.as_deref().filter(|n| !n.is_empty())
    }
}

/// Which refusals apply to a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Files in envoyproxy/ratelimit's format, refused exactly when it refuses them: a `unit`
    /// beside `unlimited: true` is refused, `requests_per_unit: 0` (reject everything) is a
    /// limit like any other, and `requests_per_unit` beside `unlimited: true` is ignored.
    Envoy,
    /// The JSON Nexus renders and its filter reads ([`crate::parse`]): as [`Dialect::Envoy`],
    /// except that a `unit` beside `unlimited: true` is accepted and ignored (Nexus wrote one
    /// before), `requests_per_unit` beside `unlimited: true` is refused, and so is
    /// `requests_per_unit: 0` (Nexus never renders a limit that rejects everything; in a
    /// hand-written Nexus configuration it is a typo far more often than a ban).
    Nexus,
}

impl Validate for RateLimitConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        self.check(path, Dialect::Nexus, errors);
    }
}

impl RateLimitConfig {
    /// Pushes every problem, each with its JSON path (rooted at `path`), as `dialect` sees them.
    pub fn check(&self, path: &str, dialect: Dialect, errors: &mut Vec<ConfigError>) {
        if self.domain.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.domain"),
                "must not be empty",
            ));
        }
        check_level(
            &self.descriptors,
            &format!("{path}.descriptors"),
            dialect,
            errors,
        );
    }
}

fn check_level(
    descriptors: &[Descriptor],
    at: &str,
    dialect: Dialect,
    errors: &mut Vec<ConfigError>,
) {
    // envoyproxy/ratelimit keys a level by key and value (an empty value being none): two
    // descriptors with the same pair are one too many.
    let mut seen: BTreeMap<(&str, Option<&str>), usize> = BTreeMap::new();
    for (i, d) in descriptors.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if d.key.is_empty() {
            errors.push(ConfigError::new(format!("{here}.key"), "must not be empty"));
        }
        if let Some(first) = seen.insert((d.key.as_str(), d.match_value()), i) {
            errors.push(ConfigError::new(
                &here,
                format!(
                    "duplicate descriptor {}{} (the same key and value as {at}[{first}])",
                    d.key,
                    d.match_value().map(|v| format!("={v}")).unwrap_or_default()
                ),
            ));
            // Keep pointing at the first one.
            seen.insert((d.key.as_str(), d.match_value()), first);
        }
        if let Some(limit) = &d.rate_limit {
            check_limit(limit, &format!("{here}.rate_limit"), dialect, errors);
        }
        if d.share_threshold && !d.is_wildcard() {
            errors.push(ConfigError::new(
                format!("{here}.share_threshold"),
                format!(
                    "only for wildcard values (containing '*'); {}{} has none",
                    d.key,
                    d.match_value().map(|v| format!("={v}")).unwrap_or_default()
                ),
            ));
        }
        check_level(
            &d.descriptors,
            &format!("{here}.descriptors"),
            dialect,
            errors,
        );
    }
}

fn check_limit(limit: &RateLimit, at: &str, dialect: Dialect, errors: &mut Vec<ConfigError>) {
    if limit.unlimited {
        if limit.unit.is_some() && dialect == Dialect::Envoy {
            errors.push(ConfigError::new(
                format!("{at}.unit"),
                "an unlimited rate_limit takes no unit",
            ));
        }
        if limit.requests_per_unit != 0 && dialect == Dialect::Nexus {
            errors.push(ConfigError::new(
                at,
                "an unlimited rate_limit takes no requests_per_unit",
            ));
        }
    } else {
        if limit.unit.is_none() {
            errors.push(ConfigError::new(
                format!("{at}.unit"),
                "missing: a rate_limit needs a unit (second, minute, hour, day, week, month, year) unless it is unlimited: true",
            ));
        }
        if limit.requests_per_unit == 0 && dialect == Dialect::Nexus {
            errors.push(ConfigError::new(
                format!("{at}.requests_per_unit"),
                "must be at least 1 (use unlimited: true for no limit)",
            ));
        }
    }
    for (j, r) in limit.replaces.iter().enumerate() {
        let here = format!("{at}.replaces[{j}].name");
        if r.name.is_empty() {
            errors.push(ConfigError::new(
                here,
                "must not be empty: a replaces entry names the limit it replaces",
            ));
        } else if limit.limit_name() == Some(r.name.as_str()) {
            errors.push(ConfigError::new(
                here,
                format!("a limit cannot replace itself (it is named {:?})", r.name),
            ));
        }
    }
}

/// How a request entry found its node at one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The node's key and value are the entry's.
    Exact,
    /// The node's value is a wildcard pattern the entry's value matches.
    Wildcard,
    /// The node has the entry's key and no value.
    Default,
}

/// The node an entry `key`=`value` reaches in one level of a tree, in envoyproxy/ratelimit's
/// order: exact value, then the first matching wildcard value (in configuration order), then
/// the key-only default.
pub fn lookup<'a>(
    level: &'a [Descriptor],
    key: &str,
    value: &str,
) -> Option<(&'a Descriptor, Match)> {
    let same_key = || level.iter().filter(move |d| d.key == key);
    if let Some(d) = same_key().find(|d| d.match_value() == Some(value)) {
        return Some((d, Match::Exact));
    }
    if let Some(d) = same_key().find(|d| {
        d.is_wildcard()
            && d.match_value()
                .is_some_and(|pattern| wildcard_matches(pattern, value))
    }) {
        return Some((d, Match::Wildcard));
    }
    same_key()
        .find(|d| d.match_value().is_none())
        .map(|d| (d, Match::Default))
}

/// Whether `value` matches `pattern`, where each `*` matches any run of characters (the empty
/// one too) and everything else matches itself.
pub fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let mut middle: Vec<&str> = parts.collect();
    let Some(last) = middle.pop() else {
        return pattern == value; // no '*'
    };
    let Some(rest) = value.strip_prefix(first) else {
        return false;
    };
    // Prefix and suffix must not overlap: the suffix is taken from what the prefix left.
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The limit one request descriptor resolves to in a [`RateLimitConfig`] tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLimit<'a> {
    /// The counter: domain and every entry, values included (`nexus|route=lake|client_id=a`),
    /// except that an entry matched by a `share_threshold` wildcard contributes the pattern, so
    /// all its values share the counter.
    pub key: String,
    /// The metric key, as envoyproxy/ratelimit names its stats: `domain.key_value.key` with the
    /// configured values (wildcard patterns included), the request's value where
    /// `value_to_metric` asks for it, every request value when the limit's node has
    /// `detailed_metric` (share_threshold patterns still win).
    pub metric_key: String,
    pub limit: &'a RateLimit,
    /// The node the limit belongs to.
    pub descriptor: &'a Descriptor,
    pub shadow_mode: bool,
    pub quota_mode: bool,
}

impl RateLimitConfig {
    /// Walks the tree as envoyproxy/ratelimit does: level by level, each entry finds its node
    /// with [`lookup`]; the limit of the node the last entry reaches applies. A descriptor that
    /// leaves the tree (an entry finds no node, or there are more entries than levels), or ends
    /// on a node without a limit, is not limited. The rate-limit service and the filter both
    /// use this.
    pub fn resolve(&self, entries: &[(&str, &str)]) -> Option<ResolvedLimit<'_>> {
        let mut level: &[Descriptor] = &self.descriptors;
        let mut node: Option<&Descriptor> = None;
        let mut key = self.domain.clone();
        let mut metric = self.domain.clone();
        // Per entry: the share_threshold pattern that stands for its value, if any.
        let mut shared: Vec<Option<&str>> = Vec::with_capacity(entries.len());
        for (i, &(k, v)) in entries.iter().enumerate() {
            if i > 0 && node.is_some_and(|n| n.descriptors.is_empty()) {
                return None; // more entries than levels
            }
            let (found, how) = lookup(level, k, v)?;
            let pattern = found.match_value().unwrap_or_default();
            let share = (how == Match::Wildcard && found.share_threshold).then_some(pattern);
            key.push('|');
            key.push_str(k);
            key.push('=');
            key.push_str(share.unwrap_or(v));
            let shown = match how {
                Match::Wildcard if found.share_threshold => pattern,
                Match::Wildcard if found.value_to_metric => v,
                Match::Wildcard => pattern,
                Match::Exact => v,
                Match::Default if found.value_to_metric => v,
                Match::Default => "",
            };
            metric.push('.');
            metric.push_str(k);
            if !shown.is_empty() {
                metric.push('_');
                metric.push_str(shown);
            }
            shared.push(share);
            level = &found.descriptors;
            node = Some(found);
        }
        let node = node?;
        let limit = node.rate_limit.as_ref()?;
        if node.detailed_metric {
            metric = self.domain.clone();
            for ((k, v), share) in entries.iter().zip(&shared) {
                metric.push('.');
                metric.push_str(k);
                match share {
                    Some(p) => {
                        metric.push('_');
                        metric.push_str(p);
                    }
                    // With share_threshold anywhere, an empty value adds nothing; without, the
                    // separator stays (`key_`), as envoyproxy/ratelimit writes them.
                    None if !v.is_empty() || shared.iter().all(Option::is_none) => {
                        metric.push('_');
                        metric.push_str(v);
                    }
                    None => {}
                }
            }
        }
        Some(ResolvedLimit {
            key,
            metric_key: metric,
            limit,
            descriptor: node,
            shadow_mode: node.shadow_mode,
            quota_mode: node.quota_mode,
        })
    }
}

/// `replaces` across one request: which of its limits are dropped because another limit that
/// matched in the same request (unlimited ones included) replaces their name. `limits[i]` is the
/// limit descriptor `i` resolved to, if any.
pub fn replaced(limits: &[Option<&RateLimit>]) -> Vec<bool> {
    let replacing: Vec<&str> = limits
        .iter()
        .flatten()
        .copied()
        .flat_map(|l| l.replaces.iter().map(|r| r.name.as_str()))
        .filter(|n| !n.is_empty())
        .collect();
    limits
        .iter()
        .map(|l| {
            l.and_then(RateLimit::limit_name)
                .is_some_and(|name| replacing.contains(&name))
        })
        .collect()
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

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reset_keys_round_trip_and_other_keys_are_not_resets() {
        let both = pairs(&[("route", "cortex"), ("client_id", "alice@example.com")]);
        let key = reset_key(&both);
        assert_eq!(
            key,
            "nexus-ratelimit:|route=cortex|client_id=alice@example.com"
        );
        assert_eq!(parse_reset_key(&key), Some(both));
        assert_eq!(
            parse_reset_key("nexus-ratelimit:|client_id=a=b"),
            Some(pairs(&[("client_id", "a=b")]))
        );
        for other in [
            "nexus-session:ab12",
            "/lake/datasets#0f",
            "nexus-ratelimit:",
            "nexus-ratelimit:|",
            "nexus-ratelimit:|=alice",
            "nexus-ratelimit:|client_id",
        ] {
            assert_eq!(parse_reset_key(other), None, "{other}");
        }
    }

    #[test]
    fn a_reset_matches_filter_keys_and_service_keys_by_whole_values() {
        let alice = pairs(&[("client_id", "alice")]);
        assert!(key_matches("nexus|route=lake|client_id=alice", &alice));
        assert!(key_matches(
            "nexus|route=lake|client_id=alice:5s:1000",
            &alice
        ));
        assert!(!key_matches("nexus|route=lake|client_id=alice2", &alice));
        assert!(!key_matches("nexus|route=lake", &alice));
        let lake = pairs(&[("route", "lake")]);
        assert!(key_matches("nexus|route=lake", &lake));
        assert!(!key_matches("nexus|route=lakehouse|client_id=alice", &lake));
    }
}

#[cfg(test)]
#[path = "ratelimit_tests.rs"]
mod compat_tests;
