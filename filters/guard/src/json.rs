//! JSON request-body limits: nesting depth and field count, counted in one pass over the
//! bytes (strings skipped), then UTF-8 and syntax checked by `serde_json` — whose own
//! recursion limit is never reached because the depth check comes first.

/// Why a JSON body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRefusal {
    TooDeep,
    TooManyFields,
    InvalidUtf8,
    Invalid,
}

/// Checks `body` against the limits (0: no limit).
pub fn check(body: &[u8], max_depth: u32, max_fields: u32) -> Result<(), JsonRefusal> {
    let (mut depth, mut fields, mut in_string, mut escaped) = (0u32, 0u32, false, false);
    // Members and elements are counted by their separators: one per non-empty container
    // plus one per comma.
    let mut after_open = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if after_open {
            after_open = false;
            if b != b'}' && b != b']' {
                fields += 1;
            }
        }
        match b {
            b'{' | b'[' => {
                depth += 1;
                if max_depth > 0 && depth > max_depth {
                    return Err(JsonRefusal::TooDeep);
                }
                after_open = true;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => fields += 1,
            b'"' => in_string = true,
            _ => {}
        }
        if max_fields > 0 && fields > max_fields {
            return Err(JsonRefusal::TooManyFields);
        }
    }
    if std::str::from_utf8(body).is_err() {
        return Err(JsonRefusal::InvalidUtf8);
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| JsonRefusal::Invalid)?;
    Ok(())
}

/// Is this content type JSON (`application/json`, `application/problem+json`, ...)?
pub fn is_json(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
        || media.len() > 5
            && media
                .get(media.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

/// Is this a body worth scanning as text (`text/*`, form data, XML)?
pub fn is_text(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let lower = media.to_ascii_lowercase();
    lower.starts_with("text/")
        || lower == "application/x-www-form-urlencoded"
        || lower.ends_with("/xml")
        || lower.ends_with("+xml")
}
