//! Whole-request decisions, and the tonic service Envoy (and nexus-ratelimit) call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_config::ratelimit::Unit;
use nexus_proto::ratelimit::rate_limit_response::{
    rate_limit::Unit as ProtoUnit, Code, DescriptorStatus, RateLimit,
};
use nexus_proto::ratelimit::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use nexus_proto::ratelimit::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use crate::algorithm::{Algorithm, Counter};
use crate::limits::{Limits, Resolved};
use crate::metrics::{LogOncePer, Metrics};
use crate::storage::Storage;

/// What a call naming an unconfigured domain gets. Whatever the choice, it is counted in
/// `nexus_ratelimit_unknown_domain_total` and logged (once per interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownDomain {
    /// OK: nothing is configured to limit.
    Allow,
    /// OVER_LIMIT: a typo in a domain must not open the gates.
    Deny,
    /// gRPC FAILED_PRECONDITION: the caller's failure mode decides.
    Error,
}

impl std::str::FromStr for UnknownDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "error" => Ok(Self::Error),
            other => Err(format!(
                "unknown-domain takes allow, deny or error, not {other:?}"
            )),
        }
    }
}

/// Told of every call the service answers OVER_LIMIT (not shadow-mode overs, which are answered
/// OK): the event bus's over-limit summaries. Runs on the call's path, so it must only count.
pub type Refusals = Arc<dyn Fn(&RateLimitRequest) + Send + Sync>;

pub struct RateLimiter<S> {
    limits: RwLock<Arc<Limits>>,
    refusals: OnceLock<Refusals>,
    storage: S,
    algorithm: Algorithm,
    unknown_domain: UnknownDomain,
    pub metrics: Metrics,
    degraded_log: LogOncePer,
    response_dynamic_metadata: AtomicBool,
}

impl<S: Storage> RateLimiter<S> {
    pub fn new(
        limits: Limits,
        storage: S,
        algorithm: Algorithm,
        unknown_domain: UnknownDomain,
    ) -> Self {
        Self {
            limits: RwLock::new(Arc::new(limits)),
            refusals: OnceLock::new(),
            storage,
            algorithm,
            unknown_domain,
            metrics: Metrics::default(),
            degraded_log: LogOncePer::new(Duration::from_secs(10)),
            response_dynamic_metadata: AtomicBool::new(false),
        }
    }

    /// envoyproxy/ratelimit's `RESPONSE_DYNAMIC_METADATA`: answers carry `dynamic_metadata`
    /// (the domain, the descriptors, `hitsAddend`, and the `metadata` of every configured
    /// descriptor that was not over limit, merged).
    pub fn set_response_dynamic_metadata(&self, on: bool) {
        self.response_dynamic_metadata.store(on, Ordering::Relaxed);
    }

    /// Tells `refusals` of every call answered OVER_LIMIT from now on. Once: a second one is
    /// ignored (false).
    pub fn on_refusal(&self, refusals: Refusals) -> bool {
        self.refusals.set(refusals).is_ok()
    }

    /// Replaces the limits; calls in flight finish with the old ones.
    pub fn set_limits(&self, limits: Limits) {
        if let Ok(mut slot) = self.limits.write() {
            *slot = Arc::new(limits);
        }
    }

