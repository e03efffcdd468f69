//! `nexus-guard`: per-route request sanitization and PII detection in bodies.
//!
//! Ordered rules pick a policy per request (first match wins; no match: `default`, and with
//! no `default` the request is not looked at). A policy has request limits and, per
//! direction, what to do with findings in the body.
//!
//! ```yaml
//! # the `guard` block of a NexusRoute rule renders into one GuardRule
//! rules:
//!   - name: lake-write
//!     match: {path: {prefix: /lake/}}
//!     policy:
//!       limits: {max_headers: 64, max_header_bytes: 16384, max_url_bytes: 2048,
//!                max_body_bytes: 1048576, max_json_depth: 16, max_json_fields: 5000}
//!       methods: [GET, POST]                       # empty: any
//!       content_types: [application/json]           # empty: any; matched on the media type
//!       strict_path: true                           # refuse %2F, dot segments, control chars
//!       max_scan_bytes: 1048576                     # larger bodies pass unscanned (counted)
//!       request:  {action: block,  detectors: [card, ssn, jwt, api_key]}
//!       response: {action: redact, fields: {allow: [order_id], deny: [password]}}
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::router::RequestMatch;
use crate::{ConfigError, Validate};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Evaluated in order; the first rule that matches decides.
    #[serde(default)]
    pub rules: Vec<GuardRule>,
    /// The policy of requests no rule matches; none: they are not looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<GuardPolicy>,
    /// Where refusals and findings are recorded (one audit record each); none: only counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditSink>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardRule {
    /// Shown in logs and in refusals' `detail`.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RequestMatch,
    #[serde(default)]
    pub policy: GuardPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardPolicy {
    #[serde(default)]
    pub limits: Limits,
    /// Allowed methods (upper case); empty: any. Others get 405.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Allowed request media types (`application/json`, `text/*`); empty: any. Checked only
    /// on requests with a body; others get 415.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// Refuse paths Envoy's normalization leaves ambiguous: encoded `/` or `\`, dot segments
    /// after percent-decoding, NUL and control characters, invalid percent escapes.
    #[serde(default = "crate::yes")]
    pub strict_path: bool,
    /// Bodies longer than this pass unscanned and are counted (`nexus_guard.unscanned`).
    #[serde(default = "default_max_scan_bytes")]
    pub max_scan_bytes: u32,
    #[serde(default)]
    pub request: BodyPolicy,
    #[serde(default)]
    pub response: BodyPolicy,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            methods: Vec::new(),
            content_types: Vec::new(),
            strict_path: true,
            max_scan_bytes: default_max_scan_bytes(),
            request: BodyPolicy::default(),
            response: BodyPolicy::default(),
        }
    }
}

/// Request limits; each refusal names its limit. 0 switches a limit off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Request headers, pseudo-headers included (400 `too_many_headers`).
    #[serde(default = "default_max_headers")]
    pub max_headers: u32,
    /// Sum of header name and value bytes (400 `headers_too_large`).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// `:path` bytes, query included (400 `url_too_long`).
    #[serde(default = "default_max_url_bytes")]
    pub max_url_bytes: u32,
    /// Request body bytes, declared or received (413 `body_too_large`).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
    /// Nesting of JSON request bodies (400 `json_too_deep`).
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: u32,
    /// Object members plus array elements of JSON request bodies (400 `json_too_many_fields`).
    #[serde(default = "default_max_json_fields")]
    pub max_json_fields: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            max_url_bytes: default_max_url_bytes(),
            max_body_bytes: default_max_body_bytes(),
            max_json_depth: default_max_json_depth(),
            max_json_fields: default_max_json_fields(),
        }
    }
}

/// What one direction does with the PII found in its body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyPolicy {
    #[serde(default)]
    pub action: PiiAction,
    /// Detectors that run; empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<Detector>,
    #[serde(default)]
    pub fields: FieldLists,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PiiAction {
    /// The body is not scanned.
    #[default]
    Off,
    /// Findings are counted (`nexus_guard.<direction>.findings.<type>`); the body streams on.
    Detect,
    /// Findings are masked in place (`[REDACTED:<type>]`) and JSON stays valid. The body is
    /// buffered up to `max_scan_bytes`; its `content-length` is removed (Envoy sends the new
    /// body chunked), since Proxy-Wasm forwards headers before the body is seen.
    Redact,
    /// Any finding refuses the exchange, naming the finding types, never their values: a
    /// request gets 422 `pii_detected` (its headers have reached the upstream, its body never
    /// does); a response's body is replaced by `{"error": "pii_in_response", ...}` (its
    /// status has already gone out).
    Block,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Ip,
    Jwt,
    ApiKey,
    /// High-entropy values of key-like JSON fields (`password`, `client_secret`, ...).
    Secret,
}

