//! Which descriptors a request sends: derived from the limits tree and the request's headers.

use nexus_config::ratelimit::{self, RateLimitConfig, Unit, HEADER_KEY_PREFIX, ROUTE_KEY};
use nexus_filter_core::HeaderMap;

/// Headers other Nexus filters set (after the router stripped any a client sent).
use nexus_config::contract::{
    CATEGORY as CATEGORY_HEADER, CLIENT_ID as CLIENT_HEADER, RULE as RULE_HEADER,
};

/// Requests without an identity share one counter per route rather than escaping the limit.
pub const ANONYMOUS: &str = "anonymous";

/// One limited descriptor of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub entries: Vec<(String, String)>,
    /// Counter key (domain and entries), as the service builds it.
    pub key: String,
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub shadow_mode: bool,
    /// Over limit denies only when every quota-mode descriptor of the request is over limit.
    pub quota_mode: bool,
}

impl Limited {
    /// The name clients see in `RateLimit-Policy`: the innermost descriptor key.
    pub fn policy_name(&self) -> &str {
        self.entries
            .last()
            .map(|(k, _)| k.as_str())
            .unwrap_or("route")
    }
}

/// The route a request matched and its limited descriptors; `None` when the router did not
/// route it (no `x-nexus-rule`).
pub fn for_request(
    limits: &RateLimitConfig,
    headers: &impl HeaderMap,
) -> Option<(String, Vec<Limited>)> {
    let route = headers.get(RULE_HEADER)?;
    let mut candidates: Vec<Vec<(String, String)>> =
        vec![vec![(ROUTE_KEY.to_string(), route.clone())]];
    // The route's node, found as the service finds it (exact, wildcard, then key-only).
    if let Some((top, _)) = ratelimit::lookup(&limits.descriptors, ROUTE_KEY, &route) {
        let mut keys: Vec<&str> = Vec::new();
        for d in &top.descriptors {
            if !keys.contains(&d.key.as_str()) {
                keys.push(d.key.as_str());
            }
        }
        for key in keys {
            if let Some(value) = value_of(key, headers) {
                candidates.push(vec![
                    (ROUTE_KEY.to_string(), route.clone()),
                    (key.to_string(), value),
                ]);
            }
        }
    }
    let resolved: Vec<_> = candidates
        .iter()
        .map(|entries| {
            let refs: Vec<(&str, &str)> = entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            limits.resolve(&refs)
        })
        .collect();
    // `replaces`: a limit another matched limit (unlimited ones included) replaces is dropped.
    let replaced = ratelimit::replaced(
        &resolved
            .iter()
            .map(|r| r.as_ref().map(|r| r.limit))
            .collect::<Vec<_>>(),
    );
    let limited = candidates
        .into_iter()
        .zip(resolved)
        .zip(replaced)
        .filter_map(|((entries, r), dropped)| {
            let r = r?;
            if r.limit.unlimited || dropped {
                return None;
            }
            Some(Limited {
                key: r.key,
                requests_per_unit: r.limit.requests_per_unit,
                // Validated: a limit that is not unlimited has a unit.
                unit: r.limit.unit?,
                shadow_mode: r.shadow_mode,
                quota_mode: r.quota_mode,
                entries,
            })
        })
        .collect();
    Some((route, limited))
}

fn value_of(key: &str, headers: &impl HeaderMap) -> Option<String> {
    match key {
        "client_id" => Some(
            headers
                .get(CLIENT_HEADER)
                .unwrap_or_else(|| ANONYMOUS.to_string()),
        ),
        "category" => headers.get(CATEGORY_HEADER),
        "method" => headers.get(":method"),
        "path" => headers
            .get(":path")
            .map(|p| p.split(['?', '#']).next().unwrap_or_default().to_string()),
        other => headers.get(other.strip_prefix(HEADER_KEY_PREFIX)?),
    }
}