    pub fn limits(&self) -> Arc<Limits> {
        self.limits.read().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Decides one call at the current wall-clock time.
    pub async fn should_rate_limit(
        &self,
        req: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.decide(req, now_us).await
    }

    /// Decides one call at `now_us`; every descriptor gets a status, in request order.
    pub async fn decide(
        &self,
        req: &RateLimitRequest,
        now_us: u64,
    ) -> Result<RateLimitResponse, Status> {
        Metrics::inc(&self.metrics.requests);
        if req.domain.is_empty() || req.descriptors.is_empty() {
            Metrics::inc(&self.metrics.invalid_requests);
            return Err(Status::invalid_argument(
                "a rate limit request needs a domain and at least one descriptor",
            ));
        }
        let limits = self.limits();
        if !limits.has_domain(&req.domain) {
            Metrics::inc(&self.metrics.unknown_domain);
            if self.degraded_log.should_log("unknown_domain") {
                tracing::warn!(
                    domain = %req.domain,
                    "rate limit domain {:?} is not configured; answering per --unknown-domain={:?}",
                    req.domain,
                    self.unknown_domain
                );
            }
            let code = match self.unknown_domain {
                UnknownDomain::Allow => Code::Ok,
                UnknownDomain::Deny => Code::OverLimit,
                UnknownDomain::Error => {
                    return Err(Status::failed_precondition(format!(
                        "rate limit domain {:?} is not configured",
                        req.domain
                    )))
                }
            };
            return Ok(RateLimitResponse {
                overall_code: code as i32,
                statuses: req
                    .descriptors
                    .iter()
                    .map(|_| status(code, None, 0, 0))
                    .collect(),
                ..Default::default()
            });
        }

        let hits = if req.hits_addend == 0 {
            1
        } else {
            req.hits_addend
        };
        // Resolve each descriptor as envoyproxy/ratelimit does: a limit override in the request
        // wins (whatever the tree says, never in shadow mode), else the configured tree.
        let mut resolved: Vec<Option<Resolved>> = Vec::with_capacity(req.descriptors.len());
        for (i, d) in req.descriptors.iter().enumerate() {
            let entries: Vec<(&str, &str)> = d
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            resolved.push(match &d.limit {
                Some(o) => {
                    let Some(unit) = unit_from_proto(o.unit) else {
                        Metrics::inc(&self.metrics.invalid_requests);
                        return Err(Status::invalid_argument(format!(
                            "descriptor {i}: the limit override has no known unit ({})",
                            o.unit
                        )));
                    };
                    Some(override_limit(
                        &req.domain,
                        &entries,
                        o.requests_per_unit,
                        unit,
                    ))
                }
                None => limits.resolve(&req.domain, &entries),
            });
        }
        // `replaces`: a limit named by a matched limit's `replaces` is dropped from this call.
        let replaced = {
            let names: Vec<Option<(&str, &[String])>> = resolved
                .iter()
                .map(|r| r.as_ref().map(|r| (r.name.as_str(), r.replaces.as_slice())))
                .collect();
            replaced_names(&names)
        };
        let checked: Vec<Option<&Resolved>> = resolved
            .iter()
            .zip(&replaced)
            .map(|(r, dropped)| r.as_ref().filter(|r| !r.unlimited && !*dropped))
            .collect();
        let counters: Vec<Counter> = checked
            .iter()
            .flatten()
            .map(|r| Counter {
                key: counter_key(r),
                limit: r.requests_per_unit,
                window_us: r.window_us(),
            })
            .collect();
        let decisions = if counters.is_empty() {
            Vec::new()
        } else {
            match self
                .storage
                .check_and_update(self.algorithm, &counters, hits, now_us)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    Metrics::inc(&self.metrics.storage_errors);
                    if self.degraded_log.should_log("storage") {
                        tracing::error!(
                            "storage ({}) failed: {e}; answering UNAVAILABLE",
                            self.storage.describe()
                        );
                    }
                    return Err(Status::unavailable(format!(
                        "rate limit storage unavailable: {e}"
                    )));
                }
            }
        };

