//! A denial as an audit record: the rule, the client it counted and the status, never a
//! credential (the descriptors' header values are left out: a `by: Header` limit may count
//! on anything).

use nexus_filter_core::audit::RequestMeta;
use nexus_filter_core::LocalResponse;
use serde_json::json;

/// The record of a 429 (one line of JSON).
pub fn record(denial: &LocalResponse, meta: &RequestMeta, time_ms: u64) -> String {
    let mut r = serde_json::Map::new();
    meta.fill(&mut r);
    r.insert("source".into(), json!("nexus-ratelimit"));
    r.insert("event".into(), json!("ratelimit.deny"));
    r.insert("time_ms".into(), json!(time_ms));
    r.insert("rule".into(), json!(meta.rule));
    r.insert("status".into(), json!(denial.status));
    let reason = denial
        .details
        .strip_prefix("nexus_")
        .unwrap_or(&denial.details);
    r.insert("reason".into(), json!(reason));
    serde_json::Value::Object(r).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_names_rule_client_and_status() {
        let meta = RequestMeta {
            method: "GET".into(),
            rule: "datapunk.cortex".into(),
            client: "alice".into(),
            ..Default::default()
        };
        let denial = LocalResponse::json_error(429, "rate_limited", "5 per minute");
        let v: serde_json::Value = serde_json::from_str(&record(&denial, &meta, 7)).unwrap();
        assert_eq!(v["event"], "ratelimit.deny");
        assert_eq!(
            (v["rule"].as_str(), v["client"].as_str()),
            (Some("datapunk.cortex"), Some("alice"))
        );
        assert_eq!(
            (v["status"].as_u64(), v["reason"].as_str()),
            (Some(429), Some("rate_limited"))
        );
    }
}
