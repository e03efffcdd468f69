//! A rule's rate limits as one rate-limit-service descriptor: the route-wide limit on the
//! rule's own entry, per-client and per-header limits nested under it; and the failure modes
//! the filter applies to them while the service cannot answer.

use std::collections::{BTreeMap, BTreeSet};

use nexus_config::ratelimit::{
    Descriptor, RateLimit, Unit, CLIENT_KEY, HEADER_KEY_PREFIX, ROUTE_KEY,
};
use nexus_config::ratelimit_filter::{FailureMode, LeaseConfig};

use crate::crd::{LimitFailureMode, LimitMode, RateLimitBy, RateLimitSpec, RateUnit};

use super::problem::Ctx;

/// One rule's limits.
pub(super) struct RuleLimits {
    pub descriptor: Descriptor,
    /// Descriptor key (`route` for the rule's own limit) → the mode its limit set; limits
    /// without `failureMode` keep the filter's default (local fallback).
    pub failure_modes: BTreeMap<String, FailureMode>,
    /// Descriptor key → how its limit is leased, for `mode: Leased` limits.
    pub leases: BTreeMap<String, LeaseConfig>,
}

/// The limits of rule `rule` (its full name, the `x-nexus-rule` value), or none without
/// limits. `at` is the rule's JSON path.
pub(super) fn descriptor(
    cx: &mut Ctx,
    limits: &[RateLimitSpec],
    at: &str,
    rule: &str,
) -> Option<RuleLimits> {
    if limits.is_empty() {
        return None;
    }
    let mut top = Descriptor {
        key: ROUTE_KEY.to_string(),
        value: Some(rule.to_string()),
        rate_limit: None,
        descriptors: Vec::new(),
        shadow_mode: false,
        ..Default::default()
    };
    let mut seen = BTreeSet::new();
    let mut failure_modes = BTreeMap::new();
    let mut leases = BTreeMap::new();
    for (k, l) in limits.iter().enumerate() {
        let here = format!("{at}.rateLimits[{k}]");
        if l.requests == 0 {
            cx.bad(format!("{here}.requests"), "must be at least 1");
        }
        let Some(key) = key(cx, l, &here) else {
            continue;
        };
        if !seen.insert(key.clone()) {
            cx.bad(
                &here,
                "one limit per rule for each of Route, Client and each header",
            );
            continue;
        }
        if let Some(mode) = failure_mode(cx, l, &here) {
            let counted_by = key.clone().unwrap_or_else(|| ROUTE_KEY.to_string());
            failure_modes.insert(counted_by, mode);
        }
        if let Some(lease) = lease(cx, l, &here) {
            leases.insert(key.clone().unwrap_or_else(|| ROUTE_KEY.to_string()), lease);
        }
        match key {
            None => {
                top.rate_limit = Some(limit(l));
                top.shadow_mode = l.shadow;
            }
            Some(key) => top.descriptors.push(Descriptor {
                key,
                value: None,
                rate_limit: Some(limit(l)),
                descriptors: Vec::new(),
                shadow_mode: l.shadow,
                ..Default::default()
            }),
        }
    }
    Some(RuleLimits {
        descriptor: top,
        failure_modes,
        leases,
    })
}

/// The filter's lease settings for a `mode: Leased` limit; `lease` without it is refused (it
/// would silently do nothing).
fn lease(cx: &mut Ctx, l: &RateLimitSpec, here: &str) -> Option<LeaseConfig> {
    if l.mode != Some(LimitMode::Leased) {
        if l.lease.is_some() {
            cx.bad(format!("{here}.lease"), "lease settings need mode: Leased");
        }
        return None;
    }
    let spec = l.lease.clone().unwrap_or_default();
    let mut out = LeaseConfig::default();
    if let Some(p) = spec.share_percent {
        if !(1..=100).contains(&p) {
            cx.bad(format!("{here}.lease.sharePercent"), "must be 1 to 100");
        }
        out.share_percent = p;
    }
    if let Some(p) = spec.renew_below_percent {
        if p > 99 {
            cx.bad(format!("{here}.lease.renewBelowPercent"), "must be 0 to 99");
        }
        out.renew_below_percent = p;
    }
    if let Some(d) = &spec.idle_return {
        match super::parse_duration_ms(d) {
            Some(ms) if (100..=3_600_000).contains(&ms) => out.idle_return_ms = ms,
            _ => cx.bad(
                format!("{here}.lease.idleReturn"),
                format!("{d:?} is not a duration from 100ms to 1h"),
            ),
        }
    }
    Some(out)
}

/// The filter's mode for a limit's `failureMode`, if set (a shadow limit never refuses, so
/// `closed` there is refused as a contradiction).
fn failure_mode(cx: &mut Ctx, l: &RateLimitSpec, here: &str) -> Option<FailureMode> {
    let mode = match l.failure_mode? {
        LimitFailureMode::Open => FailureMode::FailOpen,
        LimitFailureMode::Closed => FailureMode::FailClosed,
        LimitFailureMode::LocalFallback => FailureMode::LocalFallback,
    };
    if l.shadow && mode == FailureMode::FailClosed {
        cx.bad(
            format!("{here}.failureMode"),
            "a shadow limit never refuses a request, so it cannot fail closed",
        );
    }
    Some(mode)
}

/// The nested descriptor key a limit counts by: `Some(None)` for the route itself, `None` if
/// invalid (reported).
fn key(cx: &mut Ctx, l: &RateLimitSpec, here: &str) -> Option<Option<String>> {
    let key = match l.by {
        RateLimitBy::Route => None,
        RateLimitBy::Client => Some(CLIENT_KEY.to_string()),
        RateLimitBy::Header => match &l.header {
            Some(h) if !h.is_empty() => {
                Some(format!("{HEADER_KEY_PREFIX}{}", h.to_ascii_lowercase()))
            }
            _ => {
                cx.bad(format!("{here}.header"), "by: Header needs header");
                return None;
            }
        },
    };
    if l.by != RateLimitBy::Header && l.header.is_some() {
        cx.bad(format!("{here}.header"), "header is only for by: Header");
    }
    Some(key)
}

fn limit(l: &RateLimitSpec) -> RateLimit {
    RateLimit {
        unlimited: false,
        unit: Some(match l.per {
            RateUnit::Second => Unit::Second,
            RateUnit::Minute => Unit::Minute,
            RateUnit::Hour => Unit::Hour,
        }),
        requests_per_unit: l.requests,
        ..Default::default()
    }
}
