//! Leased quota on the fixed-window counters: a grant takes `min(requested, limit − count)`
//! from the current window's counter in one atomic step (a Lua script on Redis, under the lock
//! in memory), after taking back what a proxy returns. Grants and strict decisions count on the
//! same key, so leased and strict proxies of one limit share its budget, and every proxy's
//! leases together never exceed the limit of a window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::redis::tagged_key;
use super::script::LuaScript;
use super::{LazyConnection, StorageError};
use crate::algorithm::{self, Counter};

/// What a proxy asks of one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseOp {
    pub requested: u64,
    /// Unused quota given back, from the window that started at `returned_window_start_us`.
    pub returned: u64,
    pub returned_window_start_us: u64,
}

/// What the counter granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    pub window_start_us: u64,
    pub window_end_us: u64,
    /// The window's budget left after the grant.
    pub remaining: u64,
}

/// `KEYS[1]` the window's counter; `ARGV`: limit, requested, returned, TTL (ms). A return
/// never takes the counter below zero nor creates it; a grant never takes it past the limit
/// (strict hits counted past it leave nothing to grant). Returns `{granted, count}`.
const SCRIPT: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = tonumber(ARGV[3])
if back > 0 and count > 0 then
  count = redis.call('DECRBY', KEYS[1], math.min(back, count))
end
local grant = math.min(tonumber(ARGV[2]), math.max(tonumber(ARGV[1]) - count, 0))
if grant > 0 then
  count = redis.call('INCRBY', KEYS[1], grant)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {grant, count}
";

fn window(counter: &Counter, now_us: u64) -> (String, u64, u64) {
    let (key, end) = algorithm::window_key(counter, now_us);
    (key, end - counter.window_us.max(1), end)
}

fn grant(counter: &Counter, start: u64, end: u64, granted: u64, count: u64) -> Grant {
    Grant {
        granted,
        window_start_us: start,
        window_end_us: end,
        remaining: u64::from(counter.limit).saturating_sub(count),
    }
}

/// The memory backend's counters (key → (count, expires at µs)), as `MemoryStorage` keeps them.
pub(super) fn memory(
    counters: &Mutex<HashMap<String, (u64, u64)>>,
    counter: &Counter,
    op: LeaseOp,
    now_us: u64,
) -> Result<Grant, StorageError> {
    let mut map = counters
        .lock()
        .map_err(|_| StorageError("memory storage lock poisoned".into()))?;
    let (key, start, end) = window(counter, now_us);
    if op.returned > 0 {
        let old = format!("{}:{}", counter.key, op.returned_window_start_us);
        if let Some(entry) = map.get_mut(&old) {
            entry.0 = entry.0.saturating_sub(op.returned);
        }
    }
    let entry = map.entry(key).or_insert((0, end));
    let granted = op
        .requested
        .min(u64::from(counter.limit).saturating_sub(entry.0));
    entry.0 += granted;
    Ok(grant(counter, start, end, granted, entry.0))
}

/// The Redis backend: one script call per window touched (one, unless the return is for an
/// earlier window), so each key is its own atomic step (and its own slot in a cluster).
pub(super) async fn redis(
    conn: &LazyConnection,
    prefix: &str,
    timeout: Duration,
    counter: &Counter,
    op: LeaseOp,
    now_us: u64,
) -> Result<Grant, StorageError> {
    let run = async {
        let (key, start, end) = window(counter, now_us);
        let ttl_ms = (end - now_us) / 1000 + 1000;
        let same_window = op.returned_window_start_us == start;
        // The keys strict decisions count on (`RedisStorage::fixed_window`): the counter key
        // as the hash tag, then the window.
        let tagged = tagged_key(prefix, &counter.key);
        if op.returned > 0 && !same_window {
            let old = format!("{tagged}:{}", op.returned_window_start_us);
            script(conn, &old, counter.limit, 0, op.returned, ttl_ms).await?;
        }
        let back = if same_window { op.returned } else { 0 };
        let window = key.strip_prefix(counter.key.as_str()).unwrap_or_default();
        let key = format!("{tagged}{window}");
        let (granted, count) =
            script(conn, &key, counter.limit, op.requested, back, ttl_ms).await?;
        Ok(grant(counter, start, end, granted, count))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| StorageError(format!("redis did not answer within {timeout:?}")))?
}

async fn script(
    conn: &LazyConnection,
    key: &str,
    limit: u32,
    requested: u64,
    returned: u64,
    ttl_ms: u64,
) -> Result<(u64, u64), StorageError> {
    let mut c = conn.get().await.map_err(StorageError)?;
    // EVALSHA, and EVAL on NOSCRIPT (a restarted Redis, a just-promoted replica).
    static LEASE: std::sync::LazyLock<LuaScript> =
        std::sync::LazyLock::new(|| LuaScript::new(SCRIPT));
    let (granted, count): (i64, i64) = LEASE
        .prepare_invoke()
        .key(key)
        .arg(limit)
        .arg(requested)
        .arg(returned)
        .arg(ttl_ms)
        .invoke_async(&mut c)
        .await
        .map_err(|e| StorageError(format!("redis: {e}")))?;
    Ok((
        u64::try_from(granted).unwrap_or(0),
        u64::try_from(count).unwrap_or(0),
    ))
}
