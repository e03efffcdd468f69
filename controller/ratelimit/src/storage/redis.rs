//! Counters in Redis, shared by every replica of the service.
//!
//! Fixed window: `INCRBY` + `PEXPIRE` per counter. GCRA: a Lua script per counter, which
//! applies [`crate::algorithm::gcra`]'s arithmetic atomically. Every counter of a call, and the
//! counters of every call made meanwhile, go in one pipeline ([`super::batch`]). Every call has
//! a deadline: when Redis is down or slow the service answers UNAVAILABLE quickly and the
//! proxy's failure mode decides; the connection manager reconnects by itself when Redis
//! returns.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use super::batch::{Batcher, Op, Reply};
use super::{Storage, StorageError};
use crate::algorithm::{self, Algorithm, Counter, Decision};

/// A Redis connection made on first use (so a service starts while Redis is down) and then
/// shared; the connection manager reconnects by itself. Every Nexus service that keeps state
/// in Redis connects through this.
pub struct LazyConnection {
    client: redis::Client,
    timeout: Duration,
    slot: Mutex<Option<ConnectionManager>>,
}

impl LazyConnection {
    pub fn new(client: redis::Client, timeout: Duration) -> Self {
        LazyConnection {
            client,
            timeout,
            slot: Mutex::new(None),
        }
    }

    /// The shared connection, connecting within the timeout if there is none yet.
    pub async fn get(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "redis connect timed out".to_string())?
        .map_err(|e| format!("redis connect: {e}"))?;
        *slot = Some(conn.clone());
        Ok(conn)
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
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    /// Connected lazily, so the service starts (and answers UNAVAILABLE) while Redis is down.
    conn: Arc<LazyConnection>,
    batch: Batcher,
}

impl RedisStorage {
    /// `url` like `redis://127.0.0.1:6379/0`; `prefix` namespaces every key.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StorageError> {
        let client = redis::Client::open(url)
            .map_err(|e| StorageError(format!("redis url {url:?}: {e}")))?;
        Ok(Self {
            conn: Arc::new(LazyConnection::new(client.clone(), timeout)),
            client,
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

    async fn connection(&self) -> Result<ConnectionManager, StorageError> {
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
                let op = Op::Incr {
                    key: format!("{}{key}", self.prefix),
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
                key: format!("{}{}", self.prefix, counter.key),
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
    /// keys, checks the rest here, and deletes in batches.
    async fn reset_matching(&self, entries: &[(String, String)]) -> Result<u64, StorageError> {
        let mut conn = self.connection().await?;
        let pattern = match entries.first() {
            Some((k, v)) => format!("{}*|{}={}[|:]*", glob(&self.prefix), glob(k), glob(v)),
            None => format!("{}*", glob(&self.prefix)),
        };
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let doomed: Vec<&String> = keys
                .iter()
                .filter(|k| super::key_matches(&k[self.prefix.len().min(k.len())..], entries))
                .collect();
            if !doomed.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&doomed)
                    .query_async(&mut conn)
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
        format!("redis at {}", self.client.get_connection_info().addr())
    }
}
