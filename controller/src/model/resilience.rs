//! Retries, outlier detection (the CRD's `circuitBreaker`) and connection-pool limits.

use nexus_config::router::RetryPolicy;
use nexus_config::Validate;

use crate::crd::{CircuitBreaker, ConnectionPool, Retries, RetryBudget};

use super::problem::Ctx;

/// Seed circuit breaker: 5 consecutive errors eject for 60 s.
pub const SEED_CONSECUTIVE_ERRORS: u32 = 5;
pub const SEED_EJECTION_MS: u64 = 60_000;
/// Seed retries: 3 attempts on [`DEFAULT_RETRY_ON`].
pub const SEED_RETRIES: u32 = 3;
pub const DEFAULT_RETRY_ON: &str = "5xx,reset,connect-failure,refused-stream";

/// Outlier detection defaults the CRD does not require.
const DEFAULT_INTERVAL_MS: u64 = 10_000;
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_errors: u32,
    pub base_ejection_ms: u64,
    pub interval_ms: u64,
    pub max_ejection_percent: u32,
}

/// A retry policy and its per-try timeout, checked by the router's own validation.
pub(super) fn retries(cx: &mut Ctx, r: &Retries, path: &str) -> (RetryPolicy, Option<u64>) {
    let policy = RetryPolicy {
        max_retries: r.attempts,
        retry_on: r
            .retry_on
            .clone()
            .unwrap_or_else(|| DEFAULT_RETRY_ON.to_string()),
        non_idempotent: r.non_idempotent,
    };
    let mut errors = Vec::new();
    policy.validate(path, &mut errors);
    for e in &mut errors {
        e.path = e.path.replace(".max_retries", ".attempts");
    }
    cx.take_config_errors(errors);
    let per_try = cx.duration(&r.per_try_timeout, &format!("{path}.perTryTimeout"));
    (policy, per_try)
}

/// `spec.retries`, else the seed's: what rules get when neither they nor their category say.
pub(super) fn default_retry(cx: &mut Ctx, r: Option<&Retries>) -> (RetryPolicy, Option<u64>) {
    match r {
        Some(r) => retries(cx, r, "$.spec.retries"),
        None => (
            RetryPolicy {
                max_retries: SEED_RETRIES,
                retry_on: DEFAULT_RETRY_ON.to_string(),
                non_idempotent: false,
            },
            None,
        ),
    }
}

/// `spec.circuitBreaker`, else the seed's; an invalid duration falls back to its default.
pub(super) fn outlier(cx: &mut Ctx, cb: Option<&CircuitBreaker>) -> Outlier {
    let Some(cb) = cb else {
        return Outlier {
            consecutive_errors: SEED_CONSECUTIVE_ERRORS,
            base_ejection_ms: SEED_EJECTION_MS,
            interval_ms: DEFAULT_INTERVAL_MS,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        };
    };
    let at = "$.spec.circuitBreaker";
    if cb.consecutive_errors == 0 {
        cx.bad(format!("{at}.consecutiveErrors"), "must be at least 1");
    }
    let base = cx
        .duration(
            &Some(cb.base_ejection_time.clone()),
            &format!("{at}.baseEjectionTime"),
        )
        .unwrap_or(SEED_EJECTION_MS);
    let interval = cx
        .duration(&cb.interval, &format!("{at}.interval"))
        .unwrap_or(DEFAULT_INTERVAL_MS);
    let pct = cb
        .max_ejection_percent
        .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT);
    if pct > 100 {
        cx.bad(format!("{at}.maxEjectionPercent"), "must be 0..=100");
    }
    Outlier {
        consecutive_errors: cb.consecutive_errors,
        base_ejection_ms: base,
        interval_ms: interval,
        max_ejection_percent: pct,
    }
}

/// `spec.connectionPool` as given (render reads its fields); only its duration is checked here.
pub(super) fn pool(cx: &mut Ctx, pool: Option<&ConnectionPool>) -> ConnectionPool {
    let pool = pool.cloned().unwrap_or_default();
    if let Some(t) = &pool.connect_timeout {
        cx.duration(&Some(t.clone()), "$.spec.connectionPool.connectTimeout");
    }
    pool
}

/// `spec.retryBudget` as given, once its percentage is one Envoy accepts.
pub(super) fn retry_budget(cx: &mut Ctx, budget: Option<&RetryBudget>) -> Option<RetryBudget> {
    let b = budget?;
    if !(b.percent > 0.0 && b.percent <= 100.0) {
        cx.bad("$.spec.retryBudget.percent", "must be in (0, 100]");
    }
    Some(b.clone())
}
