//! Log lines about one request, carrying its ids as fields.
//!
//! Every Nexus log line names a request the same way (`nexus_config::contract`, the one
//! vocabulary): [`CORRELATION_ID`] is `x-request-id`, which nexus-router keeps when valid or
//! makes; [`TRACE_ID`] is the trace id of W3C `traceparent`, which it keeps or makes too.
//!
//! A filter can only hand Envoy a message string, so the fields travel in the message in
//! Envoy's own tagged-log syntax, `[Tags: "correlation_id":"…","trace_id":"…"] routed`. Envoy
//! lifts such tags into fields (`%*` in its log format) only when they open the message, and a
//! wasm line always opens with `wasm log <plugin> <root id> <vm id>: `; so whoever writes Envoy's log
//! as JSON lifts them after that prefix (`nexus up` does: `controller/src/standalone/envoy_log.rs`).
//!
//! Per-request lines are [`REQUEST_LEVEL`] (debug): at info, every request would log one line
//! per filter, a second access log nobody asked for in production. Nothing is read or
//! formatted unless the host logs that level ([`Log::enabled`]).

use crate::host::{HeaderMap, Level, Log};

pub use nexus_config::contract::{
    LOG_CORRELATION_ID as CORRELATION_ID, LOG_TAGS_OPEN as TAGS_OPEN, LOG_TRACE_ID as TRACE_ID,
};

/// The level of the one line a filter logs per request.
pub const REQUEST_LEVEL: Level = Level::Debug;

/// A request's ids, as its headers carry them after nexus-router.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestIds {
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
}

impl RequestIds {
    /// From `x-request-id` and `traceparent` values; a `traceparent` without a trace id
    /// (another format) gives none.
    pub fn new(request_id: Option<&str>, traceparent: Option<&str>) -> Self {
        Self {
            correlation_id: request_id.map(str::to_string),
            trace_id: traceparent.and_then(trace_id_of).map(str::to_string),
        }
    }

    /// Two header reads: for filters after nexus-router, which set both.
    pub fn from_headers(headers: &impl HeaderMap) -> Self {
        Self::new(
            headers.get("x-request-id").as_deref(),
            headers.get("traceparent").as_deref(),
        )
    }
}

/// The trace id of a W3C `traceparent` (`version-traceid-parentid-flags`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let trace = traceparent.split('-').nth(1)?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

/// Logs `message` about one request at [`REQUEST_LEVEL`], with its ids (read by `ids` only
/// when the host logs that level) and `fields`.
pub fn log_request(
    log: &(impl Log + ?Sized),
    ids: impl FnOnce() -> RequestIds,
    message: &str,
    fields: &[(&str, &str)],
) {
    if log.enabled(REQUEST_LEVEL) {
        log.log(REQUEST_LEVEL, &tagged(&ids(), fields, message));
    }
}

/// `[Tags: "correlation_id":…,"trace_id":…,"<field>":"<value>"…] message`: the tags are a JSON
/// object's members (an absent id is `null`), every string escaped.
pub fn tagged(ids: &RequestIds, fields: &[(&str, &str)], message: &str) -> String {
    let mut out = String::with_capacity(96 + message.len());
    out.push_str(TAGS_OPEN);
    member(&mut out, CORRELATION_ID, ids.correlation_id.as_deref());
    out.push(',');
    member(&mut out, TRACE_ID, ids.trace_id.as_deref());
    for (name, value) in fields {
        out.push(',');
        member(&mut out, name, Some(value));
    }
    out.push_str("] ");
    out.push_str(message);
    out
}

fn member(out: &mut String, name: &str, value: Option<&str>) {
    json_string(out, name);
    out.push(':');
    match value {
        Some(v) => json_string(out, v),
        None => out.push_str("null"),
    }
}

/// `s` as a JSON string literal (serializing a `&str` cannot fail; `null` if it ever did).
fn json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(literal) => out.push_str(&literal),
        Err(_) => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MemHeaders, MemLog};
    use std::cell::Cell;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A host that logs only `min` and above, counting what it was asked.
    struct Threshold {
        min: Level,
        lines: MemLog,
    }
    impl Log for Threshold {
        fn log(&self, level: Level, message: &str) {
            self.lines.log(level, message);
        }
        fn enabled(&self, level: Level) -> bool {
            level >= self.min
        }
    }

    /// The tags as the JSON object a log reader makes of them.
    fn tags_of(line: &str) -> (serde_json::Value, &str) {
        let rest = line.strip_prefix(TAGS_OPEN).unwrap();
        let end = rest.find("] ").unwrap();
        let obj = serde_json::from_str(&format!("{{{}}}", &rest[..end])).unwrap();
        (obj, &rest[end + 2..])
    }

    #[test]
    fn ids_come_from_the_headers_the_router_sets() {
        let h = MemHeaders::new(&[("x-request-id", "req-1"), ("traceparent", TRACEPARENT)]);
        let ids = RequestIds::from_headers(&h);
        assert_eq!(ids.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(
            ids.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            RequestIds::from_headers(&MemHeaders::new(&[])),
            RequestIds::default()
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-abc-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn a_line_carries_the_ids_and_fields_as_json_members_and_escapes_them() {
        let ids = RequestIds::new(Some("req-1"), None);
        let line = tagged(&ids, &[("reason", "bad \"key\"\n\u{1}")], "denied");
        let (tags, message) = tags_of(&line);
        assert_eq!(message, "denied");
        assert_eq!(tags["correlation_id"], "req-1");
        assert!(tags["trace_id"].is_null(), "{line}");
        assert_eq!(tags["reason"], "bad \"key\"\n\u{1}");
    }

    #[test]
    fn nothing_is_read_or_logged_below_the_hosts_level() {
        let reads = Cell::new(0);
        let ids = || {
            reads.set(reads.get() + 1);
            RequestIds::new(Some("req-1"), Some(TRACEPARENT))
        };
        let info = Threshold {
            min: Level::Info,
            lines: MemLog::default(),
        };
        log_request(&info, ids, "routed", &[("rule", "lake")]);
        assert_eq!(reads.get(), 0);
        assert!(info.lines.0.borrow().is_empty());

        let debug = Threshold {
            min: Level::Debug,
            lines: MemLog::default(),
        };
        let ids = || {
            reads.set(reads.get() + 1);
            RequestIds::new(Some("req-1"), Some(TRACEPARENT))
        };
        log_request(&debug, ids, "routed", &[("rule", "lake")]);
        assert_eq!(reads.get(), 1);
        let lines = debug.lines.0.borrow();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, Level::Debug);
        let (tags, message) = tags_of(&lines[0].1);
        assert_eq!(message, "routed");
        assert_eq!(tags["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tags["rule"], "lake");
    }
}
