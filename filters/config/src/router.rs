//! `nexus-router`: ordered match rules that pick a category and upstream and set the
//! routing headers Envoy's router (and Istio's VirtualService) act on.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Validate};

/// Seed categories and the upstream service each one goes to.
pub const SEED_CATEGORIES: [(&str, &str, u64); 4] = [
    ("data_operations", "lake", 30_000),
    ("stream_processing", "stream", 5_000),
    ("ai_inference", "cortex", 10_000),
    ("model_management", "forge", 20_000),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Evaluated in order; the first rule that matches wins.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Category name → where its requests go and how long they may take.
    #[serde(default = "seed_categories")]
    pub categories: BTreeMap<String, Category>,
    /// Timeout for a category that sets none, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub default_timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// What happens to a request no rule matches.
    #[serde(default)]
    pub on_no_match: NoMatch,
    #[serde(default)]
    pub correlation: Correlation,
    /// Request headers with this prefix are removed before anything else, so a client cannot
    /// spoof what Nexus filters tell each other and the upstream.
    #[serde(default = "default_strip_prefix")]
    pub strip_header_prefix: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            categories: seed_categories(),
            default_timeout_ms: default_timeout_ms(),
            retry: RetryPolicy::default(),
            on_no_match: NoMatch::default(),
            correlation: Correlation::default(),
            strip_header_prefix: default_strip_prefix(),
        }
    }
}

fn seed_categories() -> BTreeMap<String, Category> {
    SEED_CATEGORIES
        .iter()
        .map(|(name, upstream, timeout)| {
            (
                (*name).to_string(),
                Category {
                    upstream: (*upstream).to_string(),
                    timeout_ms: Some(*timeout),
                    retry: None,
                },
            )
        })
        .collect()
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_strip_prefix() -> String {
    crate::contract::PREFIX.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Upstream service name, sent as `x-nexus-upstream` (`lake`, `stream`, ...).
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Shown in `x-nexus-rule`, logs and metrics.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RequestMatch,
    /// A key of `categories`.
    pub category: String,
    /// Overrides the category's upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Overrides the category's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Overrides the category's and the global retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The rule serves GraphQL: route and limit by the operation in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql: Option<crate::router_graphql::GraphqlRule>,
}

/// Every condition given must hold; an empty match matches every request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Any of these methods (upper case); empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// gRPC service, fully qualified (`datapunk.lake.v1.Lake`), matched on `/service/method`
    /// paths of requests with a gRPC content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// gRPC method within `grpc_service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    /// Segment-unaware prefix, as Envoy's `prefix` (`/lake` matches `/lakes`; write `/lake/`).
    Prefix(String),
    Exact(String),
    /// RE2-compatible regular expression matched against the whole path (without query).
    Regex(String),
}

/// Exactly one of `present`, `exact`, `prefix`, `regex`; none means "present".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name, matched case-insensitively.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Sent as `x-envoy-max-retries`.
    pub max_retries: u32,
    /// Sent as `x-envoy-retry-on` (Envoy's retry conditions, comma separated) for idempotent
    /// methods; see [`RetryPolicy::retry_on_for`].
    #[serde(default = "default_retry_on")]
    pub retry_on: String,
    /// Whether non-idempotent methods (POST, PATCH, CONNECT…) may be retried on every
    /// condition too (e.g. an upstream that deduplicates by idempotency key). Off: they are
    /// retried only when the request cannot have reached the upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            retry_on: default_retry_on(),
            non_idempotent: false,
        }
    }
}

/// RFC 9110 §9.2.2: a request with one of these methods may be repeated with the same effect.
pub const IDEMPOTENT_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// Retry conditions under which the upstream never saw the request: no connection, a stream
/// refused before processing (HTTP/2 REFUSED_STREAM), a reset before the request was sent,
/// or Envoy's own rate limiter. Retrying a POST on these cannot repeat its effect; `5xx`,
/// `reset` (after sending) and the gRPC statuses can.
pub const PRE_REQUEST_RETRY_ON: [&str; 4] = [
    "connect-failure",
    "refused-stream",
    "reset-before-request",
    "envoy-ratelimited",
];

impl RetryPolicy {
    /// The conditions a request with `method` is retried on: all of them for idempotent
    /// methods (or when the rule allows it), only the pre-request ones otherwise.
    pub fn retry_on_for(&self, method: &str) -> String {
        if self.non_idempotent || IDEMPOTENT_METHODS.contains(&method) {
            self.retry_on.clone()
        } else {
            self.any_method_retry_on()
        }
    }

