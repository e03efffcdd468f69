//! What Nexus publishes on `service.events`: each event's `type`, routing key and data.
//!
//! Routing keys are `nexus.<area>.<what>[.<who>...]`, so a consumer binds with wildcards:
//! `nexus.route.#` (every route event), `nexus.route.rejected.*.*` (rejections only),
//! `nexus.ratelimit.over_limit.lake-read` (one rule). A key segment never contains a dot: dots
//! (legal in Kubernetes names) become `_` there; the data keeps the real name.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// A route, by Kubernetes identity; the data of `nexus.route.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RouteData {
    pub namespace: String,
    pub name: String,
    /// `metadata.generation` the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Why it was rejected: JSON path and reason (`rejected` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A configuration version applied to Envoy (`nexus up`) or to the mesh (controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigData {
    pub version: u64,
    pub routes: u32,
    pub rules: u32,
}

/// Cached responses dropped everywhere: by key, key prefix or tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSelection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FlushData {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionData {
    /// The session or token id (`jti`) revoked.
    pub session: String,
}

/// Requests refused by one rate-limit rule for one client during one interval: a summary,
/// never one message per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OverLimitData {
    pub rule: String,
    pub client: String,
    /// Requests refused in the interval.
    pub count: u64,
    /// The interval, RFC 3339.
    pub from: String,
    pub to: String,
}

/// An event Nexus publishes. `Events::publish` wraps it in an [`Envelope`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `nexus.route.accepted` (valid, no conflict), `.programmed` (objects applied),
    /// `.rejected` (with `reason`), `.deleted`.
    Route(RouteStage, RouteData),
    ConfigApplied(ConfigData),
    CacheInvalidated(CacheSelection),
    CacheFlushed(FlushData),
    SessionRevoked(SessionData),
    OverLimit(OverLimitData),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteStage {
    Accepted,
    Programmed,
    Rejected,
    Deleted,
}

impl RouteStage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Programmed => "programmed",
            Self::Rejected => "rejected",
            Self::Deleted => "deleted",
        }
    }
}

impl Event {
    /// A route event; `reason` only for `Rejected`.
    pub fn route(stage: RouteStage, namespace: &str, name: &str, generation: Option<i64>) -> Self {
        Self::Route(
            stage,
            RouteData {
                namespace: namespace.to_string(),
                name: name.to_string(),
                generation,
                reason: None,
            },
        )
    }

    pub fn route_rejected(
        namespace: &str,
        name: &str,
        generation: Option<i64>,
        reason: &str,
    ) -> Self {
        let mut e = Self::route(RouteStage::Rejected, namespace, name, generation);
        if let Self::Route(_, d) = &mut e {
            d.reason = Some(reason.to_string());
        }
        e
    }

    /// The envelope's `type`.
    pub fn kind(&self) -> String {
        match self {
            Self::Route(stage, _) => format!("nexus.route.{}", stage.as_str()),
            Self::ConfigApplied(_) => "nexus.config.applied".into(),
            Self::CacheInvalidated(_) => "nexus.cache.invalidated".into(),
            Self::CacheFlushed(_) => "nexus.cache.flushed".into(),
            Self::SessionRevoked(_) => "nexus.session.revoked".into(),
            Self::OverLimit(_) => "nexus.ratelimit.over_limit".into(),
        }
    }

    /// The routing key on `service.events`.
    pub fn routing_key(&self) -> String {
        match self {
            Self::Route(_, d) => {
                format!("{}.{}.{}", self.kind(), word(&d.namespace), word(&d.name))
            }
            Self::OverLimit(d) => format!("{}.{}", self.kind(), word(&d.rule)),
            _ => self.kind(),
        }
    }

    /// The envelope's `subject`.
    pub fn subject(&self) -> Option<String> {
        match self {
            Self::Route(_, d) => Some(format!("{}/{}", d.namespace, d.name)),
            Self::OverLimit(d) => Some(format!("{}/{}", d.rule, d.client)),
            Self::SessionRevoked(d) => Some(d.session.clone()),
            _ => None,
        }
    }

    /// The data, as the envelope carries it.
    pub fn data(&self) -> serde_json::Value {
        let v = match self {
            Self::Route(_, d) => serde_json::to_value(d),
            Self::ConfigApplied(d) => serde_json::to_value(d),
            Self::CacheInvalidated(d) => serde_json::to_value(d),
            Self::CacheFlushed(d) => serde_json::to_value(d),
            Self::SessionRevoked(d) => serde_json::to_value(d),
            Self::OverLimit(d) => serde_json::to_value(d),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// `(routing key, envelope)` from `source`.
    pub fn into_envelope(self, source: &str) -> (String, Envelope) {
        let mut env = Envelope::new(self.kind(), source, self.data());
        env.subject = self.subject();
        (self.routing_key(), env)
    }
}

/// The data of any event, for the JSON Schema (a consumer reads `type` first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EventData {
    Route(RouteData),
    ConfigApplied(ConfigData),
    CacheInvalidated(CacheSelection),
    CacheFlushed(FlushData),
    SessionRevoked(SessionData),
    OverLimit(OverLimitData),
}

/// One topic word: no `.` (a separator), `*` or `#` (wildcards), never empty.
pub fn word(s: &str) -> String {
    let w: String = s
        .chars()
        .map(|c| if matches!(c, '.' | '*' | '#') { '_' } else { c })
        .collect();
    if w.is_empty() {
        "_".to_string()
    } else {
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_bind_with_wildcards() {
        let e = Event::route(RouteStage::Programmed, "data", "lake.v1", Some(3));
        assert_eq!(e.routing_key(), "nexus.route.programmed.data.lake_v1");
        assert_eq!(e.subject().as_deref(), Some("data/lake.v1"));
        let r = Event::route_rejected("data", "x", None, "$.spec.rules[0]: bad");
        assert_eq!(r.routing_key(), "nexus.route.rejected.data.x");
        assert_eq!(r.data()["reason"], "$.spec.rules[0]: bad");
        let o = Event::OverLimit(OverLimitData {
            rule: "cortex-infer".into(),
            client: "alice".into(),
            count: 7,
            from: "a".into(),
            to: "b".into(),
        });
        assert_eq!(o.routing_key(), "nexus.ratelimit.over_limit.cortex-infer");
        let c = Event::CacheInvalidated(CacheSelection::default());
        assert_eq!(c.routing_key(), "nexus.cache.invalidated");
        assert_eq!(word(""), "_");
    }
}
