//! GraphQL-shaped refusals: `{"errors":[{"message", "locations"?, "extensions":{"code"}}]}`.
//!
//! Status codes follow the GraphQL-over-HTTP draft for `application/graphql-response+json`:
//! a request that is not a well-formed GraphQL request, fails to parse or fails validation
//! (depth and cost limits included) is a 400; the limits are not rate limits, so not 429.
//! Bodies over the limit are a 413, methods other than GET and POST a 405. The one exception
//! is Apollo's: an unknown persisted-query hash is a 200 carrying `PERSISTED_QUERY_NOT_FOUND`,
//! which is what Apollo clients look for to resend the query with its hash.

use nexus_filter_core::LocalResponse;

use super::parse::SyntaxError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// 1-based line and column in the query.
    pub location: Option<(u32, u32)>,
}

impl GraphqlError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            location: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BAD_REQUEST", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "GRAPHQL_VALIDATION_FAILED", message)
    }

    pub fn too_deep(message: impl Into<String>) -> Self {
        Self::new(400, "MAX_DEPTH_EXCEEDED", message)
    }

    pub fn too_costly(message: impl Into<String>) -> Self {
        Self::new(400, "MAX_COST_EXCEEDED", message)
    }

    pub fn too_large(max: u32) -> Self {
        Self::new(
            413,
            "REQUEST_TOO_LARGE",
            format!("request body exceeds {max} bytes"),
        )
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "METHOD_NOT_ALLOWED", message)
    }

    pub fn unroutable(message: impl Into<String>) -> Self {
        Self::new(400, "UNROUTABLE_OPERATION", message)
    }

    pub fn persisted_query_not_found() -> Self {
        Self::new(200, "PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound")
    }

    pub fn persisted_query_not_supported() -> Self {
        Self::new(
            400,
            "PERSISTED_QUERY_NOT_SUPPORTED",
            "PersistedQueryNotSupported",
        )
    }

    pub fn syntax(e: SyntaxError) -> Self {
        Self {
            location: Some((e.line, e.column)),
            ..Self::new(
                400,
                "GRAPHQL_PARSE_FAILED",
                format!("Syntax Error: {}", e.message),
            )
        }
    }

    pub fn body(&self) -> String {
        let mut error = serde_json::json!({
            "message": self.message,
            "extensions": { "code": self.code },
        });
        if let Some((line, column)) = self.location {
            error["locations"] = serde_json::json!([{ "line": line, "column": column }]);
        }
        serde_json::json!({ "errors": [error] }).to_string()
    }

    pub fn response(&self) -> LocalResponse {
        let mut r = LocalResponse::json_error(self.status, "graphql", &self.message);
        r.body = self.body().into_bytes();
        r.details = format!("nexus_graphql_{}", self.code.to_ascii_lowercase());
        r
    }
}
