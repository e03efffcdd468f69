//! The GraphQL-over-HTTP request: a JSON body `{"query", "operationName", "variables",
//! "extensions"}` (POST) or the same names as URL parameters (GET).

use serde_json::{Map, Value};

use super::error::GraphqlError;

#[derive(Debug, Clone, PartialEq)]
pub struct GraphqlRequest {
    pub query: Option<String>,
    pub operation_name: Option<String>,
    pub variables: Value,
    /// `extensions.persistedQuery.sha256Hash`, lower-cased.
    pub persisted_hash: Option<String>,
}

pub fn from_json(body: &[u8]) -> Result<GraphqlRequest, GraphqlError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| GraphqlError::bad_request(format!("body is not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(GraphqlError::bad_request(
            "body must be a JSON object with a \"query\"",
        ));
    };
    let variables = match map.get("variables") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(GraphqlError::bad_request("\"variables\" must be an object")),
    };
    let extensions = match map.get("extensions") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => Some(e),
        Some(_) => {
            return Err(GraphqlError::bad_request(
                "\"extensions\" must be an object",
            ))
        }
    };
    build(&map, variables, extensions)
}

fn build(
    map: &Map<String, Value>,
    variables: Value,
    extensions: Option<&Map<String, Value>>,
) -> Result<GraphqlRequest, GraphqlError> {
    let query = match map.get("query") {
        None | Some(Value::Null) => None,
        Some(Value::String(q)) => Some(q.clone()),
        Some(_) => return Err(GraphqlError::bad_request("\"query\" must be a string")),
    };
    let operation_name = match map.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => {
            return Err(GraphqlError::bad_request(
                "\"operationName\" must be a string",
            ))
        }
    };
    let persisted_hash = persisted_hash(extensions)?;
    if query.is_none() && persisted_hash.is_none() {
        return Err(GraphqlError::bad_request(
            "request has no \"query\" (nor a persisted-query hash)",
        ));
    }
    Ok(GraphqlRequest {
        query,
        operation_name,
        variables,
        persisted_hash,
    })
}

fn persisted_hash(extensions: Option<&Map<String, Value>>) -> Result<Option<String>, GraphqlError> {
    let Some(pq) = extensions.and_then(|e| e.get("persistedQuery")) else {
        return Ok(None);
    };
    let hash = pq.get("sha256Hash").and_then(Value::as_str);
    match hash {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(h.to_ascii_lowercase()))
        }
        _ => Err(GraphqlError::bad_request(
            "extensions.persistedQuery.sha256Hash must be 64 hex digits",
        )),
    }
}

/// A GET request's URL parameters; `variables` and `extensions` are JSON, as in the spec.
pub fn from_query_string(query: &str) -> Result<GraphqlRequest, GraphqlError> {
    let mut map = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name)?;
        let value = percent_decode(value)?;
        let value = match name.as_str() {
            "variables" | "extensions" => serde_json::from_str(&value).map_err(|e| {
                GraphqlError::bad_request(format!("URL parameter \"{name}\" is not JSON: {e}"))
            })?,
            _ => Value::String(value),
        };
        map.insert(name, value);
    }
    let variables = match map.get("variables") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(GraphqlError::bad_request("\"variables\" must be an object")),
    };
    let extensions = map.get("extensions").and_then(Value::as_object).cloned();
    build(&map, variables, extensions.as_ref())
}

fn percent_decode(s: &str) -> Result<String, GraphqlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| GraphqlError::bad_request("malformed %-escape in the URL"))?;
                out.push(hex);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| GraphqlError::bad_request("URL parameters are not UTF-8"))
}
