//! The contract between Nexus's filters: the order they run in, and what one filter tells the
//! ones after it (and Envoy's route table) through request headers and Envoy properties. Every
//! name below is spelt only here; filters, the controller's renderer and `nexus up` use these.
//!
//! Why the later filters may trust these headers: nexus-router runs first and removes every
//! request header starting with [`PREFIX`] before it sets its own (`RouterConfig::strip_header_prefix`
//! defaults to it), so a value a client sent never reaches auth, rate limiting or the cache.
//!
//! Why nexus-auth matches requests itself instead of reading [`RULE`]: its decision is a
//! security one and must hold on its own. Were it keyed on the router's rule, a request the
//! router left unmatched (no header), or a deployment that runs auth without the router,
//! would silently get no requirement. Rate limiting and caching only count and store, so they
//! key on [`RULE`] and a missing rule costs accuracy, never access.

/// The filters, in the order they run (each is inserted before `envoy.filters.http.router`).
/// The router goes first: it strips every client-sent `x-nexus-*` header, so the identity auth
/// sets afterwards is the only one ratelimit can count. The cache goes last: a cached answer
/// is still authenticated and rate limited, and can be keyed by the identity. The guard runs
/// right after auth: an unauthenticated request is refused before its body is buffered or
/// scanned, and what the guard counts or refuses carries the caller's identity.
/// Filters that may stop a request at its headers and resume it from a body callback
/// (nexus-router holds GraphQL POSTs until their body is in). Their Envoy plugin config sets
/// `allow_on_headers_stop_iteration`, without which Envoy turns StopIteration into
/// StopAllIteration and never hands the filter the body.
pub const STOPS_AT_HEADERS: [&str; 1] = ["router"];

pub const FILTER_ORDER: [&str; 5] = ["router", "auth", "guard", "ratelimit", "cache"];

/// The log field naming a request in every Nexus log: the filters' lines, Envoy's log and
/// access log as Nexus renders them, and the Nexus processes' lines (`nexus-telemetry`). Its
/// value is the request's `x-request-id`, which nexus-router keeps when valid or makes.
pub const LOG_CORRELATION_ID: &str = "correlation_id";
/// The log field naming a request's trace: the trace id of its W3C `traceparent`, which
/// nexus-router keeps when valid or makes (null outside a request).
pub const LOG_TRACE_ID: &str = "trace_id";
/// What opens a filter's log message that carries fields: Envoy's tagged-log syntax,
/// `[Tags: "correlation_id":"…","trace_id":"…"] routed` (the tags are JSON object members).
pub const LOG_TAGS_OPEN: &str = "[Tags: ";

/// Every header below starts with this; nexus-router strips client-sent ones.
pub const PREFIX: &str = "x-nexus-";

/// The router's rule category (`lake`, `stream`, ...). Written by router; read by ratelimit
/// (descriptor `category`) and sent upstream.
pub const CATEGORY: &str = "x-nexus-category";
/// The upstream's route token. Written by router; read by Envoy's route table (one route per
/// upstream matches on it).
pub const UPSTREAM: &str = "x-nexus-upstream";
/// The name of the router rule that matched. Written by router; read by ratelimit (descriptor
/// `route`), by the cache (which rules cache) and by Envoy's route table (per-rule routes).
pub const RULE: &str = "x-nexus-rule";
/// The authenticated client. Written by auth (when `identity.headers`); read by ratelimit
/// (descriptor `client_id`) and by the cache (per-client keys; a credentialed request is never
/// served a shared copy).
pub const CLIENT_ID: &str = "x-nexus-client-id";
/// How the client authenticated (`jwt:<provider>`, `api_key`). Written by auth; sent upstream.
pub const AUTH_METHOD: &str = "x-nexus-auth-method";
/// Response header: what the cache did (`hit-local`, `hit-shared`, `miss`, `bypass`). Written
/// by the cache for clients.
pub const CACHE_RESULT: &str = "x-nexus-cache";
/// Response header an upstream sets to tag a cacheable response (invalidation by tag); the
/// default of the cache rule's `tagsHeader`.
pub const CACHE_TAGS: &str = "x-nexus-cache-tags";

/// Envoy properties (filter state `wasm.<name>`) auth sets for later filters and access logs.
pub const PROPERTY_CLIENT_ID: &str = "nexus.client_id";
pub const PROPERTY_AUTH_METHOD: &str = "nexus.auth_method";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_header_is_stripped_by_the_router_prefix() {
        for h in [CATEGORY, UPSTREAM, RULE, CLIENT_ID, AUTH_METHOD] {
            assert!(h.starts_with(PREFIX), "{h}");
        }
        assert_eq!(
            crate::router::RouterConfig::default().strip_header_prefix,
            PREFIX
        );
    }

    #[test]
    fn router_runs_first_and_cache_last() {
        assert_eq!(FILTER_ORDER.first(), Some(&"router"));
        assert_eq!(FILTER_ORDER.last(), Some(&"cache"));
        let pos = |f| FILTER_ORDER.iter().position(|x| *x == f);
        assert_eq!(pos("guard"), pos("auth").map(|a| a + 1));
    }
}
