//! Decided responses: what a filter answers instead of forwarding.

/// What a filter does with the request it has just seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward (possibly with changed headers).
    Continue,
    /// Answer locally; the request goes no further.
    Respond(LocalResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Envoy's `details` for access logs (`%RESPONSE_CODE_DETAILS%`): no spaces.
    pub details: String,
}

impl LocalResponse {
    /// The JSON error every Nexus refusal uses: `{"error": "...", "detail": "..."}`.
    pub fn json_error(status: u16, error: &str, detail: &str) -> Self {
        let body = serde_json::json!({ "error": error, "detail": detail }).to_string();
        Self {
            status,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: body.into_bytes(),
            details: format!("nexus_{error}"),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_escapes_the_detail() {
        let r = LocalResponse::json_error(404, "no_route", "no rule for \"/x\"");
        assert_eq!(r.status, 404);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"detail":"no rule for \"/x\"","error":"no_route"}"#
        );
        assert_eq!(r.details, "nexus_no_route");
    }
}
