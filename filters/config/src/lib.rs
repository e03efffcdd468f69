//! Configuration of every Nexus filter.
//!
//! These types are the single source of truth: the controller renders them into EnvoyFilter /
//! Envoy bootstrap `configuration` values, the filters parse them back with [`parse`], and the
//! JSON Schema published for users comes from `schemars`. Nothing here depends on proxy-wasm,
//! so it builds natively and for `wasm32-unknown-unknown` alike.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod contract;
mod error;
pub mod guard;
pub mod ratelimit;
pub mod ratelimit_filter;
pub mod report;
pub mod router;
pub mod router_graphql;
pub mod session;

pub use error::{ConfigError, ConfigErrors};

use serde::de::DeserializeOwned;

/// A filter configuration that can check itself beyond what its types express.
pub trait Validate {
    /// Pushes every problem found, each with its JSON path (rooted at `path`).
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>);
}

/// Parses and validates a filter configuration, reporting every problem with its JSON path.
///
/// Deserialization stops at the first type error (serde cannot go on from there); semantic
/// validation then reports all problems at once.
pub fn parse<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, ConfigErrors> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = json_path(&e.path().to_string());
        ConfigErrors::one(path, e.inner().to_string())
    })?;
    let mut errors = Vec::new();
    value.validate("$", &mut errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// `serde_path_to_error` prints `rules[0].match` or `.` for the root; we print `$.rules[0].match`.
fn json_path(p: &str) -> String {
    if p.is_empty() || p == "." {
        "$".to_string()
    } else if p.starts_with('[') {
        format!("${p}")
    } else {
        format!("$.{p}")
    }
}

/// The JSON Schema of a configuration type, pretty-printed.
pub fn schema_json<T: schemars::JsonSchema>() -> String {
    let schema = schemars::schema_for!(T);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// The Envoy `vm_id` for a filter running `configuration`: the filter name and a hash of the
/// configuration.
///
/// Nexus filters run one configuration per VM (they do not export `proxy_on_context_create`,
/// which saves a call into the VM per request, so a VM cannot tell its plugins' streams apart).
/// Envoy shares a VM between plugins with the same `vm_id` and code; a distinct id per
/// configuration gives a changed configuration its own VM. Shared data is scoped by `vm_id`
/// too, so every worker running one configuration still shares one copy.
pub fn vm_id(filter: &str, configuration: &str) -> String {
    // FNV-1a: stable across builds and platforms, which `std`'s hasher does not promise.
    let hash = configuration
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{filter}.{hash:016x}")
}

/// `#[serde(default = "crate::yes")]`: a switch that is on unless configured off.
fn yes() -> bool {
    true
}

#[cfg(test)]
mod vm_id_tests {
    #[test]
    fn vm_id_differs_per_configuration_and_is_stable() {
        let a = super::vm_id("nexus.auth", r#"{"rules":[]}"#);
        assert_eq!(a, super::vm_id("nexus.auth", r#"{"rules":[]}"#));
        assert_ne!(a, super::vm_id("nexus.auth", r#"{"rules":[{}]}"#));
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(super::vm_id("f", ""), "f.cbf29ce484222325");
    }
}
