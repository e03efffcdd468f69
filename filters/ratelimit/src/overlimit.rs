//! The local over-limit cache: descriptors the service said were over limit, remembered until
//! their window resets, so a client that is over a limit is answered 429 by the proxy itself
//! instead of costing a service call per request (envoyproxy/ratelimit keeps the same kind of
//! cache of over-limit keys in front of Redis).
//!
//! Entries live in Envoy shared data, so every worker of one Envoy sees them. The key scheme is
//! bounded: a counter key hashes to one of [`SLOTS`] fixed slots (`nexus-rl-over:<n>`), and a
//! slot holds one entry (the window end and the full counter key). A newer over-limit answer
//! overwrites whatever the slot held, expired or not; a lookup compares the full key and the
//! window end, so a collision or an expired entry only means the service is asked again, never
//! a wrong 429. Shared data therefore holds at most [`SLOTS`] entries of `8 + key length`
//! bytes, however many clients go over their limits.

use nexus_filter_core::{fasthash, SharedData};
use nexus_proto::ratelimit::rate_limit_response::DescriptorStatus;

/// How many entries the cache can hold (per Envoy, shared by its workers).
pub const SLOTS: u64 = 4096;
const PREFIX: &str = "nexus-rl-over:";

fn slot(key: &str) -> String {
    format!("{PREFIX}{}", fasthash::hash(key.as_bytes()) % SLOTS)
}

/// Remembers that `key` is over limit until `until_us` (Unix microseconds).
pub fn remember(shared: &impl SharedData, key: &str, until_us: u64) {
    let mut value = Vec::with_capacity(8 + key.len());
    value.extend_from_slice(&until_us.to_le_bytes());
    value.extend_from_slice(key.as_bytes());
    // Unconditional: two workers racing on one slot both hold a true answer; either may win.
    // A failed write only costs the next request a service call.
    let _ = shared.set(&slot(key), &value, None);
}

/// Microseconds left until `key`'s remembered over-limit window ends; `None` when it is not
/// remembered (never, evicted by a colliding key, or the window has ended).
pub fn remaining_us(shared: &impl SharedData, key: &str, now_us: u64) -> Option<u64> {
    let (bytes, _) = shared.get(&slot(key))?;
    let until = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let stored_key = bytes.get(8..)?;
    if !fasthash::eq(stored_key, key.as_bytes()) || until <= now_us {
        return None;
    }
    Some(until - now_us)
}

/// When the window of an over-limit status ends: `now + duration_until_reset` when the service
/// says; otherwise the end of the current fixed window of `current_limit.unit`, aligned to the
/// Unix epoch as envoyproxy/ratelimit's counter keys are (a new window is a new counter there).
/// `None` (not cached) when the status carries neither.
pub fn window_end_us(status: &DescriptorStatus, now_us: u64) -> Option<u64> {
    if let Some(d) = &status.duration_until_reset {
        let us = u64::try_from(d.seconds)
            .ok()?
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(d.nanos).unwrap_or(0) / 1_000);
        return (us > 0).then(|| now_us.saturating_add(us));
    }
    let unit_s: u64 = match status.current_limit.as_ref()?.unit {
        1 => 1,
        2 => 60,
        3 => 3_600,
        4 => 86_400,
        5 => 30 * 86_400,
        6 => 365 * 86_400,
        7 => 7 * 86_400,
        _ => return None,
    };
    let now_s = now_us / 1_000_000;
    Some((now_s / unit_s + 1) * unit_s * 1_000_000)
}

/// Forgets every remembered entry whose counter key `matches` (a `ratelimit.reset`, or all of
/// them when resets may have been missed); returns how many were forgotten. Visits every slot:
/// resets are rare, and a slot only knows its key. A slot rewritten meanwhile (compare and
/// swap) holds a newer answer of the service, given after the reset: it stays.
pub fn forget(shared: &impl SharedData, matches: impl Fn(&str) -> bool) -> u64 {
    let mut forgotten = 0;
    for n in 0..SLOTS {
        let slot = format!("{PREFIX}{n}");
        let Some((bytes, cas)) = shared.get(&slot) else {
            continue;
        };
        let Some(key) = bytes.get(8..).and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        if matches(key) && shared.set(&slot, &[], Some(cas)).is_ok() {
            forgotten += 1;
        }
    }
    forgotten
}