    /// The conditions every method may be retried on: what a route-level retry policy (a
    /// VirtualService's `retries`, an Envoy route's `retry_policy`) may hold, because Envoy
    /// ORs it with the router filter's per-request `x-envoy-retry-on`.
    pub fn any_method_retry_on(&self) -> String {
        if self.non_idempotent {
            return self.retry_on.clone();
        }
        let safe: Vec<&str> = self
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| PRE_REQUEST_RETRY_ON.contains(c))
            .collect();
        safe.join(",")
    }
}

fn default_retry_on() -> String {
    "5xx,reset,connect-failure,refused-stream".to_string()
}

/// Envoy's retry-on conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON: [&str; 15] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "unavailable",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum NoMatch {
    /// Answer 404 with a JSON body.
    #[default]
    Reject,
    /// Route to this category as if a rule had matched.
    Default { category: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    /// Keep a valid incoming `x-request-id`; generate a UUIDv4 otherwise.
    #[serde(default = "crate::yes")]
    pub request_id: bool,
    /// Keep a valid incoming W3C `traceparent`; start a new trace otherwise.
    #[serde(default = "crate::yes")]
    pub traceparent: bool,
}

impl Default for Correlation {
    fn default() -> Self {
        Self {
            request_id: true,
            traceparent: true,
        }
    }
}

impl Validate for RouterConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        for (name, category) in &self.categories {
            let at = format!("{path}.categories.{name}");
            if !is_token(name) {
                errors.push(ConfigError::new(
                    &at,
                    "category names are [a-z0-9_-]+ (they become header values and metric names)",
                ));
            }
            if !is_token(&category.upstream) {
                errors.push(ConfigError::new(
                    format!("{at}.upstream"),
                    format!(
                        "upstream {:?} is not a service name ([a-z0-9_-]+)",
                        category.upstream
                    ),
                ));
            }
            check_timeout(category.timeout_ms, &format!("{at}.timeout_ms"), errors);
            if let Some(retry) = &category.retry {
                retry.validate(&format!("{at}.retry"), errors);
            }
        }
        check_timeout(
            Some(self.default_timeout_ms),
            &format!("{path}.default_timeout_ms"),
            errors,
        );
        self.retry.validate(&format!("{path}.retry"), errors);
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
            self.check_category(&rule.category, &format!("{at}.category"), errors);
            if let Some(upstream) = &rule.upstream {
                if !is_token(upstream) {
                    errors.push(ConfigError::new(
                        format!("{at}.upstream"),
                        format!("upstream {upstream:?} is not a service name ([a-z0-9_-]+)"),
                    ));
                }
            }
            check_timeout(rule.timeout_ms, &format!("{at}.timeout_ms"), errors);
            if let Some(retry) = &rule.retry {
                retry.validate(&format!("{at}.retry"), errors);
            }
            rule.matcher.validate(&format!("{at}.match"), errors);
            if let Some(graphql) = &rule.graphql {
                graphql.validate(&format!("{at}.graphql"), errors);
            }
        }
        if let NoMatch::Default { category } = &self.on_no_match {
            self.check_category(category, &format!("{path}.on_no_match.category"), errors);
        }
        if !self.strip_header_prefix.is_empty()
            && self.strip_header_prefix != self.strip_header_prefix.to_ascii_lowercase()
        {
            errors.push(ConfigError::new(
                format!("{path}.strip_header_prefix"),
                "must be lower case (header names are compared lower-cased)",
            ));
        }
    }
}

