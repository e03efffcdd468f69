//! The one line nexus-auth logs per decided request, with the request's ids (see
//! [`nexus_filter_core::request_log`]): who was let in and how, or why not.

use nexus_filter_core::request_log::{log_request, RequestIds};
use nexus_filter_core::{HeaderMap, Log};

use crate::Outcome;

/// Logs a decided request: `allowed` with `method` and `client_id` (`none` where the rule asks
/// for no credentials), or `denied` with `status` and `reason` (Envoy's response details). A
/// paused request logs when it is decided.
pub fn log_outcome(outcome: &Outcome, headers: &impl HeaderMap, log: &impl Log) {
    let ids = || RequestIds::from_headers(headers);
    match outcome {
        Outcome::Continue(Some(identity)) => {
            let fields = [
                ("method", identity.method.as_str()),
                ("client_id", identity.client_id.as_str()),
            ];
            log_request(log, ids, "allowed", &fields);
        }
        Outcome::Continue(None) => log_request(log, ids, "allowed", &[("method", "none")]),
        Outcome::Respond(resp) => {
            let status = resp.status.to_string();
            let fields = [
                ("status", status.as_str()),
                ("reason", resp.details.as_str()),
            ];
            log_request(log, ids, "denied", &fields);
        }
        Outcome::Pause => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use nexus_filter_core::testing::{MemHeaders, MemLog};
    use nexus_filter_core::LocalResponse;

    fn line(outcome: &Outcome) -> Option<String> {
        let headers = MemHeaders::new(&[
            ("x-request-id", "req-7"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        let log = MemLog::default();
        log_outcome(outcome, &headers, &log);
        let lines = log.0.borrow();
        assert!(lines.len() <= 1, "{lines:?}");
        lines.first().map(|(_, l)| l.clone())
    }

    #[test]
    fn allowed_and_denied_requests_log_their_ids_and_why() {
        let allowed = line(&Outcome::Continue(Some(Identity {
            client_id: "alice".into(),
            method: "jwt:datapunk".into(),
        })))
        .unwrap();
        assert_eq!(
            allowed,
            r#"[Tags: "correlation_id":"req-7","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","method":"jwt:datapunk","client_id":"alice"] allowed"#
        );
        let denied = line(&Outcome::Respond(LocalResponse::json_error(
            401,
            "missing_credentials",
            "no token",
        )))
        .unwrap();
        assert!(
            denied.starts_with(r#"[Tags: "correlation_id":"req-7","#),
            "{denied}"
        );
        assert!(
            denied.ends_with(r#""status":"401","reason":"nexus_missing_credentials"] denied"#),
            "{denied}"
        );
        assert_eq!(line(&Outcome::Pause), None);
    }
}
