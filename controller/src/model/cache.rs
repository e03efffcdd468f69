//! A rule's response caching: the CRD's `cache` as the cache filter's policy.

use nexus_config::cache::{CachePolicy, KeyBy};
use nexus_config::Validate;

use crate::crd::{CacheKeyBy, CacheSpec};

use super::problem::Ctx;

/// A rule's cache policy, and the paths to keep warm.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCache {
    pub policy: CachePolicy,
    pub warm: Vec<String>,
}

/// The policy, with the cache filter's serde defaults for what the CRD leaves out; `None` when
/// the TTL is invalid or under a second (reported).
pub(super) fn compile(cx: &mut Ctx, c: &CacheSpec, path: &str) -> Option<RuleCache> {
    let ttl_ms = cx.duration(&Some(c.ttl.clone()), &format!("{path}.ttl"))?;
    if ttl_ms < 1000 {
        cx.bad(format!("{path}.ttl"), "must be at least 1s");
        return None;
    }
    let defaults: CachePolicy = serde_json::from_value(serde_json::json!({ "ttl": 1 })).ok()?;
    let policy = CachePolicy {
        ttl: ttl_ms / 1000,
        methods: if c.methods.is_empty() {
            defaults.methods.clone()
        } else {
            c.methods.clone()
        },
        vary: c.vary.iter().map(|h| h.to_ascii_lowercase()).collect(),
        key_by: match c.key_by {
            Some(CacheKeyBy::Client) => KeyBy::Client,
            _ => KeyBy::Shared,
        },
        respect_cache_control: c.respect_cache_control.unwrap_or(true),
        max_object_bytes: c.max_object_bytes.unwrap_or(defaults.max_object_bytes),
        tags_header: defaults.tags_header,
    };
    let mut errors = Vec::new();
    policy.validate(path, &mut errors);
    cx.take_config_errors(errors);
    for (i, w) in c.warm.iter().enumerate() {
        if !w.starts_with('/') {
            cx.bad(
                format!("{path}.warm[{i}]"),
                format!("{w:?} is not a path (it must start with /)"),
            );
        }
    }
    Some(RuleCache {
        policy,
        warm: c.warm.clone(),
    })
}
