//! What may be cached: request-side checks (before lookup), response-side checks (before
//! storing), and which response headers a stored copy keeps.

use nexus_config::cache::{CachePolicy, KeyBy};
use nexus_filter_core::HeaderList;

/// Statuses stored: the RFC 9110 §15.1 heuristically cacheable ones a gateway replays safely.
/// Not 204 (nothing to save), 206 (ranges are not keyed), 300/308/405/414/501 (rare; a stale
/// 405 or 501 would outlive a deploy that fixes it longer than users expect).
pub const CACHEABLE_STATUSES: [u32; 5] = [200, 203, 301, 404, 410];

/// Header set by nexus-auth with the authenticated client.
pub use nexus_config::contract::CLIENT_ID as CLIENT_ID_HEADER;

/// `Cache-Control` directives the filter acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `cache-control` value (comma-separated, case-insensitive directives).
    /// `private="x"` and `no-cache="x"` (field-name forms) count as the bare directive: we do
    /// not strip fields, so the whole response is treated as private / no-cache.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut cc = Self::default();
        for value in values {
            for d in value.split(',') {
                let (name, arg) = match d.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (d.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    // An unparsable age is "already stale" (RFC 9111 §4.2.1).
                    "max-age" => cc.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(seconds().unwrap_or(0)),
                    _ => {}
                }
            }
        }
        cc
    }
}

fn values<'a>(headers: &'a HeaderList, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What the request allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    /// `false` for `Cache-Control: no-cache` requests: go upstream, but the fresh answer may
    /// still be stored.
    pub lookup: bool,
    /// The client id that goes into the key (`key_by: client`).
    pub client: Option<String>,
}

/// Whether a request may use the cache; `Err` names the bypass reason (a metric suffix).
pub fn request_plan(
    policy: &CachePolicy,
    headers: &HeaderList,
) -> Result<RequestPlan, &'static str> {
    let method = headers.get(":method").unwrap_or("");
    if !policy.methods.iter().any(|m| m == method) {
        return Err("method");
    }
    let client = headers.get(CLIENT_ID_HEADER).filter(|c| !c.is_empty());
    let client = match policy.key_by {
        // A credentialed request's response may be personal: never share it.
        KeyBy::Shared if client.is_some() || headers.get("authorization").is_some() => {
            return Err("credentials");
        }
        KeyBy::Shared => None,
        KeyBy::Client => match client {
            Some(c) => Some(c.to_string()),
            None => return Err("anonymous"),
        },
    };
    let mut lookup = true;
    if policy.respect_cache_control {
        let cc = CacheControl::parse(values(headers, "cache-control"));
        if cc.no_store {
            return Err("no_store");
        }
        let pragma_no_cache = values(headers, "pragma").any(|v| v.contains("no-cache"));
        lookup = !(cc.no_cache || cc.max_age == Some(0) || pragma_no_cache);
    }
    Ok(RequestPlan { lookup, client })
}

/// How long a response may be stored, in milliseconds; `Err` names why it may not.
pub fn response_ttl_ms(
    policy: &CachePolicy,
    status: u32,
    headers: &HeaderList,
) -> Result<u64, &'static str> {
    if !CACHEABLE_STATUSES.contains(&status) {
        return Err("status");
    }
    // Replaying a cookie to another client would hand them someone's session.
    if headers.get("set-cookie").is_some() {
        return Err("set_cookie");
    }
    for v in values(headers, "vary") {
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            // The key only distinguishes the policy's vary headers.
            if name == "*" || !policy.vary.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                return Err("vary");
            }
        }
    }
    let mut ttl = policy.ttl;
    if policy.respect_cache_control {
        let cc = CacheControl::parse(values(headers, "cache-control"));
        if cc.no_store || cc.private || cc.no_cache {
            return Err("cache_control");
        }
        // We are a shared cache: s-maxage wins over max-age (RFC 9111 §5.2.2.10).
        if let Some(age) = cc.s_maxage.or(cc.max_age) {
            ttl = ttl.min(age);
        }
        if ttl == 0 {
            return Err("cache_control");
        }
    }
    if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if len > policy.max_object_bytes {
            return Err("too_large");
        }
    }
    Ok(ttl.saturating_mul(1000))
}

