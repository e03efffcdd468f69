//! The nexus-router filter, host-agnostic.
//!
//! For each request: remove spoofable `x-nexus-*` headers, find the first matching rule,
//! and set the headers Envoy's router acts on (`x-nexus-upstream` selects the route,
//! `x-envoy-upstream-rq-timeout-ms` and `x-envoy-max-retries`/`x-envoy-retry-on` shape it),
//! plus a correlation id and W3C trace context. No match: a default category or 404.

mod correlation;
pub mod graphql;
mod graphql_step;

use nexus_config::router::{NoMatch, RetryPolicy, RouterConfig};
use nexus_config::ConfigErrors;
use nexus_filter_core::request_log::{self, RequestIds};
use nexus_filter_core::{Action, HeaderMap, IdGenerator, LocalResponse, Log, Metrics};

pub use correlation::{is_valid_request_id, is_valid_traceparent};
use graphql::GraphqlPlan;
use nexus_filter_core::matcher::{CompiledMatch, RequestView};

pub use nexus_config::contract::{
    CATEGORY as HEADER_CATEGORY, RULE as HEADER_RULE, UPSTREAM as HEADER_UPSTREAM,
};
pub const HEADER_TIMEOUT: &str = "x-envoy-upstream-rq-timeout-ms";
pub const HEADER_MAX_RETRIES: &str = "x-envoy-max-retries";
pub const HEADER_RETRY_ON: &str = "x-envoy-retry-on";

/// A configured router: rules compiled once, shared by every request on a worker.
#[derive(Debug)]
pub struct Router {
    rules: Vec<CompiledRule>,
    fallback: Option<Decision>,
    strip_prefix: String,
    correlation: nexus_config::router::Correlation,
}

/// Everything a match sets, precomputed so the request path only copies strings.
#[derive(Debug, Clone)]
struct Decision {
    rule: String,
    category: String,
    upstream: String,
    timeout_ms: String,
    max_retries: String,
    /// Retry conditions for idempotent methods, and for the others (see
    /// [`RetryPolicy::retry_on_for`]).
    retry_on_idempotent: String,
    retry_on_other: String,
    /// `nexus_router.routed.<category>`, built once: the request path only increments it.
    metric: String,
}

#[derive(Debug)]
struct CompiledRule {
    matcher: CompiledMatch,
    decision: Decision,
    graphql: Option<GraphqlPlan>,
}

/// What the router wants once it has seen the request headers.
#[derive(Debug)]
pub enum Step {
    Continue,
    Respond(LocalResponse),
    /// A GraphQL POST: the routing headers are set for the rule; the operation is decided once
    /// the whole body is in ([`Router::on_graphql_body`]).
    ReadBody(GraphqlWait),
}

/// A request waiting for its GraphQL body: the rule it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphqlWait {
    rule: usize,
}

/// What to do with a complete GraphQL body.
#[derive(Debug)]
pub enum BodyStep {
    Continue,
    /// Forward this body instead (a persisted query expanded); `content-length` is set.
    Replace(Vec<u8>),
    Respond(LocalResponse),
}

