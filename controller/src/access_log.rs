//! Envoy's access log as Nexus renders it: one JSON object per request, with the field names
//! of Nexus's own JSON logs (`timestamp`, `service`, `correlation_id`, `trace_id`), and
//! [`Entry`], the same line read back (the request metrics are counted from it).
//!
//! Envoy measures and decides everything in a line (duration, status, response flags); the
//! Nexus filters only contribute the `x-nexus-*` headers they set anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};

use crate::request_metrics::RequestMetrics;

/// The `service` of Envoy's access-log lines.
pub const SERVICE: &str = "envoy";

/// Envoy's `json_format`: field name → command operator. `correlation_id` is the request id
/// the router keeps or makes (`x-request-id`); `trace_id` is W3C `traceparent`'s trace id.
pub fn json_format() -> Value {
    json!({
        "timestamp": "%START_TIME%",
        "service": SERVICE,
        "correlation_id": "%REQ(X-REQUEST-ID)%",
        "trace_id": "%TRACE_ID%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "response_flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "category": "%REQ(X-NEXUS-CATEGORY)%",
        "upstream": "%REQ(X-NEXUS-UPSTREAM)%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "rule": "%REQ(X-NEXUS-RULE)%",
        "client": "%REQ(X-NEXUS-CLIENT-ID)%",
        "cache": "%RESP(X-NEXUS-CACHE)%",
    })
}

/// One access-log line, read back. Envoy writes `-` or null for a missing value and numbers
/// either as numbers or strings; both read the same here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub method: String,
    pub status: u16,
    pub details: String,
    pub response_flags: String,
    pub duration_ms: u64,
    pub category: Option<String>,
    pub upstream: Option<String>,
    pub rule: Option<String>,
    pub cache: Option<String>,
}

impl Entry {
    /// None for a line that is not one of these objects (a partial write, another format).
    pub fn parse(line: &str) -> Option<Entry> {
        let v: Value = serde_json::from_str(line).ok()?;
        let text = |k: &str| match &v[k] {
            Value::String(s) if !s.is_empty() && s != "-" => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let number = |k: &str| text(k).and_then(|s| s.parse::<u64>().ok());
        Some(Entry {
            method: text("method").unwrap_or_default(),
            status: u16::try_from(number("status")?).ok()?,
            details: text("details").unwrap_or_default(),
            response_flags: text("response_flags").unwrap_or_default(),
            duration_ms: number("duration_ms").unwrap_or(0),
            category: text("category"),
            upstream: text("upstream"),
            rule: text("rule"),
            cache: text("cache"),
        })
    }
}

/// Follows `path` (created by Envoy, possibly later) from its start, counting every complete
/// line into `metrics`; polls every `every` once at the end. Runs until the task is dropped.
pub fn spawn_follow(path: PathBuf, metrics: Arc<RequestMetrics>, every: Duration) {
    tokio::spawn(async move {
        loop {
            match follow(&path, &metrics, every).await {
                // Not yet: Envoy creates it when it starts.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %path.display(), "access log not readable: {e}"),
                Ok(()) => {}
            }
            tokio::time::sleep(every).await;
        }
    });
}

async fn follow(path: &Path, metrics: &RequestMetrics, every: Duration) -> std::io::Result<()> {
    let file = tokio::fs::File::open(path).await?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        let n = reader.read_line(&mut line).await?;
        if n == 0 {
            tokio::time::sleep(every).await;
            continue;
        }
        if !line.ends_with('\n') {
            // A line Envoy is still writing: read it again whole next time.
            reader.seek(std::io::SeekFrom::Current(-(n as i64))).await?;
            line.clear();
            tokio::time::sleep(every).await;
            continue;
        }
        metrics.observe_line(line.trim_end());
        line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_request_reads_back_with_missing_values_as_none() {
        let line = r#"{"method":"GET","status":401,"details":"nexus_missing_credentials","response_flags":"-","duration_ms":0,"category":"data_operations","upstream":"lake","rule":"lake","cache":null}"#;
        let e = Entry::parse(line).unwrap();
        assert_eq!(e.status, 401);
        assert_eq!(e.category.as_deref(), Some("data_operations"));
        assert_eq!(e.cache, None);
        assert_eq!(e.response_flags, "");
    }

    #[test]
    fn numbers_as_strings_read_the_same_and_garbage_is_none() {
        let e = Entry::parse(
            r#"{"method":"POST","status":"504","duration_ms":"30001","response_flags":"UT"}"#,
        )
        .unwrap();
        assert_eq!((e.status, e.duration_ms), (504, 30001));
        assert_eq!(Entry::parse("{\"method\":\"GET\""), None);
        assert_eq!(Entry::parse(r#"{"method":"GET"}"#), None, "no status");
    }

    #[test]
    fn the_format_uses_the_json_log_vocabulary() {
        let f = json_format();
        for field in ["timestamp", "service", "correlation_id", "trace_id"] {
            assert!(f.get(field).is_some(), "{field}");
        }
        for field in nexus_telemetry::REQUIRED_FIELDS {
            if !["level", "target", "message"].contains(&field) {
                assert!(f.get(field).is_some(), "{field}");
            }
        }
    }
}
