//! An auth decision as an audit record: an allow of an identified caller (client and auth
//! method) or a deny (status and reason), never the token or key. Anonymous allows (rules
//! that let everyone in) are not decisions about anyone and are not recorded.

use nexus_filter_core::audit::RequestMeta;
use serde_json::json;

use crate::Outcome;

/// The record of `outcome` (one line of JSON), if it is one the audit log keeps.
pub fn record(outcome: &Outcome, meta: &RequestMeta, time_ms: u64) -> Option<String> {
    let mut meta = meta.clone();
    let (event, status, reason) = match outcome {
        Outcome::Continue(Some(identity)) => {
            meta.client = identity.client_id.clone();
            meta.auth_method = identity.method.clone();
            ("auth.allow", None, None)
        }
        Outcome::Respond(r) => {
            // Client-sent identity headers are not the caller's: auth removes them first.
            meta.client.clear();
            meta.auth_method.clear();
            let reason = r.details.strip_prefix("nexus_").unwrap_or(&r.details);
            ("auth.deny", Some(r.status), Some(reason.to_string()))
        }
        Outcome::Continue(None) | Outcome::Pause => return None,
    };
    let mut r = serde_json::Map::new();
    meta.fill(&mut r);
    r.insert("source".into(), json!("nexus-auth"));
    r.insert("event".into(), json!(event));
    r.insert("time_ms".into(), json!(time_ms));
    r.insert("rule".into(), json!(meta.rule));
    r.insert("status".into(), json!(status));
    r.insert("reason".into(), json!(reason));
    Some(serde_json::Value::Object(r).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use nexus_filter_core::LocalResponse;

    fn meta() -> RequestMeta {
        RequestMeta {
            method: "GET".into(),
            rule: "datapunk.lake".into(),
            request_id: "req-1".into(),
            client: "forged".into(),
            ..Default::default()
        }
    }

    #[test]
    fn allows_name_client_and_method_and_denies_their_reason() {
        let allow = Outcome::Continue(Some(Identity {
            client_id: "alice".into(),
            method: "jwt:datapunk".into(),
        }));
        let v: serde_json::Value =
            serde_json::from_str(&record(&allow, &meta(), 5).unwrap()).unwrap();
        assert_eq!(v["event"], "auth.allow");
        assert_eq!(
            (v["client"].as_str(), v["auth_method"].as_str()),
            (Some("alice"), Some("jwt:datapunk"))
        );
        assert_eq!(
            (v["rule"].as_str(), v["method"].as_str()),
            (Some("datapunk.lake"), Some("GET"))
        );

        let deny = Outcome::Respond(LocalResponse::json_error(
            401,
            "missing_credentials",
            "no token",
        ));
        let v: serde_json::Value =
            serde_json::from_str(&record(&deny, &meta(), 5).unwrap()).unwrap();
        assert_eq!(v["event"], "auth.deny");
        assert_eq!(
            (v["status"].as_u64(), v["reason"].as_str()),
            (Some(401), Some("missing_credentials"))
        );
        assert_eq!(
            v["client"],
            serde_json::Value::Null,
            "a client-sent id is not recorded"
        );

        assert_eq!(record(&Outcome::Continue(None), &meta(), 5), None);
        assert_eq!(record(&Outcome::Pause, &meta(), 5), None);
    }
}