        // OVER_LIMIT when an ordinary limit is over, or when every quota-mode limit is.
        let mut decisions = decisions.into_iter();
        let (mut failed_limits, mut quota, mut failed_quota) = (0, 0, 0);
        let mut statuses = Vec::with_capacity(resolved.len());
        let mut outcomes = Vec::with_capacity(counters.len());
        for (r, c) in resolved.iter().zip(&checked) {
            let Some(c) = c else {
                statuses.push(match r {
                    // Unlimited: OK, with everything remaining (envoyproxy/ratelimit's answer).
                    Some(r) if r.unlimited => DescriptorStatus {
                        code: Code::Ok as i32,
                        limit_remaining: u32::MAX,
                        ..Default::default()
                    },
                    // Not configured, or replaced: OK without a limit.
                    _ => status(Code::Ok, None, 0, 0),
                });
                continue;
            };
            let Some(d) = decisions.next() else {
                return Err(Status::internal(
                    "storage returned fewer decisions than counters",
                ));
            };
            let over = !d.allowed;
            let shadowed = over && c.shadow_mode;
            outcomes.push((c.metric_key.as_str(), over, shadowed));
            let mut code = if over { Code::OverLimit } else { Code::Ok };
            if shadowed {
                Metrics::inc(&self.metrics.descriptors_shadow_over_limit);
                code = Code::Ok;
            } else if over {
                Metrics::inc(&self.metrics.descriptors_over_limit);
                if c.quota_mode {
                    failed_quota += 1;
                } else {
                    failed_limits += 1;
                }
            }
            if c.quota_mode {
                quota += 1;
            }
            statuses.push(status(code, Some(*c), d.remaining, d.reset_us));
        }
        self.metrics.count_descriptors(hits, &outcomes);
        let overall = if failed_limits > 0 || (quota > 0 && failed_quota == quota) {
            Code::OverLimit
        } else {
            Code::Ok
        };
        if overall == Code::OverLimit {
            if let Some(tell) = self.refusals.get() {
                tell(req);
            }
        }
        let dynamic_metadata = self
            .response_dynamic_metadata
            .load(Ordering::Relaxed)
            .then(|| dynamic_metadata(req, &limits, &checked, &statuses));
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            dynamic_metadata,
            ..Default::default()
        })
    }

    /// The tonic service for this limiter.
    pub fn into_service(self: Arc<Self>) -> RateLimitServiceServer<GrpcService<S>> {
        RateLimitServiceServer::new(GrpcService(self))
    }
}

fn status(code: Code, r: Option<&Resolved>, remaining: u32, reset_us: u64) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: r.map(|r| RateLimit {
            name: r.name.clone(),
            requests_per_unit: r.requests_per_unit,
            unit: unit_to_proto(r.unit) as i32,
        }),
        limit_remaining: remaining,
        duration_until_reset: r.map(|_| prost_types::Duration {
            seconds: i64::try_from(reset_us / 1_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from((reset_us % 1_000_000) * 1000).unwrap_or(0),
        }),
    }
}

/// A limit a request descriptor carries (`RateLimitOverride`): counted per descriptor (domain and
/// entries) and per override, never shadowed, never replaced or replacing.
fn override_limit(
    domain: &str,
    entries: &[(&str, &str)],
    requests_per_unit: u32,
    unit: Unit,
) -> Resolved {
    let mut key = domain.to_string();
    let mut metric_key = domain.to_string();
    for (k, v) in entries {
        key.push_str(&format!("|{k}={v}"));
        metric_key.push_str(&format!(".{k}"));
        if !v.is_empty() {
            metric_key.push_str(&format!("_{v}"));
        }
    }
    Resolved {
        key,
        metric_key,
        name: String::new(),
        replaces: Vec::new(),
        requests_per_unit,
        unit,
        unlimited: false,
        shadow_mode: false,
        quota_mode: false,
    }
}

/// For each resolved descriptor, whether another one (or itself) replaces its limit's name.
fn replaced_names(limits: &[Option<(&str, &[String])>]) -> Vec<bool> {
    let replacing: Vec<&str> = limits
        .iter()
        .flatten()
        .copied()
        .flat_map(|(_, replaces)| replaces.iter().map(String::as_str))
        .collect();
    limits
        .iter()
        .map(|l| l.is_some_and(|(name, _)| !name.is_empty() && replacing.contains(&name)))
        .collect()
}

