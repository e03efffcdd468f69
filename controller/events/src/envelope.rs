//! The versioned JSON envelope every message on the bus carries, events and commands alike.
//! Attribute names are CloudEvents 1.0's (structured content mode), so CloudEvents SDKs read
//! it as is; `correlationid` and `nexusversion` are extension attributes (lowercase, as the
//! spec requires).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CloudEvents version of the envelope.
pub const SPEC_VERSION: &str = "1.0";
/// Version of Nexus's envelope and data types; bumped on a breaking change of either, so a
/// consumer can refuse what it does not know instead of misreading it.
pub const NEXUS_VERSION: u32 = 1;
pub const CONTENT_TYPE: &str = "application/json";

/// One message: an event on `service.events` or a command on `service.commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<D = serde_json::Value> {
    /// Always "1.0".
    pub specversion: String,
    /// Unique per message (128 random bits, hex); also the AMQP `message_id`. Consumers
    /// deduplicate by it: delivery is at least once.
    pub id: String,
    /// What happened (`nexus.route.programmed`) or what to do (`cache.invalidate`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Who sent it: `nexus://<deployment>/<replica>` for Nexus's own events.
    pub source: String,
    /// When it happened, RFC 3339.
    pub time: String,
    /// What it is about (`<namespace>/<name>` of a route, a rule, a client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Ties related messages together: a command's events, an RPC reply, a request's trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// Always "application/json".
    pub datacontenttype: String,
    /// [`NEXUS_VERSION`] of the sender.
    pub nexusversion: u32,
    /// The type's payload (see the `Data` schema for each type's fields).
    pub data: D,
}

impl<D> Envelope<D> {
    /// A new envelope with a fresh id and the current time.
    pub fn new(kind: impl Into<String>, source: impl Into<String>, data: D) -> Self {
        Self {
            specversion: SPEC_VERSION.to_string(),
            id: new_id(),
            kind: kind.into(),
            source: source.into(),
            time: jiff::Timestamp::now().to_string(),
            subject: None,
            correlationid: None,
            datacontenttype: CONTENT_TYPE.to_string(),
            nexusversion: NEXUS_VERSION,
            data,
        }
    }

    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn with_correlation(mut self, id: impl Into<String>) -> Self {
        self.correlationid = Some(id.into());
        self
    }
}

/// 128 random bits, hex.
pub fn new_id() -> String {
    nexus_telemetry::new_trace_id()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn serializes_with_cloudevents_attribute_names() {
        let e = Envelope::new("nexus.test", "nexus://t/r", serde_json::json!({"a": 1}))
            .with_subject("ns/name")
            .with_correlation("c1");
        let v = serde_json::to_value(&e).unwrap();
        for attr in [
            "specversion",
            "id",
            "type",
            "source",
            "time",
            "subject",
            "correlationid",
            "datacontenttype",
            "nexusversion",
            "data",
        ] {
            assert!(v.get(attr).is_some(), "{attr} missing in {v}");
        }
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(e.id.len(), 32);
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