/// Headers a stored copy keeps: not pseudo-headers, hop-by-hop headers, `content-length`
/// (Envoy sets it on the replayed response) or what the cache itself adds.
pub fn stored_headers(headers: &HeaderList) -> Vec<(String, String)> {
    const DROP: [&str; 10] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "content-length",
        "age",
        nexus_config::contract::CACHE_RESULT,
    ];
    headers
        .iter()
        .filter(|(k, _)| !k.starts_with(':') && !DROP.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Tags from the policy's tags header (comma-separated, every value of it).
pub fn tags(policy: &CachePolicy, headers: &HeaderList) -> Vec<String> {
    values(headers, &policy.tags_header)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        nexus_config::parse::<nexus_config::cache::CacheConfig>(
            br#"{"rules": [{"name": "r", "policy": {"ttl": 60, "vary": ["accept"], "max_object_bytes": 100}}]}"#,
        )
        .unwrap()
        .rules
        .remove(0)
        .policy
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderList {
        pairs.iter().copied().collect()
    }

    #[test]
    fn cache_control_parsing() {
        let cc = CacheControl::parse(["public, Max-Age=30", "s-maxage=\"10\", private=\"x\""]);
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(cc.s_maxage, Some(10));
        assert!(cc.private && !cc.no_store && !cc.no_cache);
        assert_eq!(CacheControl::parse(["max-age=soon"]).max_age, Some(0));
    }

    #[test]
    fn requests_with_credentials_bypass_shared_policies() {
        let p = policy();
        let get = |extra: &[(&str, &str)]| {
            let mut v = h(&[(":method", "GET")]);
            v.extend(extra.iter().copied());
            request_plan(&p, &v)
        };
        assert!(get(&[]).is_ok());
        assert_eq!(get(&[("authorization", "Bearer x")]), Err("credentials"));
        assert_eq!(get(&[("x-nexus-client-id", "alice")]), Err("credentials"));
        assert_eq!(get(&[("cache-control", "no-store")]), Err("no_store"));
        assert!(!get(&[("cache-control", "no-cache")]).unwrap().lookup);
        assert!(!get(&[("pragma", "no-cache")]).unwrap().lookup);
        assert_eq!(request_plan(&p, &h(&[(":method", "POST")])), Err("method"));
    }

    #[test]
    fn client_policies_key_by_the_client_and_refuse_anonymous_requests() {
        let mut p = policy();
        p.key_by = KeyBy::Client;
        let plan = request_plan(
            &p,
            &h(&[
                (":method", "GET"),
                ("x-nexus-client-id", "alice"),
                ("authorization", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(plan.client.as_deref(), Some("alice"));
        assert_eq!(
            request_plan(&p, &h(&[(":method", "GET")])),
            Err("anonymous")
        );
    }

    #[test]
    fn response_checks() {
        let p = policy();
        assert_eq!(response_ttl_ms(&p, 200, &h(&[])), Ok(60_000));
        assert_eq!(response_ttl_ms(&p, 404, &h(&[])), Ok(60_000));
        assert_eq!(response_ttl_ms(&p, 500, &h(&[])), Err("status"));
        assert_eq!(response_ttl_ms(&p, 206, &h(&[])), Err("status"));
        let r = |pairs: &[(&str, &str)]| response_ttl_ms(&p, 200, &h(pairs));
        assert_eq!(r(&[("cache-control", "private")]), Err("cache_control"));
        assert_eq!(r(&[("cache-control", "no-store")]), Err("cache_control"));
        assert_eq!(r(&[("cache-control", "no-cache")]), Err("cache_control"));
        assert_eq!(r(&[("cache-control", "max-age=0")]), Err("cache_control"));
        assert_eq!(r(&[("cache-control", "max-age=5")]), Ok(5_000));
        assert_eq!(r(&[("cache-control", "max-age=5, s-maxage=7")]), Ok(7_000));
        assert_eq!(
            r(&[("cache-control", "max-age=600")]),
            Ok(60_000),
            "ttl is the cap"
        );
        assert_eq!(r(&[("set-cookie", "s=1")]), Err("set_cookie"));
        assert_eq!(r(&[("vary", "Accept")]), Ok(60_000));
        assert_eq!(r(&[("vary", "accept, cookie")]), Err("vary"));
        assert_eq!(r(&[("vary", "*")]), Err("vary"));
        assert_eq!(r(&[("content-length", "101")]), Err("too_large"));
        let mut ignore = policy();
        ignore.respect_cache_control = false;
        assert_eq!(
            response_ttl_ms(&ignore, 200, &h(&[("cache-control", "private")])),
            Ok(60_000)
        );
    }

    #[test]
    fn stored_headers_drop_hop_by_hop_and_own_headers() {
        let kept = stored_headers(&h(&[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("x-nexus-cache", "miss"),
            ("etag", "\"1\""),
        ]));
        assert_eq!(
            kept,
            h(&[("content-type", "application/json"), ("etag", "\"1\"")]).to_vec()
        );
        assert_eq!(
            tags(
                &policy(),
                &h(&[
                    ("x-nexus-cache-tags", "t1, t2,"),
                    ("x-nexus-cache-tags", "t3")
                ])
            ),
            ["t1", "t2", "t3"]
        );
    }
}
