//! Whole-request decisions, and the tonic service Envoy (and nexus-ratelimit) call.

use std::sync::{Arc, RwLock};
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

pub struct RateLimiter<S> {
    limits: RwLock<Arc<Limits>>,
    storage: S,
    algorithm: Algorithm,
    unknown_domain: UnknownDomain,
    pub metrics: Metrics,
    degraded_log: LogOncePer,
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
            storage,
            algorithm,
            unknown_domain,
            metrics: Metrics::default(),
            degraded_log: LogOncePer::new(Duration::from_secs(10)),
        }
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
        // Resolve each descriptor; only limited ones become counters.
        let resolved: Vec<Option<Resolved>> = req
            .descriptors
            .iter()
            .map(|d| {
                let entries: Vec<(&str, &str)> = d
                    .entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect();
                let mut r = limits.resolve(&req.domain, &entries)?;
                if let Some(o) = &d.limit {
                    if let Some(unit) = unit_from_proto(o.unit) {
                        r.requests_per_unit = o.requests_per_unit;
                        r.unit = unit;
                        r.unlimited = false;
                    }
                }
                (!r.unlimited).then_some(r)
            })
            .collect();
        let counters: Vec<Counter> = resolved
            .iter()
            .flatten()
            .map(|r| Counter {
                key: format!("{}:{}{}", r.key, r.requests_per_unit, unit_suffix(r.unit)),
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

        let mut decisions = decisions.into_iter();
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(resolved.len());
        for r in &resolved {
            let Some(r) = r else {
                statuses.push(status(Code::Ok, None, 0, 0));
                continue;
            };
            let Some(d) = decisions.next() else {
                return Err(Status::internal(
                    "storage returned fewer decisions than counters",
                ));
            };
            let mut code = if d.allowed { Code::Ok } else { Code::OverLimit };
            if code == Code::OverLimit {
                if r.shadow_mode {
                    Metrics::inc(&self.metrics.descriptors_shadow_over_limit);
                    code = Code::Ok;
                } else {
                    Metrics::inc(&self.metrics.descriptors_over_limit);
                    overall = Code::OverLimit;
                }
            }
            statuses.push(status(code, Some(r), d.remaining, d.reset_us));
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
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
            name: String::new(),
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

fn unit_suffix(unit: Unit) -> &'static str {
    match unit {
        Unit::Second => "/s",
        Unit::Minute => "/m",
        Unit::Hour => "/h",
        Unit::Day => "/d",
    }
}

fn unit_to_proto(unit: Unit) -> ProtoUnit {
    match unit {
        Unit::Second => ProtoUnit::Second,
        Unit::Minute => ProtoUnit::Minute,
        Unit::Hour => ProtoUnit::Hour,
        Unit::Day => ProtoUnit::Day,
    }
}

fn unit_from_proto(unit: i32) -> Option<Unit> {
    match ProtoUnit::try_from(unit).ok()? {
        ProtoUnit::Second => Some(Unit::Second),
        ProtoUnit::Minute => Some(Unit::Minute),
        ProtoUnit::Hour => Some(Unit::Hour),
        ProtoUnit::Day => Some(Unit::Day),
        _ => None,
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