impl RouterConfig {
    fn check_category(&self, category: &str, at: &str, errors: &mut Vec<ConfigError>) {
        if !self.categories.contains_key(category) {
            let known: Vec<&str> = self.categories.keys().map(String::as_str).collect();
            errors.push(ConfigError::new(
                at,
                format!(
                    "unknown category {category:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
}

impl Validate for RequestMatch {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        match &self.path {
            Some(PathMatch::Prefix(p)) | Some(PathMatch::Exact(p)) if !p.starts_with('/') => {
                let kind = if matches!(self.path, Some(PathMatch::Prefix(_))) {
                    "prefix"
                } else {
                    "exact"
                };
                errors.push(ConfigError::new(
                    format!("{path}.path.{kind}"),
                    format!("path {p:?} must start with '/'"),
                ));
            }
            Some(PathMatch::Regex(re)) => check_regex(re, &format!("{path}.path.regex"), errors),
            _ => {}
        }
        for (i, method) in self.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(ConfigError::new(
                    format!("{path}.methods[{i}]"),
                    format!("method {method:?} must be an upper-case HTTP method"),
                ));
            }
        }
        for (i, header) in self.headers.iter().enumerate() {
            let at = format!("{path}.headers[{i}]");
            if header.name.is_empty()
                || !header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
            {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("{:?} is not a header name", header.name),
                ));
            }
            let given = [
                header.present.is_some(),
                header.exact.is_some(),
                header.prefix.is_some(),
                header.regex.is_some(),
            ]
            .iter()
            .filter(|g| **g)
            .count();
            if given > 1 {
                errors.push(ConfigError::new(
                    &at,
                    "give at most one of present, exact, prefix, regex",
                ));
            }
            if let Some(re) = &header.regex {
                check_regex(re, &format!("{at}.regex"), errors);
            }
        }
        if let Some(service) = &self.grpc_service {
            if service.is_empty() || service.contains('/') {
                errors.push(ConfigError::new(
                    format!("{path}.grpc_service"),
                    format!("{service:?} is not a fully qualified gRPC service name"),
                ));
            }
        }
        if self.grpc_method.is_some() && self.grpc_service.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.grpc_method"),
                "grpc_method needs grpc_service",
            ));
        }
    }
}

impl Validate for RetryPolicy {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.max_retries > 10 {
            errors.push(ConfigError::new(
                format!("{path}.max_retries"),
                format!("{} retries is more than 10", self.max_retries),
            ));
        }
        for cond in self.retry_on.split(',').map(str::trim) {
            if !RETRY_ON.contains(&cond) {
                errors.push(ConfigError::new(
                    format!("{path}.retry_on"),
                    format!(
                        "unknown retry condition {cond:?} (Envoy knows: {})",
                        RETRY_ON.join(", ")
                    ),
                ));
            }
        }
    }
}

fn check_regex(re: &str, at: &str, errors: &mut Vec<ConfigError>) {
    if let Err(e) = regex::Regex::new(re) {
        // The regex crate's message spans lines with a caret diagram; keep the last line.
        let msg = e.to_string();
        let reason = msg.lines().last().unwrap_or("invalid").trim().to_string();
        errors.push(ConfigError::new(
            at,
            format!("invalid regex {re:?}: {reason}"),
        ));
    }
}

fn check_timeout(timeout: Option<u64>, at: &str, errors: &mut Vec<ConfigError>) {
    if let Some(ms) = timeout {
        if ms == 0 || ms > 3_600_000 {
            errors.push(ConfigError::new(
                at,
                format!("timeout {ms} ms is outside 1..=3600000"),
            ));
        }
    }
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn empty_object_is_the_seed_configuration() {
        let cfg: RouterConfig = parse(b"{}").unwrap();
        assert_eq!(cfg, RouterConfig::default());
        assert_eq!(cfg.categories["stream_processing"].upstream, "stream");
        assert_eq!(cfg.categories["stream_processing"].timeout_ms, Some(5_000));
        assert_eq!(cfg.retry.max_retries, 3);
    }

    #[test]
    fn type_errors_carry_their_json_path() {
        let err = parse::<RouterConfig>(
            br#"{"rules":[{"name":"a","category":"data_operations","match":{"path":{"prefx":"/a"}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].path, "$.rules[0].match.path");
        assert!(err.0[0].message.contains("prefx"), "{}", err.0[0].message);
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_path() {
        let err = parse::<RouterConfig>(
            br#"{"rules":[
                {"name":"a","category":"nope","match":{"path":{"regex":"(unclosed"}}},
                {"name":"a","category":"data_operations","match":{"methods":["get"],
                  "headers":[{"name":"x","exact":"1","regex":"2"}]}}
              ],
              "retry":{"max_retries":3,"retry_on":"5xx,sometimes"},
              "on_no_match":{"action":"default","category":"missing"}}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.retry.retry_on",
                "$.rules[0].category",
                "$.rules[0].match.path.regex",
                "$.rules[1].name",
                "$.rules[1].match.methods[0]",
                "$.rules[1].match.headers[0]",
                "$.on_no_match.category",
            ]
        );
        assert!(err.to_string().contains("unknown category \"nope\""));
        assert!(err.to_string().contains("invalid regex \"(unclosed\""));
    }

    #[test]
    fn schema_names_the_rule_fields() {
        let schema = crate::schema_json::<RouterConfig>();
        for field in [
            "rules",
            "grpc_service",
            "on_no_match",
            "strip_header_prefix",
        ] {
            assert!(schema.contains(field), "{field} missing from schema");
        }
    }
}