/// The `dynamic_metadata` of an answer, as envoyproxy/ratelimit builds it.
fn dynamic_metadata(
    req: &RateLimitRequest,
    limits: &Limits,
    checked: &[Option<&Resolved>],
    statuses: &[DescriptorStatus],
) -> prost_types::Struct {
    use prost_types::value::Kind;
    use prost_types::{ListValue, Struct, Value};
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("domain".to_string(), string(req.domain.clone()));
    let descriptors = req
        .descriptors
        .iter()
        .map(|d| {
            let mut f = std::collections::BTreeMap::new();
            let entries = d
                .entries
                .iter()
                .map(|e| string(format!("{}={}", e.key, e.value)))
                .collect();
            f.insert(
                "entries".to_string(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: entries })),
                },
            );
            if let Some(o) = &d.limit {
                let unit = ProtoUnit::try_from(o.unit)
                    .map(|u| u.as_str_name())
                    .unwrap_or("UNKNOWN");
                f.insert(
                    "limit".to_string(),
                    string(format!(
                        "requests_per_unit:{} unit:{unit}",
                        o.requests_per_unit
                    )),
                );
            }
            Value {
                kind: Some(Kind::StructValue(Struct { fields: f })),
            }
        })
        .collect();
    fields.insert(
        "descriptors".to_string(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: descriptors,
            })),
        },
    );
    if req.hits_addend != 0 {
        fields.insert(
            "hitsAddend".to_string(),
            Value {
                kind: Some(Kind::NumberValue(f64::from(req.hits_addend))),
            },
        );
    }
    // The metadata of configured limits that were checked and not over (first value wins,
    // nested mappings merge).
    let mut merged = serde_json::Map::new();
    for ((d, c), s) in req.descriptors.iter().zip(checked).zip(statuses) {
        if c.is_none() || d.limit.is_some() || s.code == Code::OverLimit as i32 {
            continue;
        }
        let entries: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        if let Some(m) = limits.metadata(&req.domain, &entries) {
            merge_metadata(&mut merged, m);
        }
    }
    if !merged.is_empty() {
        fields.insert(
            "metadata".to_string(),
            json_to_proto(&serde_json::Value::Object(merged)),
        );
    }
    Struct { fields }
}

fn merge_metadata(
    into: &mut serde_json::Map<String, serde_json::Value>,
    from: &serde_json::Map<String, serde_json::Value>,
) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(serde_json::Value::Object(a)), serde_json::Value::Object(b)) => {
                merge_metadata(a, b)
            }
            (Some(_), _) => {}
            (None, v) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

fn json_to_proto(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_proto).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A limit's counter key: strict decisions and leases count on the same one.
pub(crate) fn counter_key(r: &Resolved) -> String {
    format!("{}:{}{}", r.key, r.requests_per_unit, unit_suffix(r.unit))
}

fn unit_suffix(unit: Unit) -> &'static str {
    match unit {
        Unit::Second => "/s",
        Unit::Minute => "/m",
        Unit::Hour => "/h",
        Unit::Day => "/d",
        Unit::Week => "/w",
        Unit::Month => "/mo",
        Unit::Year => "/y",
    }
}

fn unit_to_proto(unit: Unit) -> ProtoUnit {
    match unit {
        Unit::Second => ProtoUnit::Second,
        Unit::Minute => ProtoUnit::Minute,
        Unit::Hour => ProtoUnit::Hour,
        Unit::Day => ProtoUnit::Day,
        Unit::Week => ProtoUnit::Week,
        Unit::Month => ProtoUnit::Month,
        Unit::Year => ProtoUnit::Year,
    }
}

fn unit_from_proto(unit: i32) -> Option<Unit> {
    match ProtoUnit::try_from(unit).ok()? {
        ProtoUnit::Second => Some(Unit::Second),
        ProtoUnit::Minute => Some(Unit::Minute),
        ProtoUnit::Hour => Some(Unit::Hour),
        ProtoUnit::Day => Some(Unit::Day),
        ProtoUnit::Week => Some(Unit::Week),
        ProtoUnit::Month => Some(Unit::Month),
        ProtoUnit::Year => Some(Unit::Year),
        ProtoUnit::Unknown => None,
    }
}

pub struct GrpcService<S>(pub Arc<RateLimiter<S>>);

#[tonic::async_trait]
impl<S: Storage> RateLimitService for GrpcService<S> {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.0
            .should_rate_limit(request.get_ref())
            .await
            .map(Response::new)
    }
}
