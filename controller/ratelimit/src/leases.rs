//! `nexus.ratelimit.v1.RateLimitLeases`: leased quota for proxies (see `storage::lease`). A
//! bucket resolves to its limit exactly as in `ShouldRateLimit`, and counts on the same
//! fixed-window counter, whatever `--algorithm` strict calls use.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nexus_proto::lease::rate_limit_leases_server::{RateLimitLeases, RateLimitLeasesServer};
use nexus_proto::lease::{LeaseRequest, LeaseResponse};
use tonic::{Request, Response, Status};

use crate::algorithm::Counter;
use crate::metrics::Metrics;
use crate::service::{counter_key, GrpcService};
use crate::storage::lease::LeaseOp;
use crate::storage::Storage;
use crate::RateLimiter;

impl<S: Storage> RateLimiter<S> {
    /// Answers one lease call at `now_us`.
    pub async fn lease(&self, req: &LeaseRequest, now_us: u64) -> Result<LeaseResponse, Status> {
        Metrics::inc(&self.metrics.lease_calls);
        let entries: Vec<(&str, &str)> = req
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let limits = self.limits();
        let Some(r) = limits.resolve(&req.domain, &entries) else {
            return Err(Status::not_found(format!(
                "no limit applies to {:?} in domain {:?}",
                entries, req.domain
            )));
        };
        if r.unlimited {
            return Err(Status::failed_precondition(
                "an unlimited descriptor has no budget to lease",
            ));
        }
        let counter = Counter {
            key: counter_key(&r),
            limit: r.requests_per_unit,
            window_us: r.window_us(),
        };
        let op = LeaseOp {
            requested: req.requested,
            returned: req.returned,
            returned_window_start_us: req.returned_window_start_us,
        };
        let grant = self
            .storage()
            .lease(&counter, op, now_us)
            .await
            .map_err(|e| {
                Metrics::inc(&self.metrics.storage_errors);
                Status::unavailable(format!("rate limit storage unavailable: {e}"))
            })?;
        Metrics::add(&self.metrics.lease_granted, grant.granted);
        Metrics::add(&self.metrics.lease_returned, req.returned);
        Metrics::add(&self.metrics.lease_used, req.num_requests_allowed);
        let ttl_us = grant.window_end_us.saturating_sub(now_us);
        Ok(LeaseResponse {
            granted: grant.granted,
            window_start_us: grant.window_start_us,
            assignment_time_to_live: Some(prost_types::Duration {
                seconds: i64::try_from(ttl_us / 1_000_000).unwrap_or(i64::MAX),
                nanos: i32::try_from((ttl_us % 1_000_000) * 1_000).unwrap_or(0),
            }),
            remaining: grant.remaining,
            requests_per_unit: r.requests_per_unit,
        })
    }

    /// The tonic lease service for this limiter (served beside `into_service`'s).
    pub fn into_lease_service(self: Arc<Self>) -> RateLimitLeasesServer<GrpcService<S>> {
        RateLimitLeasesServer::new(GrpcService(self))
    }
}

#[tonic::async_trait]
impl<S: Storage> RateLimitLeases for GrpcService<S> {
    async fn lease(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.0
            .lease(request.get_ref(), now_us)
            .await
            .map(Response::new)
    }
}
