//! The nexus-ratelimit filter, host-agnostic and sans-IO.
//!
//! [`RateLimiter::on_request`] turns a request into a [`Step`]: allow, deny (429), or "ask the
//! global service this" (the adapter dispatches the gRPC call and hands the answer to
//! [`RateLimiter::on_service_response`]). Local limits live in token buckets in shared data,
//! so every worker of one Envoy draws from the same bucket.

pub mod audit;
mod bucket;
mod descriptors;
pub mod lease;
mod leases;
mod overlimit;
mod resets;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use nexus_config::ratelimit::Unit;
use nexus_config::ratelimit_filter::{FailureMode, RateLimitFilterConfig};
use nexus_config::ConfigErrors;
use nexus_filter_core::feed::Feed;
use nexus_filter_core::{HeaderMap, Level, LocalResponse, Log, Metrics, SharedData};
use nexus_proto::ratelimit::rate_limit_descriptor::Entry;
use nexus_proto::ratelimit::rate_limit_response::Code;
use nexus_proto::ratelimit::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use prost::Message;

pub use bucket::BucketState;
pub use descriptors::Limited;
pub use leases::LeaseCall;
pub use overlimit::SLOTS as OVER_LIMIT_CACHE_SLOTS;
pub use resets::{FeedAction, FeedMessage};

/// One minute between log lines about the same degradation, however many requests degrade.
const DEGRADED_LOG_INTERVAL_US: u64 = 60_000_000;

pub struct RateLimiter {
    config: RateLimitFilterConfig,
    last_degraded_log_us: Cell<u64>,
    /// The reset stream (`resets_cluster`), if configured.
    feed: Option<Feed>,
    /// Lease calls decided but not yet sent (the adapter drains them).
    lease_calls: RefCell<Vec<LeaseCall>>,
    /// Leased counters this VM has used, visited by the tick for idle returns.
    leased: RefCell<HashMap<String, leases::Known>>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Forward; add these headers to the response.
    Allow(Vec<(String, String)>),
    Deny(LocalResponse),
    /// Send `message` (an encoded `RateLimitRequest`) to the service, then call
    /// [`RateLimiter::on_service_response`] with `pending`.
    CallService {
        message: Vec<u8>,
        pending: Pending,
    },
}

/// What the filter keeps while the service answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    route: String,
    limited: Vec<Limited>,
}

/// How a service call ended when it did not return a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFailure {
    /// gRPC status (Envoy reports a timeout as DEADLINE_EXCEEDED or UNAVAILABLE).
    Status(u32, String),
    /// The call could not even be dispatched (unknown cluster, ...).
    Dispatch(String),
}