impl Router {
    /// Parses and validates JSON configuration; every problem comes back with its JSON path.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let config: RouterConfig = nexus_config::parse(bytes)?;
        Self::new(&config)
    }

    pub fn new(config: &RouterConfig) -> Result<Self, ConfigErrors> {
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut errors = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let decision = decide(config, &rule.name, &rule.category, rule);
            match (
                CompiledMatch::compile(&rule.matcher, &format!("$.rules[{i}].match")),
                decision,
            ) {
                (Ok(matcher), Some(decision)) => rules.push(CompiledRule {
                    matcher,
                    decision,
                    graphql: rule.graphql.as_ref().map(GraphqlPlan::new),
                }),
                (Err(mut e), _) => errors.append(&mut e),
                (_, None) => errors.push(nexus_config::ConfigError::new(
                    format!("$.rules[{i}].category"),
                    format!("unknown category {:?}", rule.category),
                )),
            }
        }
        let fallback = match &config.on_no_match {
            NoMatch::Reject => None,
            NoMatch::Default { category } => {
                let none = nexus_config::router::RouteRule {
                    name: "default".to_string(),
                    matcher: Default::default(),
                    category: category.clone(),
                    upstream: None,
                    timeout_ms: None,
                    retry: None,
                    graphql: None,
                };
                match decide(config, "default", category, &none) {
                    Some(d) => Some(d),
                    None => {
                        errors.push(nexus_config::ConfigError::new(
                            "$.on_no_match.category",
                            format!("unknown category {category:?}"),
                        ));
                        None
                    }
                }
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self {
            rules,
            fallback,
            strip_prefix: config.strip_header_prefix.clone(),
            correlation: config.correlation.clone(),
        })
    }

    /// [`Router::on_request_headers_step`] for a host that never reads bodies: a GraphQL POST
    /// goes on with its rule's routing headers, undecided.
    pub fn on_request_headers(
        &self,
        headers: &mut impl HeaderMap,
        ids: &mut IdGenerator,
        metrics: &impl Metrics,
        log: &impl Log,
    ) -> Action {
        match self.on_request_headers_step(headers, ids, metrics, log, false) {
            Step::Respond(r) => Action::Respond(r),
            Step::Continue | Step::ReadBody(_) => Action::Continue,
        }
    }

    /// Decides one request from its headers, rewriting them in place; logs one line about it
    /// (at the request level, see [`request_log`]).
    pub fn on_request_headers_step(
        &self,
        headers: &mut impl HeaderMap,
        ids: &mut IdGenerator,
        metrics: &impl Metrics,
        log: &impl Log,
        end_of_stream: bool,
    ) -> Step {
        let pairs = headers.pairs();
        // Strip first: nothing a client sends under our prefix is trusted or matched on.
        let mut stripped = 0;
        if !self.strip_prefix.is_empty() {
            for (name, _) in pairs.iter() {
                if name.starts_with(&self.strip_prefix) {
                    headers.remove(name);
                    stripped += 1;
                }
            }
        }
        if stripped > 0 {
            metrics.increment("nexus_router.spoofed_headers_removed", stripped);
        }
        let view = RequestView::new(&pairs, &self.strip_prefix);
        let (made_id, made_traceparent) = self.correlate(headers, &view, ids);
        let request_ids = || {
            RequestIds::new(
                made_id.as_deref().or(view.header("x-request-id")),
                made_traceparent.as_deref().or(view.header("traceparent")),
            )
        };

        let matched = self.rules.iter().position(|r| r.matcher.matches(&view));
        let decision = matched
            .and_then(|i| self.rules.get(i))
            .map(|r| &r.decision)
            .or(self.fallback.as_ref());
        let Some(d) = decision else {
            metrics.increment("nexus_router.no_route", 1);
            let path = view.path_only();
            request_log::log_request(log, request_ids, "no route", &[("path", path)]);
            let detail = format!("no route matches {} {}", view.method, view.path_only());
            return Step::Respond(LocalResponse::json_error(404, "no_route", &detail));
        };
        headers.set(HEADER_CATEGORY, &d.category);
        headers.set(HEADER_UPSTREAM, &d.upstream);
        headers.set(HEADER_RULE, &d.rule);
        headers.set(HEADER_TIMEOUT, &d.timeout_ms);
        headers.set(HEADER_MAX_RETRIES, &d.max_retries);
        let idempotent = nexus_config::router::IDEMPOTENT_METHODS.contains(&view.method);
        let retry_on = if idempotent {
            &d.retry_on_idempotent
        } else {
            &d.retry_on_other
        };
        if retry_on.is_empty() {
            headers.set(HEADER_MAX_RETRIES, "0");
            headers.remove(HEADER_RETRY_ON);
        } else {
            headers.set(HEADER_RETRY_ON, retry_on);
        }
        metrics.increment(&d.metric, 1);
        let fields = [
            ("category", d.category.as_str()),
            ("upstream", d.upstream.as_str()),
            ("rule", d.rule.as_str()),
        ];
        request_log::log_request(log, request_ids, "routed", &fields);
        match matched.filter(|i| self.rules.get(*i).is_some_and(|r| r.graphql.is_some())) {
            Some(rule) => self.graphql_headers(GraphqlWait { rule }, headers, &view, end_of_stream),
            None => Step::Continue,
        }
    }

    /// Keeps valid ids, makes the others; returns the `x-request-id` and `traceparent` it made.
    fn correlate(
        &self,
        headers: &mut impl HeaderMap,
        view: &RequestView,
        ids: &mut IdGenerator,
    ) -> (Option<String>, Option<String>) {
        let mut made = (None, None);
        if self.correlation.request_id
            && !view.header("x-request-id").is_some_and(is_valid_request_id)
        {
            let id = correlation::uuid_v4(ids);
            headers.set("x-request-id", &id);
            made.0 = Some(id);
        }
        if self.correlation.traceparent
            && !view.header("traceparent").is_some_and(is_valid_traceparent)
        {
            let traceparent = correlation::new_traceparent(ids);
            headers.set("traceparent", &traceparent);
            // tracestate belongs to the trace it came with; a new trace starts without it.
            headers.remove("tracestate");
            made.1 = Some(traceparent);
        }
        made
    }
}

/// Resolves a rule's effective upstream, timeout and retries: rule, then category, then global.
fn decide(
    config: &RouterConfig,
    rule_name: &str,
    category_name: &str,
    rule: &nexus_config::router::RouteRule,
) -> Option<Decision> {
    let category = config.categories.get(category_name)?;
    let retry: &RetryPolicy = rule
        .retry
        .as_ref()
        .or(category.retry.as_ref())
        .unwrap_or(&config.retry);
    Some(Decision {
        rule: rule_name.to_string(),
        category: category_name.to_string(),
        upstream: rule
            .upstream
            .clone()
            .unwrap_or_else(|| category.upstream.clone()),
        timeout_ms: rule
            .timeout_ms
            .or(category.timeout_ms)
            .unwrap_or(config.default_timeout_ms)
            .to_string(),
        max_retries: retry.max_retries.to_string(),
        retry_on_idempotent: retry.retry_on_for("GET"),
        retry_on_other: retry.retry_on_for("POST"),
        metric: format!("nexus_router.routed.{category_name}"),
    })
}

#[cfg(test)]
mod graphql_step_tests;
#[cfg(test)]
mod tests;
