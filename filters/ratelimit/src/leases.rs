//! Leased limits in the filter: requests admitted from the Envoy's lease ([`crate::lease`]),
//! renewals and idle returns queued as calls for the adapter to send from the root context, and
//! the service's answers folded back into the lease.

use nexus_config::ratelimit_filter::LeaseConfig;
use nexus_filter_core::{Metrics, SharedData};
use nexus_proto::lease::{Entry, LeaseRequest, LeaseResponse};
use prost::Message;

use crate::lease::{self, Call, Params, Take};
use crate::{policy_headers, too_many, Limited, Pending, RateLimiter, ServiceFailure, Step};

/// Leased counters a VM remembers for idle returns; past this, a counter's unused quota simply
/// expires with its window.
const MAX_KNOWN: usize = 4096;

/// A `nexus.ratelimit.v1.RateLimitLeases/Lease` call to send for counter `key`; its answer goes
/// to [`RateLimiter::on_lease_answer`] with the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCall {
    pub key: String,
    pub message: Vec<u8>,
}

/// What the tick needs to give a counter's quota back.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    entries: Vec<(String, String)>,
    idle_us: u64,
}

impl RateLimiter {
    /// How `l` is leased, if it is.
    pub(crate) fn lease_of(&self, route: &str, l: &Limited) -> Option<&LeaseConfig> {
        self.config.leases_by_limit.get(route)?.get(l.policy_name())
    }

    /// Every leased limit of a request takes one request from its lease. One that is exhausted
    /// refuses (429 until its window ends); the empty ones (renewal not answered) apply their
    /// failure modes; otherwise allowed, with the headers of the tightest.
    pub(crate) fn take_leases(
        &self,
        route: &str,
        leased: &[Limited],
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) -> Step {
        let mut tightest: Option<(&Limited, u64, u64)> = None;
        let mut denied: Option<(&Limited, u64)> = None;
        let mut empty = Vec::new();
        for l in leased {
            let Some(cfg) = self.lease_of(route, l) else {
                continue;
            };
            let (take, call) = lease::take(shared, &l.key, self.params(cfg, l), now_us);
            if let Some(call) = call {
                self.queue(l, cfg, call, metrics);
            }
            match take {
                Take::Admitted { left, reset_us } => {
                    if tightest.is_none_or(|(_, t, _)| left < t) {
                        tightest = Some((l, left, reset_us));
                    }
                }
                Take::Exhausted { reset_us } if !l.shadow_mode => {
                    if denied.is_none_or(|(_, r)| reset_us > r) {
                        denied = Some((l, reset_us));
                    }
                }
                Take::Exhausted { .. } => {}
                Take::Empty => empty.push(l.clone()),
            }
        }
        if let Some((l, reset_us)) = denied {
            metrics.increment("nexus_ratelimit.denied.lease", 1);
            return Step::Deny(too_many(route, l, reset_us));
        }
        if !empty.is_empty() {
            metrics.increment("nexus_ratelimit.lease.empty", 1);
            let pending = Pending {
                route: route.to_string(),
                limited: empty,
            };
            let (modes, applied) = self.failure_modes(&pending);
            let step =
                self.apply_failure_modes(&pending, &modes, &applied, shared, metrics, now_us);
            if matches!(step, Step::Deny(_)) {
                return step;
            }
        }
        metrics.increment("nexus_ratelimit.allowed.lease", 1);
        Step::Allow(match tightest {
            Some((l, left, reset_us)) if self.config.response_headers => {
                policy_headers(l, u32::try_from(left).unwrap_or(u32::MAX), reset_us)
            }
            _ => Vec::new(),
        })
    }

    fn params(&self, cfg: &LeaseConfig, l: &Limited) -> Params {
        let timeout_ms = self.config.service.as_ref().map_or(50, |s| s.timeout_ms);
        Params {
            size: cfg.lease_size(l.requests_per_unit),
            renew_at: cfg.renew_at(l.requests_per_unit),
            // The call's own timeout, and as much again for its answer to be processed.
            call_deadline_us: 2 * timeout_ms * 1_000,
        }
    }

    fn queue(&self, l: &Limited, cfg: &LeaseConfig, call: Call, metrics: &impl Metrics) {
        let mut known = self.leased.borrow_mut();
        if known.len() < MAX_KNOWN || known.contains_key(&l.key) {
            known.insert(
                l.key.clone(),
                Known {
                    entries: l.entries.clone(),
                    idle_us: cfg.idle_return_ms * 1_000,
                },
            );
        }
        drop(known);
        self.push_call(&l.key, &l.entries, call, metrics);
    }

    fn push_call(
        &self,
        key: &str,
        entries: &[(String, String)],
        call: Call,
        metrics: &impl Metrics,
    ) {
        let message = LeaseRequest {
            domain: self.config.limits.domain.clone(),
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            requested: call.requested,
            num_requests_allowed: call.used,
            returned: call.returned,
            returned_window_start_us: call.returned_window_start_us,
        }
        .encode_to_vec();
        metrics.increment("nexus_ratelimit.lease.calls", 1);
        self.lease_calls.borrow_mut().push(LeaseCall {
            key: key.to_string(),
            message,
        });
    }

    /// The lease calls decided since the last drain, for the adapter to send.
    pub fn take_lease_calls(&self) -> Vec<LeaseCall> {
        std::mem::take(&mut *self.lease_calls.borrow_mut())
    }

    /// The service answered (or failed) a lease call for counter `key`.
    pub fn on_lease_answer(
        &self,
        key: &str,
        answer: Result<&[u8], ServiceFailure>,
        shared: &impl SharedData,
        metrics: &impl Metrics,
        now_us: u64,
    ) {
        match answer.map(LeaseResponse::decode) {
            Ok(Ok(resp)) => {
                metrics.increment(
                    "nexus_ratelimit.lease.granted",
                    i64::try_from(resp.granted).unwrap_or(i64::MAX),
                );
                lease::granted(shared, key, &resp, now_us);
            }
            _ => {
                metrics.increment("nexus_ratelimit.lease.failed", 1);
                lease::failed(shared, key);
            }
        }
    }

    /// The root's tick: leases idle for their `idle_return_ms` give their quota back.
    pub fn lease_tick(&self, shared: &impl SharedData, metrics: &impl Metrics, now_us: u64) {
        let known: Vec<(String, Known)> = self
            .leased
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, k) in known {
            let (call, gone) = lease::idle_return(shared, &key, k.idle_us, now_us);
            if let Some(call) = call {
                metrics.increment(
                    "nexus_ratelimit.lease.returned",
                    i64::try_from(call.returned).unwrap_or(i64::MAX),
                );
                self.push_call(&key, &k.entries, call, metrics);
            } else if gone {
                self.leased.borrow_mut().remove(&key);
            }
        }
    }
}
