//! The router's GraphQL steps: GET requests are decided from the URL, POST requests once
//! their body is complete; either way the decision overrides `x-nexus-upstream` and names
//! the operation in [`HEADER_OPERATION`].

use nexus_filter_core::matcher::RequestView;
use nexus_filter_core::request_log::{self, RequestIds};
use nexus_filter_core::{HeaderMap, LocalResponse, Log, Metrics};

use crate::graphql::{self, GraphqlError, GraphqlPlan, Routed, HEADER_OPERATION};
use crate::{BodyStep, GraphqlWait, Router, Step, HEADER_UPSTREAM};

impl Router {
    fn plan(&self, wait: GraphqlWait) -> Option<(&GraphqlPlan, &str)> {
        let rule = self.rules.get(wait.rule)?;
        Some((rule.graphql.as_ref()?, rule.decision.upstream.as_str()))
    }

    pub(crate) fn graphql_headers(
        &self,
        wait: GraphqlWait,
        headers: &mut impl HeaderMap,
        view: &RequestView,
        end_of_stream: bool,
    ) -> Step {
        let Some((plan, rule_upstream)) = self.plan(wait) else {
            return Step::Continue;
        };
        match view.method {
            "POST" if end_of_stream => {
                Step::Respond(GraphqlError::bad_request("POST request without a body").response())
            }
            "POST" => Step::ReadBody(wait),
            "GET" => {
                let query = view.path.split_once('?').map_or("", |(_, q)| q);
                match plan.decide_get(query, rule_upstream) {
                    Ok(routed) => {
                        if let Some(q) = &routed.served_query {
                            let path = format!("{}&{}", view.path, graphql::query_parameter(q));
                            headers.set(":path", &path);
                        }
                        set_routed(headers, &routed);
                        Step::Continue
                    }
                    Err(e) => Step::Respond(e.response()),
                }
            }
            _ => Step::Respond(
                GraphqlError::method_not_allowed("GraphQL requests are GET or POST").response(),
            ),
        }
    }

    /// A response when `size` body bytes are already more than the rule accepts.
    pub fn graphql_body_too_large(&self, wait: GraphqlWait, size: usize) -> Option<LocalResponse> {
        let (plan, _) = self.plan(wait)?;
        (size > plan.max_body_bytes() as usize)
            .then(|| GraphqlError::too_large(plan.max_body_bytes()).response())
    }

    /// Decides a GraphQL POST from its complete body.
    pub fn on_graphql_body(
        &self,
        wait: GraphqlWait,
        body: &[u8],
        headers: &mut impl HeaderMap,
        metrics: &impl Metrics,
        log: &impl Log,
    ) -> BodyStep {
        let Some((plan, rule_upstream)) = self.plan(wait) else {
            return BodyStep::Continue;
        };
        let request_id = headers.get("x-request-id");
        let ids = || RequestIds::new(request_id.as_deref(), None);
        match plan.decide_body(body, rule_upstream) {
            Ok(routed) => {
                set_routed(headers, &routed);
                metrics.increment("nexus_router.graphql.routed", 1);
                let (depth, cost) = (routed.depth.to_string(), routed.cost.to_string());
                let fields = [
                    ("operation", routed.operation.as_str()),
                    ("upstream", routed.upstream.as_str()),
                    ("depth", depth.as_str()),
                    ("cost", cost.as_str()),
                ];
                request_log::log_request(log, ids, "graphql routed", &fields);
                match routed.served_query {
                    Some(q) => {
                        let body = graphql::expanded_body(&q, body);
                        headers.set("content-length", &body.len().to_string());
                        BodyStep::Replace(body)
                    }
                    None => BodyStep::Continue,
                }
            }
            Err(e) => {
                let code = e.code.to_ascii_lowercase();
                metrics.increment(&format!("nexus_router.graphql.refused.{code}"), 1);
                request_log::log_request(log, ids, "graphql refused", &[("code", e.code)]);
                BodyStep::Respond(e.response())
            }
        }
    }
}

fn set_routed(headers: &mut impl HeaderMap, routed: &Routed) {
    headers.set(HEADER_UPSTREAM, &routed.upstream);
    headers.set(HEADER_OPERATION, &routed.operation);
}
