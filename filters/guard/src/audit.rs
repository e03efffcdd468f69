//! A guard decision as an audit record: one JSON object with the rule, what happened, the
//! finding types and who asked (see [`RequestMeta`]), never a body, a value or a credential.

use nexus_filter_core::audit::RequestMeta;
use serde_json::json;

use crate::{Decision, Dir};

/// The record of `d` (one line of JSON).
pub fn record(d: &Decision, meta: &RequestMeta, time_ms: u64) -> String {
    let mut r = serde_json::Map::new();
    meta.fill(&mut r);
    for (k, v) in [
        ("source", json!("nexus-guard")),
        ("event", json!(format!("guard.{}", d.outcome.name()))),
        ("time_ms", json!(time_ms)),
        ("rule", json!(d.rule)),
        (
            "direction",
            json!(match d.direction {
                Dir::Request => "request",
                Dir::Response => "response",
            }),
        ),
        ("status", json!(d.status)),
        (
            "reason",
            if d.reason.is_empty() {
                json!(null)
            } else {
                json!(d.reason)
            },
        ),
        ("types", json!(d.types)),
    ] {
        r.insert(k.to_string(), v);
    }
    serde_json::Value::Object(r).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use nexus_filter_core::HeaderList;

    #[test]
    fn a_record_names_rule_types_and_caller_and_nothing_of_the_body() {
        let h: HeaderList = [
            (":method", "POST"),
            (":path", "/pay/alice@example.com"),
            ("x-request-id", "req-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-nexus-client-id", "alice"),
            ("x-nexus-auth-method", "jwt:datapunk"),
            ("authorization", "Bearer secret-token"),
        ]
        .into_iter()
        .collect();
        let d = Decision {
            rule: "datapunk.cortex".into(),
            direction: Dir::Request,
            outcome: Outcome::Blocked,
            status: Some(422),
            reason: "pii_detected",
            types: vec!["card"],
        };
        let text = record(&d, &RequestMeta::from_headers(&h), 1_700_000_000_000);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "source": "nexus-guard", "event": "guard.blocked", "time_ms": 1_700_000_000_000u64,
                "rule": "datapunk.cortex", "direction": "request", "status": 422,
                "reason": "pii_detected", "types": ["card"], "method": "POST",
                "request_id": "req-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "client": "alice", "auth_method": "jwt:datapunk",
            })
        );
        assert!(
            !text.contains("example.com") && !text.contains("secret"),
            "{text}"
        );
        let anonymous = record(&d, &RequestMeta::default(), 1);
        assert!(anonymous.contains("\"client\":null"), "{anonymous}");
    }
}