impl RateLimiter {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        Ok(Self::new(nexus_config::parse(bytes)?))
    }

    pub fn new(config: RateLimitFilterConfig) -> Self {
        Self {
            feed: config.resets_cluster.as_deref().map(Feed::new),
            config,
            last_degraded_log_us: Cell::new(0),
            lease_calls: RefCell::new(Vec::new()),
            leased: RefCell::new(HashMap::new()),
        }
    }

    pub fn service(&self) -> Option<&nexus_config::ratelimit_filter::RateLimitService> {
        self.config.service.as_ref()
    }

    /// Where the adapter sends [`audit::record`]s of denials, if configured.
    pub fn audit_sink(&self) -> Option<&nexus_config::audit::AuditSink> {
        self.config.audit.as_ref()
    }

    pub fn on_request(
        &self,
        headers: &impl HeaderMap,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) -> Step {
        let Some((route, limited)) = descriptors::for_request(&self.config.limits, headers) else {
            return Step::Allow(Vec::new());
        };
        if limited.is_empty() {
            return Step::Allow(Vec::new());
        }
        if self.config.service.is_some() {
            if let Some(deny) = self.over_limit_locally(&route, &limited, shared, metrics, now_us) {
                return deny;
            }
            let (leased, limited): (Vec<Limited>, Vec<Limited>) = limited
                .into_iter()
                .partition(|l| self.lease_of(&route, l).is_some());
            let mut headers = Vec::new();
            if !leased.is_empty() {
                match self.take_leases(&route, &leased, shared, metrics, now_us) {
                    Step::Allow(h) => headers = h,
                    other => return other,
                }
            }
            if limited.is_empty() {
                return Step::Allow(headers);
            }
            let message = RateLimitRequest {
                domain: self.config.limits.domain.clone(),
                descriptors: limited
                    .iter()
                    .map(|l| RateLimitDescriptor {
                        entries: l
                            .entries
                            .iter()
                            .map(|(k, v)| Entry {
                                key: k.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                        limit: None,
                    })
                    .collect(),
                hits_addend: 1,
            }
            .encode_to_vec();
            return Step::CallService {
                message,
                pending: Pending { route, limited },
            };
        }
        self.enforce_locally(&route, &limited, shared, metrics, now_us)
    }

    /// The service's answer (or failure) for a request that was paused on it.
    pub fn on_service_response(
        &self,
        pending: &Pending,
        answer: Result<&[u8], ServiceFailure>,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        log: &impl Log,
        now_us: u64,
    ) -> Step {
        let failure = match answer {
            Ok(bytes) => match RateLimitResponse::decode(bytes) {
                Ok(resp) if resp.overall_code == Code::Ok as i32 => {
                    metrics.increment("nexus_ratelimit.allowed", 1);
                    return Step::Allow(self.headers_from_service(pending, &resp));
                }
                Ok(resp) if resp.overall_code == Code::OverLimit as i32 => {
                    return self.deny_from_service(pending, &resp, shared, metrics, now_us);
                }
                Ok(resp) => format!("service answered overall_code {}", resp.overall_code),
                Err(e) => format!("undecodable service response: {e}"),
            },
            Err(ServiceFailure::Status(code, msg)) => {
                format!("service call failed: gRPC status {code} {msg}")
            }
            Err(ServiceFailure::Dispatch(msg)) => format!("service call not dispatched: {msg}"),
        };
        self.on_service_failure(pending, &failure, shared, metrics, log, now_us)
    }

    /// The service did not decide: each limit of the request applies its failure mode. One
    /// `fail_closed` limit refuses the request; otherwise the `local_fallback` limits are
    /// enforced locally and the `fail_open` ones skipped. Each mode applied is counted once
    /// per request.
    fn on_service_failure(
        &self,
        pending: &Pending,
        failure: &str,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        log: &impl Log,
        now_us: u64,
    ) -> Step {
        let (modes, applied) = self.failure_modes(pending);
        self.log_degraded(failure, &applied, log, now_us);
        self.apply_failure_modes(pending, &modes, &applied, shared, metrics, now_us)
    }

    /// Each limit of `pending` in its mode (`modes`, in order; `applied`: the modes that
    /// decide, counted once each).
    fn apply_failure_modes(
        &self,
        pending: &Pending,
        modes: &[FailureMode],
        applied: &[FailureMode],
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) -> Step {
        for mode in applied {
            metrics.increment(&format!("nexus_ratelimit.degraded.{}", mode.name()), 1);
        }
        if applied.contains(&FailureMode::FailClosed) {
            return Step::Deny(LocalResponse::json_error(
                500,
                "rate_limit_unavailable",
                "the rate-limit service did not answer and a limit of this route fails closed",
            ));
        }
        let fallback: Vec<Limited> = pending
            .limited
            .iter()
            .zip(modes)
            .filter(|(_, m)| **m == FailureMode::LocalFallback)
            .map(|(l, _)| l.clone())
            .collect();
        if fallback.is_empty() {
            return Step::Allow(Vec::new());
        }
        self.enforce_locally(&pending.route, &fallback, shared, metrics, now_us)
    }

    /// Each limit's mode, and the modes that decide the request (a `fail_closed` alone).
    fn failure_modes(&self, pending: &Pending) -> (Vec<FailureMode>, Vec<FailureMode>) {
        let modes: Vec<FailureMode> = pending
            .limited
            .iter()
            .map(|l| self.failure_mode_of(&pending.route, l))
            .collect();
        let applied: Vec<FailureMode> = if modes.contains(&FailureMode::FailClosed) {
            vec![FailureMode::FailClosed]
        } else {
            [FailureMode::FailOpen, FailureMode::LocalFallback]
                .into_iter()
                .filter(|m| modes.contains(m))
                .collect()
        };
        (modes, applied)
    }

    /// A limit's own failure mode, else its route's, else the filter's. A shadow-mode limit
    /// never refuses, so `fail_closed` falls back to local counting there.
    fn failure_mode_of(&self, route: &str, l: &Limited) -> FailureMode {
        let mode = self
            .config
            .failure_mode_by_limit
            .get(route)
            .and_then(|by_key| by_key.get(l.policy_name()))
            .or_else(|| self.config.failure_mode_by_route.get(route))
            .copied()
            .unwrap_or(self.config.failure_mode);
        match mode {
            FailureMode::FailClosed if l.shadow_mode => FailureMode::LocalFallback,
            mode => mode,
        }
    }

    /// Once a minute at most, however many requests degrade.
    fn log_degraded(&self, failure: &str, applied: &[FailureMode], log: &impl Log, now_us: u64) {
        let last = self.last_degraded_log_us.get();
        if last != 0 && now_us.saturating_sub(last) < DEGRADED_LOG_INTERVAL_US {
            return;
        }
        self.last_degraded_log_us.set(now_us.max(1));
        let names: Vec<&str> = applied.iter().map(|m| m.name()).collect();
        log.log(
            Level::Warn,
            &format!(
                "nexus-ratelimit: {failure}; applying {} (logged once per minute)",
                names.join(", ")
            ),
        );
    }

    fn enforce_locally(
        &self,
        route: &str,
        limited: &[Limited],
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) -> Step {
        // Every bucket is drawn from (as the service counts every descriptor); then an
        // ordinary limit over denies, and so does every quota-mode limit being over.
        let states: Vec<(&Limited, BucketState)> = limited
            .iter()
            .map(|l| {
                let state =
                    bucket::take(shared, &l.key, l.requests_per_unit, l.unit, now_us, metrics);
                (l, state)
            })
            .collect();
        fn over(l: &Limited, s: &BucketState) -> bool {
            !s.allowed && !l.shadow_mode
        }
        let quota: Vec<&(&Limited, BucketState)> =
            states.iter().filter(|(l, _)| l.quota_mode).collect();
        let denied = states
            .iter()
            .find(|(l, s)| !l.quota_mode && over(l, s))
            .or_else(|| {
                let all_over = !quota.is_empty() && quota.iter().all(|(l, s)| over(l, s));
                all_over.then(|| quota.first().copied()).flatten()
            });
        if let Some((l, state)) = denied {
            metrics.increment("nexus_ratelimit.denied.local", 1);
            return Step::Deny(too_many(route, l, state.reset_us));
        }
        // The first of the descriptors with the fewest requests left.
        let tightest = states.iter().min_by_key(|(_, s)| s.remaining);
        metrics.increment("nexus_ratelimit.allowed", 1);
        Step::Allow(match tightest {
            Some((l, s)) if self.config.response_headers => {
                policy_headers(l, s.remaining, s.reset_us)
            }
            _ => Vec::new(),
        })
    }

    fn headers_from_service(
        &self,
        pending: &Pending,
        resp: &RateLimitResponse,
    ) -> Vec<(String, String)> {
        if !self.config.response_headers {
            return Vec::new();
        }
        // The descriptor with the fewest requests left is the one a client must respect.
        pending
            .limited
            .iter()
            .zip(&resp.statuses)
            .filter(|(_, s)| s.current_limit.is_some())
            .min_by_key(|(_, s)| s.limit_remaining)
            .map(|(l, s)| policy_headers(l, s.limit_remaining, reset_us(s)))
            .unwrap_or_default()
    }

    /// A 429 without asking the service, when one of the request's descriptors is in the
    /// over-limit cache and its window has not ended (`nexus_ratelimit.over_limit_local`).
    fn over_limit_locally(
        &self,
        route: &str,
        limited: &[Limited],
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) -> Option<Step> {
        if !self.config.over_limit_cache || !self.over_limit_cache_trusted() {
            return None;
        }
        // The remembered descriptor whose window ends last is the one a client must wait for,
        // as for a service-decided 429.
        let (l, left_us) = limited
            .iter()
            .filter(|l| cacheable(l))
            .filter_map(|l| Some((l, overlimit::remaining_us(shared, &l.key, now_us)?)))
            .max_by_key(|(_, left)| *left)?;
        metrics.increment("nexus_ratelimit.over_limit_local", 1);
        Some(Step::Deny(too_many(route, l, left_us)))
    }

    fn deny_from_service(
        &self,
        pending: &Pending,
        resp: &RateLimitResponse,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) -> Step {
        metrics.increment("nexus_ratelimit.denied.global", 1);
        if self.config.over_limit_cache {
            for (l, s) in pending.limited.iter().zip(&resp.statuses) {
                if s.code != Code::OverLimit as i32 || !cacheable(l) {
                    continue;
                }
                if let Some(until) = overlimit::window_end_us(s, now_us) {
                    overlimit::remember(shared, &l.key, until);
                }
            }
        }
        let over = pending
            .limited
            .iter()
            .zip(&resp.statuses)
            .filter(|(_, s)| s.code == Code::OverLimit as i32)
            .max_by_key(|(_, s)| reset_us(s));
        match over {
            Some((l, s)) => Step::Deny(too_many(&pending.route, l, reset_us(s))),
            None => Step::Deny(LocalResponse::json_error(
                429,
                "rate_limited",
                "the rate-limit service refused this request",
            )),
        }
    }
}

/// Whether an over-limit answer for this descriptor may be remembered. Shadow-mode limits never
/// deny; a quota-mode limit denies only when every quota-mode limit of the request is over, so
/// one of them being over says nothing about the next request on its own.
fn cacheable(l: &Limited) -> bool {
    !l.shadow_mode && !l.quota_mode
}

fn reset_us(s: &nexus_proto::ratelimit::rate_limit_response::DescriptorStatus) -> u64 {
    s.duration_until_reset
        .as_ref()
        .map(|d| {
            u64::try_from(d.seconds).unwrap_or(0) * 1_000_000
                + u64::try_from(d.nanos).unwrap_or(0) / 1_000
        })
        .unwrap_or(0)
}

/// `RateLimit-Policy` and `RateLimit` per draft-ietf-httpapi-ratelimit-headers (structured
/// fields): the policy's quota and window, and what is left of it.
fn policy_headers(l: &Limited, remaining: u32, reset_us: u64) -> Vec<(String, String)> {
    let name = l.policy_name();
    vec![
        (
            "ratelimit-policy".to_string(),
            format!(
                "\"{name}\";q={};w={}",
                l.requests_per_unit,
                l.unit.seconds()
            ),
        ),
        (
            "ratelimit".to_string(),
            format!("\"{name}\";r={remaining};t={}", seconds_up(reset_us)),
        ),
    ]
}

fn seconds_up(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

fn too_many(route: &str, l: &Limited, reset_us: u64) -> LocalResponse {
    let retry_after = seconds_up(reset_us).max(1);
    let who = match l.entries.get(1) {
        Some((k, v)) => format!("{k}={v} on route {route}"),
        None => format!("route {route}"),
    };
    let detail = format!(
        "limit of {} requests per {} for {who} exceeded; retry after {retry_after} s",
        l.requests_per_unit,
        unit_name(l.unit)
    );
    let mut resp = LocalResponse::json_error(429, "rate_limited", &detail)
        .with_header("retry-after", &retry_after.to_string());
    for (k, v) in policy_headers(l, 0, reset_us) {
        resp = resp.with_header(&k, &v);
    }
    resp
}

fn unit_name(unit: Unit) -> &'static str {
    unit.name()
}

#[cfg(test)]
mod tests;
