//! Counters in Redis, shared by every replica of the service.
//!
//! Fixed window: `INCRBY` + `PEXPIRE` per counter. GCRA: a Lua script per counter, which
//! applies [`crate::algorithm::gcra`]'s arithmetic atomically. Every counter of a call, and the
//! counters of every call made meanwhile, go in one pipeline ([`super::batch`]). Every call has
//! a deadline: when Redis is down or slow the service answers UNAVAILABLE quickly and the
//! proxy's failure mode decides; the connection manager reconnects by itself when Redis
//! returns.
//!
//! On a Redis Cluster (`redis+cluster://`) each counter's keys carry a hash tag
//! ([`tagged_key`]), so each `INCRBY` + `PEXPIRE` pair and each script touches one slot; a
//! failover makes the slots of the failed primary answer errors until its replica takes over,
//! and the decisions that needed them are UNAVAILABLE meanwhile.

use std::sync::Arc;
use std::time::Duration;

use super::batch::{Batcher, Op, Reply};
use super::connection::{LazyConnection, Node, RedisConnection, RedisTarget};
use super::{Storage, StorageError};
use crate::algorithm::{self, Algorithm, Counter, Decision};

/// `<prefix>{<counter key>}`: the counter key (domain, descriptor entries, limit) is the
/// Redis Cluster hash tag, so every key of one limit (each window's, GCRA's, and any other a
/// script keeps for that limit) lands in one slot, and different limits and clients spread over
/// the cluster. The prefix stays outside the tag: a shared prefix in the tag would put every
/// counter in one slot. A `}` inside a descriptor value ends the tag early; every key of that
/// limit still starts with the same text, so it still names one slot.
pub fn tagged_key(prefix: &str, counter_key: &str) -> String {
    format!("{prefix}{{{counter_key}}}")
}

/// A stored key (after the prefix) without its hash-tag braces: the counter key again, and
/// the window start after it.
fn untagged(key: &str) -> String {
    match key.strip_prefix('{').and_then(|k| k.split_once('}')) {
        Some((tag, rest)) => format!("{tag}{rest}"),
        None => key.to_string(),
    }
}

const GCRA_SCRIPT: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local hits = tonumber(ARGV[4])
if tat < now then tat = now end
local new_tat = tat + interval * hits
if new_tat - now > window then
  return {0, tat}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, new_tat}
";

pub struct RedisStorage {
    prefix: String,
    timeout: Duration,
    /// Connected lazily, so the service starts (and answers UNAVAILABLE) while Redis is down.
    conn: Arc<LazyConnection>,
    batch: Batcher,
}

impl RedisStorage {
    /// `url` like `redis://127.0.0.1:6379/0`, or a cluster's `redis+cluster://h1:p1,h2:p2`;
    /// `prefix` namespaces every key.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StorageError> {
        let target = RedisTarget::open(url).map_err(StorageError)?;
        Ok(Self {
            conn: Arc::new(LazyConnection::to(target, timeout)),
            prefix: prefix.to_string(),
            timeout,
            batch: Batcher::new(GCRA_SCRIPT),
        })
    }

    /// `PING` within the storage timeout: for health checks.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let attempt = async {
            let mut conn = self.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(redis_error)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| StorageError(format!("redis did not answer within {:?}", self.timeout)))?
    }

    async fn connection(&self) -> Result<RedisConnection, StorageError> {
        self.conn.get().await.map_err(StorageError)
    }

    async fn run(
        &self,
        algorithm: Algorithm,
        counters: &[Counter],
        hits: u32,
        now_us: u64,
    ) -> Result<Vec<Decision>, StorageError> {
        match algorithm {
            Algorithm::FixedWindow => self.fixed_window(counters, hits, now_us).await,
            Algorithm::Gcra => self.gcra(counters, hits, now_us).await,
        }
    }

    async fn fixed_window(
        &self,
        counters: &[Counter],
        hits: u32,
        now_us: u64,
    ) -> Result<Vec<Decision>, StorageError> {
        let (ops, ends): (Vec<Op>, Vec<u64>) = counters
            .iter()
            .map(|counter| {
                let (key, end) = algorithm::window_key(counter, now_us);
                let window = key.strip_prefix(counter.key.as_str()).unwrap_or_default();
                let op = Op::Incr {
                    key: format!("{}{window}", tagged_key(&self.prefix, &counter.key)),
                    hits,
                    ttl_ms: (end - now_us) / 1000 + 1000,
                };
                (op, end)
            })
            .unzip();
        let replies = self.batch.run(&self.conn, ops).await?;
        counters
            .iter()
            .zip(replies.into_iter().zip(ends))
            .map(|(c, (reply, end))| match reply {
                Reply::Count(count) => Ok(algorithm::fixed_window(c, count, end, now_us)),
                Reply::Gcra(..) => Err(unexpected()),
            })
            .collect()
    }

    async fn gcra(
        &self,
        counters: &[Counter],
        hits: u32,
        now_us: u64,
    ) -> Result<Vec<Decision>, StorageError> {
        let ops = counters
            .iter()
            .map(|counter| Op::Gcra {
                key: tagged_key(&self.prefix, &counter.key),
                args: [
                    now_us,
                    algorithm::gcra_interval(counter),
                    counter.window_us,
                    u64::from(hits),
                ],
            })
            .collect();
        let replies = self.batch.run(&self.conn, ops).await?;
        counters
            .iter()
            .zip(replies)
            .map(|(counter, reply)| {
                let Reply::Gcra(ok, tat) = reply else {
                    return Err(unexpected());
                };
                // Recompute the decision from the TAT Redis kept, exactly as memory does.
                let interval = algorithm::gcra_interval(counter);
                let stored = if ok == 1 {
                    tat.saturating_sub(interval * u64::from(hits))
                } else {
                    tat
                };
                Ok(algorithm::gcra(counter, stored, hits, now_us).0)
            })
            .collect()
    }
}