/// JSON field names (case-insensitive, exact): `allow` values are never reported, `deny`
/// values are always reported (type `field`), whatever they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldLists {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// Envoy buffers at most about this much per direction by default; scanning more would need
/// a larger `per_connection_buffer_limit_bytes` anyway.
pub const MAX_SCAN_BYTES_LIMIT: u32 = 16 * 1024 * 1024;

fn default_max_scan_bytes() -> u32 {
    1024 * 1024
}
fn default_max_headers() -> u32 {
    100
}
fn default_max_header_bytes() -> u32 {
    32 * 1024
}
fn default_max_url_bytes() -> u32 {
    8 * 1024
}
fn default_max_body_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_max_json_depth() -> u32 {
    64
}
fn default_max_json_fields() -> u32 {
    100_000
}

impl Validate for GuardConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
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
            rule.policy.validate(&format!("{at}.policy"), errors);
        }
        if let Some(d) = &self.default {
            d.validate(&format!("{path}.default"), errors);
        }
        if let Some(a) = &self.audit {
            a.validate(&format!("{path}.audit"), errors);
        }
    }
}

impl Validate for GuardPolicy {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.max_scan_bytes > MAX_SCAN_BYTES_LIMIT {
            errors.push(ConfigError::new(
                format!("{path}.max_scan_bytes"),
                format!("{} is above {MAX_SCAN_BYTES_LIMIT}", self.max_scan_bytes),
            ));
        }
        for (i, m) in self.methods.iter().enumerate() {
            if m.is_empty() || m.bytes().any(|b| !b.is_ascii_uppercase()) {
                errors.push(ConfigError::new(
                    format!("{path}.methods[{i}]"),
                    format!("{m:?} is not an upper-case method"),
                ));
            }
        }
        for (i, c) in self.content_types.iter().enumerate() {
            if !c.contains('/') {
                errors.push(ConfigError::new(
                    format!("{path}.content_types[{i}]"),
                    format!("{c:?} is not a media type (type/subtype)"),
                ));
            }
        }
        for (dir, body) in [("request", &self.request), ("response", &self.response)] {
            for (i, f) in body.fields.allow.iter().enumerate() {
                if body.fields.deny.iter().any(|d| d.eq_ignore_ascii_case(f)) {
                    errors.push(ConfigError::new(
                        format!("{path}.{dir}.fields.allow[{i}]"),
                        format!("{f:?} is in both allow and deny"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_yaml_parses_and_defaults_fill_in() {
        let json = r#"{"rules":[{"name":"w","match":{"path":{"prefix":"/lake/"}},
            "policy":{"methods":["POST"],"request":{"action":"block","detectors":["card"]},
            "response":{"action":"redact","fields":{"allow":["order_id"],"deny":["password"]}}}}]}"#;
        let c: GuardConfig = crate::parse(json.as_bytes()).unwrap();
        let p = &c.rules[0].policy;
        assert_eq!(p.request.action, PiiAction::Block);
        assert_eq!(p.response.action, PiiAction::Redact);
        assert!(p.strict_path);
        assert_eq!(p.limits, Limits::default());
        assert_eq!(p.max_scan_bytes, 1024 * 1024);
    }

    #[test]
    fn problems_are_reported_with_their_paths() {
        let json = r#"{"rules":[{"name":"a","policy":{"methods":["get"],
            "content_types":["json"],"max_scan_bytes":99999999,
            "request":{"fields":{"allow":["x"],"deny":["X"]}}}},{"name":"a"}]}"#;
        let e = crate::parse::<GuardConfig>(json.as_bytes()).unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.rules[0].policy.max_scan_bytes",
                "$.rules[0].policy.methods[0]",
                "$.rules[0].policy.content_types[0]",
                "$.rules[0].policy.request.fields.allow[0]",
                "$.rules[1].name"
            ]
        );
        let e = crate::parse::<GuardConfig>(
            br#"{"rules":[{"name":"a","policy":{"request":{"action":"mask"}}}]}"#,
        )
        .unwrap_err();
        assert!(
            e.0[0].path.starts_with("$.rules[0].policy.request.action"),
            "{e}"
        );
    }
}
