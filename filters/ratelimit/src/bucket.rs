//! Local token buckets in shared data: one per counter key, shared by every worker of the
//! Envoy, updated with compare-and-swap so concurrent workers never both spend the last token.

use nexus_config::ratelimit::Unit;
use nexus_filter_core::host::SharedDataError;
use nexus_filter_core::{Metrics, SharedData};

/// A token is a million micro-tokens, so refill is exact in integers at any rate.
const TOKEN: u128 = 1_000_000;
const CAS_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub allowed: bool,
    pub remaining: u32,
    /// Allowed: until the bucket is full again. Denied: until the next token.
    pub reset_us: u64,
}

/// Takes one token from the bucket for `key` (capacity `rate`, refilled `rate` per `unit`).
pub fn take(
    shared: &impl SharedData,
    key: &str,
    rate: u32,
    unit: Unit,
    now_us: u64,
    metrics: &impl Metrics,
) -> BucketState {
    let slot = format!("nexus-rl:{key}");
    let capacity = u128::from(rate) * TOKEN;
    let window_us = u128::from(unit.seconds()) * 1_000_000;
    for _ in 0..CAS_ATTEMPTS {
        let (stored, cas) = match shared.get(&slot) {
            Some((bytes, cas)) => (decode(&bytes), Some(cas)),
            None => (None, None),
        };
        let (tokens, last) = stored.unwrap_or((capacity, now_us));
        let elapsed = u128::from(now_us.saturating_sub(last));
        let refill = (elapsed * u128::from(rate) * TOKEN)
            .checked_div(window_us)
            .unwrap_or(capacity);
        let tokens = (tokens + refill).min(capacity);
        let (allowed, left) = if tokens >= TOKEN {
            (true, tokens - TOKEN)
        } else {
            (false, tokens)
        };
        let per_us = |amount: u128| {
            if rate == 0 {
                0
            } else {
                u64::try_from(amount * window_us / (u128::from(rate) * TOKEN)).unwrap_or(u64::MAX)
            }
        };
        let state = BucketState {
            allowed,
            remaining: u32::try_from(left / TOKEN).unwrap_or(u32::MAX),
            reset_us: if allowed {
                per_us(capacity - left)
            } else {
                per_us(TOKEN - left).max(1)
            },
        };
        if !allowed {
            return state; // nothing spent, nothing to write
        }
        match shared.set(&slot, &encode(left, now_us), cas) {
            Ok(()) => return state,
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => break,
        }
    }
    // Under extreme contention (or a failing host) admit and count it: a local bucket is the
    // fallback layer, and refusing here would turn contention into errors.
    metrics.increment("nexus_ratelimit.local_bucket_contention", 1);
    BucketState {
        allowed: true,
        remaining: 0,
        reset_us: 0,
    }
}

fn encode(tokens: u128, last_us: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..16].copy_from_slice(&tokens.to_le_bytes());
    out[16..].copy_from_slice(&last_us.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u128, u64)> {
    let tokens = u128::from_le_bytes(bytes.get(..16)?.try_into().ok()?);
    let last = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?);
    Some((tokens, last))
}
