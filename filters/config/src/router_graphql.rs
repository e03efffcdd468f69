//! A router rule's `graphql` block: the router reads the GraphQL operation of the requests the
//! rule matches, routes it by operation name or root field, refuses it over a depth or cost
//! limit, and accepts Apollo persisted-query hashes (APQ).
//!
//! Cost is a documented count, not a schema-aware estimate: every field costs 1, and the cost
//! of a field's selection is multiplied by its `first`, `last` or `limit` argument when that is
//! an integer (literal, or a variable given in `variables`). `{ datasets(first: 10) { id name } }`
//! costs 1 + 10 × 2 = 21. Depth counts fields: `{ a { b { c } } }` is 3 deep; fragments add none.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphqlRule {
    /// Root field → upstream that owns it (a simple federation). Empty: every operation goes
    /// to the rule's upstream.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Operation name → upstream; checked before `fields`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operations: BTreeMap<String, String>,
    /// Where an operation goes whose root fields have no owner or span several owners. None:
    /// such an operation is refused (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_upstream: Option<String>,
    /// Larger request bodies are refused (413) before parsing.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
    /// Deepest field nesting allowed.
    #[serde(default = "default_max_depth")]
    pub max_depth: u32,
    /// Highest cost allowed (see the module documentation).
    #[serde(default = "default_max_cost")]
    pub max_cost: u64,
    /// Persisted queries each worker remembers (least recently used out); 0 turns APQ off.
    #[serde(default = "default_persisted_queries")]
    pub persisted_queries: u32,
}

impl Default for GraphqlRule {
    fn default() -> Self {
        Self {
            fields: BTreeMap::new(),
            operations: BTreeMap::new(),
            default_upstream: None,
            max_body_bytes: default_max_body_bytes(),
            max_depth: default_max_depth(),
            max_cost: default_max_cost(),
            persisted_queries: default_persisted_queries(),
        }
    }
}

fn default_max_body_bytes() -> u32 {
    64 * 1024
}

fn default_max_depth() -> u32 {
    10
}

fn default_max_cost() -> u64 {
    1_000
}

fn default_persisted_queries() -> u32 {
    1_000
}

/// Bodies above this are refused whatever the rule says: the router buffers them in the VM.
pub const MAX_BODY_BYTES_LIMIT: u32 = 1024 * 1024;

impl GraphqlRule {
    pub fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let upstreams = self
            .fields
            .iter()
            .map(|(k, v)| (format!("{path}.fields.{k}"), v))
            .chain(
                self.operations
                    .iter()
                    .map(|(k, v)| (format!("{path}.operations.{k}"), v)),
            )
            .chain(
                self.default_upstream
                    .iter()
                    .map(|v| (format!("{path}.default_upstream"), v)),
            );
        for (at, upstream) in upstreams {
            if !crate::router::is_token(upstream) {
                errors.push(ConfigError::new(
                    at,
                    format!("upstream {upstream:?} is not a service name ([a-z0-9_-]+)"),
                ));
            }
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            errors.push(ConfigError::new(
                format!("{path}.max_body_bytes"),
                format!("must be 1..={MAX_BODY_BYTES_LIMIT}"),
            ));
        }
        if self.max_depth == 0 {
            errors.push(ConfigError::new(format!("{path}.max_depth"), "must be > 0"));
        }
        if self.max_cost == 0 {
            errors.push(ConfigError::new(format!("{path}.max_cost"), "must be > 0"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_upstreams_and_limits_are_reported_with_their_paths() {
        let rule = GraphqlRule {
            fields: [("datasets".to_string(), "Lake".to_string())].into(),
            max_depth: 0,
            max_body_bytes: MAX_BODY_BYTES_LIMIT + 1,
            ..Default::default()
        };
        let mut errors = Vec::new();
        rule.validate("$.rules[0].graphql", &mut errors);
        let paths: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "$.rules[0].graphql.fields.datasets",
                "$.rules[0].graphql.max_body_bytes",
                "$.rules[0].graphql.max_depth",
            ]
        );
    }
}
