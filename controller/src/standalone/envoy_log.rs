//! Envoy's log as `nexus up` writes it to `envoy.log`: one JSON object per line, in the
//! vocabulary of every Nexus log (`nexus_config::contract`), the filters' request fields lifted
//! into real fields.
//!
//! Envoy writes each line as JSON itself ([`super::envoy::LOG_FORMAT`]), lifting its own tagged
//! lines' tags into fields (`%*`). It cannot do that for the filters: it lifts tags only when
//! they open a message, and a filter's message always opens with `wasm log <plugin> <root id> <vm id>: `.
//! So Envoy's stderr comes through here: a filter's line gets its tags as fields (its
//! `correlation_id`, `trace_id`, ...), `filter` (the plugin name: `nexus.router`, ...) and the
//! bare message; every other line is copied as it is, and one that is not JSON (nothing Envoy
//! should write) is wrapped into a line of the format rather than breaking it.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nexus_config::contract::LOG_TAGS_OPEN;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead};

/// What opens a filter's message in Envoy (`wasm log{prefix}: {message}`).
const WASM_PREFIX: &str = "wasm log ";

/// Envoy's line as `envoy.log` keeps it.
pub fn normalize(line: &str) -> String {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        return wrap(line);
    };
    if let Some(Value::String(message)) = obj.get("message") {
        if let Some((filter, fields, rest)) = filter_line(message) {
            let rest = rest.to_string();
            obj.insert("filter".into(), filter.into());
            obj.extend(fields);
            obj.insert("message".into(), rest.into());
        }
    }
    Value::Object(obj).to_string()
}

/// A filter's tagged message: its plugin name, its tags and the message after them.
fn filter_line(message: &str) -> Option<(String, Map<String, Value>, &str)> {
    let after = message.strip_prefix(WASM_PREFIX)?;
    let (prefix, text) = after.split_once(": ")?;
    let filter = prefix.split_whitespace().next()?.to_string();
    let tags = text.strip_prefix(LOG_TAGS_OPEN)?;
    // The tags end at the first `] ` after which they parse: a value may contain `] ` itself.
    tags.match_indices("] ").find_map(|(end, _)| {
        match serde_json::from_str::<Value>(&format!("{{{}}}", &tags[..end])) {
            Ok(Value::Object(fields)) => Some((filter.clone(), fields, &tags[end + 2..])),
            _ => None,
        }
    })
}

/// A line Envoy wrote outside its format, as one of the format.
fn wrap(line: &str) -> String {
    nexus_telemetry::plain_line(crate::access_log::SERVICE, "info", "stderr", line)
}

/// Copies Envoy's output `from` into `to` line by line, normalized, until Envoy closes it.
/// Each line is one write, so the two streams (stdout, stderr) never interleave within a line.
pub fn spawn_copy(from: impl AsyncRead + Unpin + Send + 'static, to: Arc<Mutex<std::fs::File>>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = normalize(&line);
            out.push('\n');
            let written = match to.lock() {
                Ok(mut file) => file.write_all(out.as_bytes()),
                Err(_) => return,
            };
            if let Err(e) = written {
                tracing::warn!("writing Envoy's log failed: {e}");
                return;
            }
        }
    });
}

/// `envoy.log` in `state`, created empty, shared by the two copies.
pub fn create(path: &Path) -> std::io::Result<Arc<Mutex<std::fs::File>>> {
    Ok(Arc::new(Mutex::new(std::fs::File::create(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(line: &str) -> Map<String, Value> {
        match serde_json::from_str(line).unwrap() {
            Value::Object(o) => o,
            other => panic!("{other}"),
        }
    }

    const ENVOY: &str = r#"{"timestamp":"2026-12-07T12:00:00.000001+0000","level":"debug","service":"envoy","trace_id":null,"target":"wasm","message":"#;

    #[test]
    fn a_filter_line_gets_its_tags_as_fields_and_its_bare_message() {
        let message = r#"wasm log nexus.router nexus.router nexus.router-1a2b: [Tags: \"correlation_id\":\"req-1\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"rule\":\"odd] name\"] routed"#;
        let line = format!("{ENVOY}\"{message}\"}}");
        let o = obj(&normalize(&line));
        assert_eq!(o["correlation_id"], "req-1");
        assert_eq!(o["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(o["rule"], "odd] name");
        assert_eq!(o["filter"], "nexus.router");
        assert_eq!(o["message"], "routed");
        assert_eq!(o["level"], "debug");
        nexus_telemetry::parse_line(&normalize(&line)).unwrap();
    }

    #[test]
    fn other_lines_stay_as_they_are_and_non_json_is_wrapped() {
        let plain = format!("{ENVOY}\"wasm log nexus-auth nexus-auth-9: nexus-auth: no ticks\"}}");
        assert_eq!(obj(&normalize(&plain)), obj(&plain));
        let untagged = format!("{ENVOY}\"wasm log nexus-auth x: [Tags: broken] denied\"}}");
        assert_eq!(obj(&normalize(&untagged)), obj(&untagged));
        let wrapped = normalize("[critical] not json");
        let o = nexus_telemetry::parse_line(&wrapped).unwrap();
        assert_eq!(o["message"], "[critical] not json");
        assert_eq!(o["service"], "envoy");
    }
}
