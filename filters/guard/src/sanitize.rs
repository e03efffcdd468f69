//! Request sanitization on headers: limits, methods, content types, and paths that Envoy's
//! own normalization (`normalize_path`, `merge_slashes`) leaves ambiguous — an encoded `/` or
//! `\` (Envoy keeps `%2F` by default, and a backend that decodes it routes differently from
//! Envoy), dot segments that appear only after percent-decoding (`%2e%2e`), NUL and control
//! characters, and broken escapes.

use nexus_config::guard::GuardPolicy;
use nexus_filter_core::{HeaderList, LocalResponse};

/// A sanitization refusal: the rule's name is the `error` of the JSON answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyHeaders,
    HeadersTooLarge,
    UrlTooLong,
    BodyTooLarge,
    MethodNotAllowed,
    UnsupportedContentType,
    EncodedSlash,
    DotSegment,
    ControlCharacter,
    BadEscape,
    JsonTooDeep,
    JsonTooManyFields,
    InvalidUtf8,
    InvalidJson,
}

impl Refusal {
    pub fn rule(self) -> &'static str {
        match self {
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::UrlTooLong => "url_too_long",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UnsupportedContentType => "unsupported_content_type",
            Refusal::EncodedSlash => "encoded_slash",
            Refusal::DotSegment => "dot_segment",
            Refusal::ControlCharacter => "control_character",
            Refusal::BadEscape => "bad_escape",
            Refusal::JsonTooDeep => "json_too_deep",
            Refusal::JsonTooManyFields => "json_too_many_fields",
            Refusal::InvalidUtf8 => "invalid_utf8",
            Refusal::InvalidJson => "invalid_json",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::BodyTooLarge => 413,
            Refusal::UnsupportedContentType => 415,
            Refusal::MethodNotAllowed => 405,
            _ => 400,
        }
    }

    /// `nexus_guard.refused.<rule>`, spelled out so no name is built per request.
    pub fn metric(self) -> &'static str {
        match self {
            Refusal::TooManyHeaders => "nexus_guard.refused.too_many_headers",
            Refusal::HeadersTooLarge => "nexus_guard.refused.headers_too_large",
            Refusal::UrlTooLong => "nexus_guard.refused.url_too_long",
            Refusal::BodyTooLarge => "nexus_guard.refused.body_too_large",
            Refusal::MethodNotAllowed => "nexus_guard.refused.method_not_allowed",
            Refusal::UnsupportedContentType => "nexus_guard.refused.unsupported_content_type",
            Refusal::EncodedSlash => "nexus_guard.refused.encoded_slash",
            Refusal::DotSegment => "nexus_guard.refused.dot_segment",
            Refusal::ControlCharacter => "nexus_guard.refused.control_character",
            Refusal::BadEscape => "nexus_guard.refused.bad_escape",
            Refusal::JsonTooDeep => "nexus_guard.refused.json_too_deep",
            Refusal::JsonTooManyFields => "nexus_guard.refused.json_too_many_fields",
            Refusal::InvalidUtf8 => "nexus_guard.refused.invalid_utf8",
            Refusal::InvalidJson => "nexus_guard.refused.invalid_json",
        }
    }

    pub fn response(self, rule: &str) -> LocalResponse {
        LocalResponse::json_error(
            self.status(),
            self.rule(),
            &format!("refused by nexus-guard rule {rule:?}: {}", self.rule()),
        )
    }
}

/// Checks everything the request headers tell; `has_body`: the headers did not end the stream.
pub fn check_headers(p: &GuardPolicy, headers: &HeaderList, has_body: bool) -> Result<(), Refusal> {
    let l = &p.limits;
    if over(headers.len(), l.max_headers) {
        return Err(Refusal::TooManyHeaders);
    }
    let size: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if over(size, l.max_header_bytes) {
        return Err(Refusal::HeadersTooLarge);
    }
    let path = headers.get(":path").unwrap_or("");
    if over(path.len(), l.max_url_bytes) {
        return Err(Refusal::UrlTooLong);
    }
    let declared = headers
        .get("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| l.max_body_bytes > 0 && n > u64::from(l.max_body_bytes)) {
        return Err(Refusal::BodyTooLarge);
    }
    let method = headers.get(":method").unwrap_or("");
    if !p.methods.is_empty() && !p.methods.iter().any(|m| m == method) {
        return Err(Refusal::MethodNotAllowed);
    }
    if has_body && declared != Some(0) && !p.content_types.is_empty() {
        let ct = headers.get("content-type").unwrap_or("");
        if !p
            .content_types
            .iter()
            .any(|allowed| media_matches(allowed, ct))
        {
            return Err(Refusal::UnsupportedContentType);
        }
    }
    if p.strict_path {
        check_path(path)?;
    }
    Ok(())
}

fn over(n: usize, limit: u32) -> bool {
    limit > 0 && n > limit as usize
}

/// `allowed` is `type/subtype` or `type/*`; parameters of `ct` are ignored.
pub fn media_matches(allowed: &str, ct: &str) -> bool {
    let media = ct.split(';').next().unwrap_or("").trim();
    match allowed.strip_suffix("/*") {
        Some(ty) => media
            .split('/')
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(ty)),
        None => media.eq_ignore_ascii_case(allowed),
    }
}

/// The path part (query excluded) must decode to something with one meaning.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    let raw = path.split(['?', '#']).next().unwrap_or("").as_bytes();
    if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Refusal::ControlCharacter);
    }
    let decoded = percent_decode(raw)?;
    for seg in decoded.split(|b| *b == b'/') {
        if seg == b"." || seg == b".." {
            return Err(Refusal::DotSegment);
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX`, refusing what must not come out of it (a `/`, `\`, NUL or control byte)
/// and escapes that are not two hex digits.
fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Refusal::BadEscape);
        };
        let d = h * 16 + l;
        if d == b'/' || d == b'\\' {
            return Err(Refusal::EncodedSlash);
        }
        if d < 0x20 || d == 0x7f {
            return Err(Refusal::ControlCharacter);
        }
        out.push(d);
        i += 3;
    }
    Ok(out)
}
