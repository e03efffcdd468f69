//! Finding a token in a request and splitting a compact JWS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nexus_config::auth::TokenSource;
use nexus_filter_core::HeaderList;
use serde_json::{Map, Value};

use crate::check::Strip;

/// The token a source yields, if the request carries one there.
pub fn extract<'h>(source: &TokenSource, headers: &'h HeaderList) -> Option<&'h str> {
    let token = match source {
        TokenSource::Bearer => {
            let v = headers.get("authorization")?.trim();
            let (scheme, rest) = v.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            rest.trim()
        }
        TokenSource::Header { name, prefix } => {
            let v = headers.get(name)?.trim();
            match prefix {
                Some(p) => v.strip_prefix(p.as_str())?.trim(),
                None => v,
            }
        }
        TokenSource::Query { param } => {
            let path = headers.get(":path")?;
            let query = path.split_once('?')?.1.split('#').next()?;
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == param).then_some(v)
            })?
        }
        TokenSource::Cookie { name } => headers
            .iter()
            .filter(|(k, _)| *k == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then_some(v.trim_matches('"'))
            })?,
    };
    (!token.is_empty()).then_some(token)
}

/// How to remove the credential `source` found from the request, if it can be removed:
/// a header goes; a query parameter is cut out of the path; a cookie stays (other cookies
/// share its header).
pub fn strip(source: &TokenSource, headers: &HeaderList) -> Option<Strip> {
    match source {
        TokenSource::Bearer => Some(Strip::Header("authorization".to_string())),
        TokenSource::Header { name, .. } => Some(Strip::Header(name.clone())),
        TokenSource::Query { param } => {
            let path = headers.get(":path")?;
            let (base, query) = path.split_once('?')?;
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split('=').next() != Some(param.as_str()))
                .collect();
            Some(Strip::Path(if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }))
        }
        TokenSource::Cookie { .. } => None,
    }
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Jws<'a> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `base64url(header) . base64url(payload)`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub fn parse(token: &'a str) -> Result<Self, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS (three dot-separated parts)");
        };
        let header = decode_object(h).ok_or("the header is not base64url JSON")?;
        let claims = decode_object(p).ok_or("the payload is not base64url JSON")?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "the signature is not base64url")?;
        Ok(Self {
            header,
            claims,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature,
        })
    }
}

/// Header parameters the JWS specification itself defines (RFC 7515 §4.1), which `crit` must
/// not list.
const DEFINED_BY_JWS: [&str; 11] = [
    "alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit",
];

/// RFC 7515 §4.1.11: a JWS whose `crit` lists an extension the recipient does not understand
/// must be refused. nexus-auth understands none (it has no use for RFC 7797's unencoded
/// payloads, the one registered extension), so a well-formed `crit` always names one it does
/// not; a malformed `crit` (not a non-empty list of names, or naming a parameter the JWS
/// specification defines) is refused as malformed.
pub fn check_critical(header: &Map<String, Value>) -> Result<(), String> {
    let Some(crit) = header.get("crit") else {
        return Ok(());
    };
    let names: Option<Vec<&str>> = crit
        .as_array()
        .filter(|a| !a.is_empty())
        .and_then(|a| a.iter().map(Value::as_str).collect());
    let Some(names) = names else {
        return Err("crit must be a non-empty list of header parameter names".to_string());
    };
    if let Some(defined) = names.iter().find(|n| DEFINED_BY_JWS.contains(n)) {
        return Err(format!(
            "crit must not list {defined}, which the JWS specification defines"
        ));
    }
    Err(format!(
        "crit lists extensions nexus-auth does not understand: {}",
        names.join(", ")
    ))
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}
