//! One log format for every Nexus process (`nexus controller`, `nexus up`, `nexus-ratelimit`,
//! `nexus-cache`): one JSON object per line on stderr, written by a `tracing` layer, so a value
//! with a quote or a newline can never break a line and every process uses the same names.
//!
//! | field | what |
//! |---|---|
//! | `timestamp` | RFC 3339, UTC |
//! | `level` | `error`, `warn`, `info`, `debug`, `trace` |
//! | `service` | the process: `nexus-controller`, `nexus-ratelimit`, `nexus-cache` |
//! | `trace_id` | the trace of the enclosing span (a reconcile, a request), else null |
//! | `target` | the Rust module that logged |
//! | `message` | the text |
//! | anything else | the event's own fields, by name |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,kube_runtime=warn,kube_client=warn";

/// Installs the JSON layer for `service`, filtered by `RUST_LOG` (default `info`). A second
/// call in the same process keeps the first subscriber.
pub fn init(service: &'static str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(JsonLayer { service })
        .try_init();
}

/// A random 128-bit trace id, hex (W3C trace-context format).
pub fn new_trace_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

struct TraceId(String);

#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

/// Writes one JSON object per event to stderr. A span field `trace_id` becomes the
/// `trace_id` of every event inside it.
pub struct JsonLayer {
    pub service: &'static str,
}

impl JsonLayer {
    /// The JSON line for an event with `level`, `target`, the enclosing `trace_id` and the
    /// event's fields.
    fn line(
        &self,
        level: &str,
        target: &str,
        trace_id: Option<String>,
        mut fields: Fields,
    ) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert(
            "timestamp".into(),
            jiff::Timestamp::now().to_string().into(),
        );
        obj.insert("level".into(), level.to_ascii_lowercase().into());
        obj.insert("service".into(), self.service.into());
        obj.insert("trace_id".into(), trace_id.map_or(Value::Null, Value::from));
        obj.insert("target".into(), target.into());
        if let Some(m) = fields.0.remove("message") {
            obj.insert("message".into(), m);
        }
        obj.extend(fields.0);
        Value::Object(obj).to_string()
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let (Some(Value::String(t)), Some(span)) = (f.0.get("trace_id"), ctx.span(id)) {
            span.extensions_mut().insert(TraceId(t.clone()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let trace_id = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<TraceId>().map(|t| t.0.clone()))
        });
        let meta = event.metadata();
        let line = self.line(meta.level().as_str(), meta.target(), trace_id, fields);
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// A line of this format written outside `tracing` (another program's output, wrapped), now,
/// with a null `trace_id`.
pub fn plain_line(service: &str, level: &str, target: &str, message: &str) -> String {
    serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": level,
        "service": service,
        "trace_id": null,
        "target": target,
        "message": message,
    })
    .to_string()
}

/// The fields every line has (`trace_id` may be null).
pub const REQUIRED_FIELDS: [&str; 6] = [
    "timestamp",
    "level",
    "service",
    "trace_id",
    "target",
    "message",
];

/// Reads one log line as this format: a JSON object with every [`REQUIRED_FIELDS`] key. For
/// tests of every process's output; the error says what is wrong with which line.
pub fn parse_line(line: &str) -> Result<serde_json::Map<String, Value>, String> {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return Err(format!("not a JSON object: {line}"));
    };
    match REQUIRED_FIELDS.iter().find(|k| !obj.contains_key(**k)) {
        Some(missing) => Err(format!("no {missing:?} in {line}")),
        None => Ok(obj),
    }
}

/// A child process's log lines (its stderr) as they come, read on a thread of their own.
pub fn lines_of(stderr: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads a child process's log lines (its stderr) until `enough` says so or `within` passes.
pub fn read_lines(
    stderr: impl std::io::Read + Send + 'static,
    enough: impl Fn(&[String]) -> bool,
    within: std::time::Duration,
) -> Vec<String> {
    let rx = lines_of(stderr);
    let deadline = std::time::Instant::now() + within;
    let mut lines = Vec::new();
    while !enough(&lines) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_quotes_and_newlines_is_one_valid_json_object() {
        let layer = JsonLayer {
            service: "nexus-test",
        };
        let mut fields = Fields::default();
        fields
            .0
            .insert("message".into(), "domain \"a\nb\" unknown".into());
        fields.0.insert("domain".into(), "a\"b".into());
        let line = layer.line("WARN", "nexus::x", Some("abc".into()), fields);
        assert!(!line.contains('\n'));
        let v = Value::Object(parse_line(&line).unwrap());
        assert_eq!(v["level"], "warn");
        assert_eq!(v["service"], "nexus-test");
        assert_eq!(v["trace_id"], "abc");
        assert_eq!(v["message"], "domain \"a\nb\" unknown");
        assert_eq!(v["domain"], "a\"b");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn lines_of_another_format_are_refused_with_the_reason() {
        assert!(parse_line("INFO listening")
            .unwrap_err()
            .starts_with("not a JSON object"));
        let e = parse_line(r#"{"level":"INFO","service":"x","message":"m"}"#).unwrap_err();
        assert!(e.starts_with("no \"timestamp\""), "{e}");
    }

    #[test]
    fn trace_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_trace_id(), new_trace_id());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
