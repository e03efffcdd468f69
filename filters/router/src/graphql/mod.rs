//! GraphQL-aware routing for rules with a `graphql` block: the request's operation is parsed
//! (bounded, see [`parse`]), checked against the depth and cost limits, and routed by
//! operation name, then by the owner of its root fields. APQ hashes are accepted.

pub mod apq;
pub mod error;
pub mod measure;
pub mod parse;
pub mod request;

use std::cell::RefCell;
use std::collections::BTreeMap;

use nexus_config::router_graphql::GraphqlRule;

pub use error::GraphqlError;
use measure::Limits;
use parse::{OpKind, Operation};
pub use request::GraphqlRequest;

/// Header carrying the operation name (`anonymous` without one), for rate-limit descriptors
/// (`header.x-nexus-graphql-operation`), logs and the upstream.
pub const HEADER_OPERATION: &str = "x-nexus-graphql-operation";

/// Where an accepted operation goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub upstream: String,
    pub operation: String,
    pub depth: u32,
    pub cost: u64,
    /// The query, when the request carried only its persisted hash: the upstream gets it.
    pub served_query: Option<String>,
}

/// A rule's `graphql` block, ready for requests; holds the worker's persisted queries.
#[derive(Debug)]
pub struct GraphqlPlan {
    fields: BTreeMap<String, String>,
    operations: BTreeMap<String, String>,
    default_upstream: Option<String>,
    max_body_bytes: u32,
    limits: Limits,
    persisted: RefCell<apq::PersistedQueries>,
}

impl GraphqlPlan {
    pub fn new(rule: &GraphqlRule) -> Self {
        let capacity = usize::try_from(rule.persisted_queries).unwrap_or(usize::MAX);
        Self {
            fields: rule.fields.clone(),
            operations: rule.operations.clone(),
            default_upstream: rule.default_upstream.clone(),
            max_body_bytes: rule.max_body_bytes,
            limits: Limits {
                max_depth: rule.max_depth,
                max_cost: rule.max_cost,
            },
            persisted: RefCell::new(apq::PersistedQueries::new(capacity)),
        }
    }

    pub fn max_body_bytes(&self) -> u32 {
        self.max_body_bytes
    }

    /// Decides a POST body.
    pub fn decide_body(&self, body: &[u8], rule_upstream: &str) -> Result<Routed, GraphqlError> {
        if body.len() > self.max_body_bytes as usize {
            return Err(GraphqlError::too_large(self.max_body_bytes));
        }
        self.decide(request::from_json(body)?, rule_upstream, false)
    }

    /// Decides a GET request from its URL parameters.
    pub fn decide_get(&self, query: &str, rule_upstream: &str) -> Result<Routed, GraphqlError> {
        self.decide(request::from_query_string(query)?, rule_upstream, true)
    }

    pub fn decide(
        &self,
        req: GraphqlRequest,
        rule_upstream: &str,
        is_get: bool,
    ) -> Result<Routed, GraphqlError> {
        let (query, served) = self.resolve_query(&req)?;
        let doc = parse::parse(&query).map_err(GraphqlError::syntax)?;
        let op = select(&doc.operations, req.operation_name.as_deref())?;
        if is_get && op.kind == OpKind::Mutation {
            return Err(GraphqlError::method_not_allowed(
                "Can only perform a mutation operation from a POST request.",
            ));
        }
        let (depth, cost) = measure::measure(&doc, &op.selections, &req.variables, &self.limits)?;
        let roots = measure::root_fields(&doc, &op.selections)?;
        let upstream = self.upstream(op.name, &roots, rule_upstream)?;
        Ok(Routed {
            upstream,
            operation: op.name.unwrap_or("anonymous").to_string(),
            depth,
            cost,
            served_query: served.then_some(query),
        })
    }

    /// The query text, and whether it came from the persisted queries.
    fn resolve_query(&self, req: &GraphqlRequest) -> Result<(String, bool), GraphqlError> {
        let mut persisted = self.persisted.borrow_mut();
        match (&req.query, &req.persisted_hash) {
            (Some(q), None) => Ok((q.clone(), false)),
            (_, Some(_)) if !persisted.enabled() => {
                Err(GraphqlError::persisted_query_not_supported())
            }
            (Some(q), Some(hash)) => {
                if apq::sha256_hex(q) != *hash {
                    return Err(GraphqlError::bad_request(
                        "provided sha does not match query",
                    ));
                }
                persisted.put(hash, q);
                Ok((q.clone(), false))
            }
            (None, Some(hash)) => persisted
                .get(hash)
                .map(|q| (q, true))
                .ok_or_else(GraphqlError::persisted_query_not_found),
            (None, None) => Err(GraphqlError::bad_request("request has no \"query\"")),
        }
    }

    /// By operation name, then by the one owner of every root field (`__` fields have none).
    fn upstream(
        &self,
        name: Option<&str>,
        roots: &[&str],
        rule_upstream: &str,
    ) -> Result<String, GraphqlError> {
        if let Some(upstream) = name.and_then(|n| self.operations.get(n)) {
            return Ok(upstream.clone());
        }
        let fallback = self.default_upstream.as_deref();
        if self.fields.is_empty() {
            return Ok(fallback.unwrap_or(rule_upstream).to_string());
        }
        let mut owner: Option<(&str, &str)> = None;
        for field in roots.iter().filter(|f| !f.starts_with("__")) {
            let refuse = match (self.fields.get(*field), owner) {
                (None, _) => format!("no upstream owns root field \"{field}\""),
                (Some(o), None) => {
                    owner = Some((field, o));
                    continue;
                }
                (Some(o), Some((_, prev))) if o == prev => continue,
                (Some(o), Some((first, prev))) => format!(
                    "root fields \"{first}\" ({prev}) and \"{field}\" ({o}) belong to different \
                     upstreams: send them as separate operations"
                ),
            };
            return match fallback {
                Some(d) => Ok(d.to_string()),
                None => Err(GraphqlError::unroutable(refuse)),
            };
        }
        Ok(owner
            .map(|(_, o)| o)
            .or(fallback)
            .unwrap_or(rule_upstream)
            .to_string())
    }

    #[cfg(test)]
    pub fn persisted_len(&self) -> usize {
        self.persisted.borrow().len()
    }
}

fn select<'d, 'a>(
    ops: &'d [Operation<'a>],
    name: Option<&str>,
) -> Result<&'d Operation<'a>, GraphqlError> {
    match name {
        Some(n) => ops
            .iter()
            .find(|op| op.name == Some(n))
            .ok_or_else(|| GraphqlError::validation(format!("Unknown operation named \"{n}\"."))),
        None => match ops {
            [op] => Ok(op),
            [] => Err(GraphqlError::validation("document has no operation")),
            _ => Err(GraphqlError::validation(
                "Must provide operation name if query contains multiple operations.",
            )),
        },
    }
}

/// The body the upstream gets for a query served from the persisted queries.
pub fn expanded_body(req_query: &str, routed_from: &[u8]) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(routed_from).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("query".into(), serde_json::Value::String(req_query.into()));
    }
    value.to_string().into_bytes()
}

/// `query=<text>` for a GET URL, %-encoded.
pub fn query_parameter(query: &str) -> String {
    let mut out = String::from("query=");
    for b in query.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