fn unexpected() -> StorageError {
    StorageError("redis answered another kind of operation".into())
}

impl RedisStorage {
    /// SCANs (never KEYS: it would block Redis for every other replica) for the first entry's
    /// keys, on every primary of a cluster, checks the rest here, and deletes in batches.
    async fn reset_matching(&self, entries: &[(String, String)]) -> Result<u64, StorageError> {
        let mut conn = self.connection().await?;
        let pattern = match entries.first() {
            Some((k, v)) => format!("{}*|{}={}[|:]*", glob(&self.prefix), glob(k), glob(v)),
            None => format!("{}*", glob(&self.prefix)),
        };
        let mut deleted = 0;
        for node in conn.scan_nodes().await.map_err(redis_error)? {
            deleted += self.reset_on(&mut conn, &node, &pattern, entries).await?;
        }
        Ok(deleted)
    }

    async fn reset_on(
        &self,
        conn: &mut RedisConnection,
        node: &Option<Node>,
        pattern: &str,
        entries: &[(String, String)],
    ) -> Result<u64, StorageError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let (next, keys): (u64, Vec<String>) =
                conn.query_on(&scan, node).await.map_err(redis_error)?;
            let doomed: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    let rest = k.get(self.prefix.len()..).unwrap_or_default();
                    super::key_matches(&untagged(rest), entries)
                })
                .collect();
            if !doomed.is_empty() {
                // A cluster's client splits a DEL of many slots into one DEL per slot.
                let n: u64 = redis::cmd("DEL")
                    .arg(&doomed)
                    .query_async(conn)
                    .await
                    .map_err(redis_error)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// `s` with Redis glob metacharacters escaped.
fn glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn redis_error(e: redis::RedisError) -> StorageError {
    StorageError(format!("redis: {e}"))
}

impl Storage for RedisStorage {
    async fn check_and_update(
        &self,
        algorithm: Algorithm,
        counters: &[Counter],
        hits: u32,
        now_us: u64,
    ) -> Result<Vec<Decision>, StorageError> {
        tokio::time::timeout(self.timeout, self.run(algorithm, counters, hits, now_us))
            .await
            .map_err(|_| StorageError(format!("redis did not answer within {:?}", self.timeout)))?
    }

    async fn reset(&self, entries: &[(String, String)]) -> Result<u64, StorageError> {
        // A scan visits every key once; allow it more than one request's timeout.
        tokio::time::timeout(self.timeout * 50, self.reset_matching(entries))
            .await
            .map_err(|_| StorageError("redis reset timed out".into()))?
    }

    async fn lease(
        &self,
        counter: &Counter,
        op: super::lease::LeaseOp,
        now_us: u64,
    ) -> Result<super::lease::Grant, StorageError> {
        let conn = &self.conn;
        super::lease::redis(conn, &self.prefix, self.timeout, counter, op, now_us).await
    }

    fn describe(&self) -> String {
        self.conn.target().describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_key_is_its_own_hash_tag() {
        let key = tagged_key("nexus:rl:", "api|client_id=alice:5s");
        assert_eq!(key, "nexus:rl:{api|client_id=alice:5s}");
        assert_eq!(
            untagged(&key["nexus:rl:".len()..]),
            "api|client_id=alice:5s"
        );
        assert_eq!(untagged("{api|k=v:5s}:1800"), "api|k=v:5s:1800");
        assert_eq!(untagged("api|k=v:5s"), "api|k=v:5s");
    }
}
