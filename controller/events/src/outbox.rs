//! Where events wait while RabbitMQ is down: a bounded FIFO of `"<routing key> <envelope>"`
//! lines. [`RedisOutbox`] is a Redis list, so a replica that restarts, or another replica on
//! the same key, drains what this one could not publish; [`MemoryOutbox`] keeps them in this
//! process (no Redis configured).
//!
//! Removal is by content, never by count: a drainer pops the head only while it is the line it
//! just had confirmed. Two replicas draining one list therefore never delete a line neither
//! published; at worst both publish it, and consumers drop the second copy by envelope id.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use nexus_ratelimit_service::storage::LazyConnection;
use nexus_ratelimit_service::storage::{LuaScript, RedisConnection};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox: {0}")]
pub struct OutboxError(pub String);

#[async_trait::async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Appends `lines` in order until the outbox holds its capacity; returns how many fit
    /// (the rest are the caller's overflow).
    async fn push(&self, lines: &[String]) -> Result<usize, OutboxError>;
    /// The first `n` lines, oldest first.
    async fn peek(&self, n: usize) -> Result<Vec<String>, OutboxError>;
    /// Pops the head while it equals the next of `confirmed`; returns how many were popped.
    async fn remove_head(&self, confirmed: &[String]) -> Result<usize, OutboxError>;
    async fn depth(&self) -> Result<u64, OutboxError>;
    fn describe(&self) -> String;
}

/// In this process only.
pub struct MemoryOutbox {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl MemoryOutbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<String>>, OutboxError> {
        self.lines
            .lock()
            .map_err(|_| OutboxError("lock poisoned".into()))
    }
}

#[async_trait::async_trait]
impl Outbox for MemoryOutbox {
    async fn push(&self, lines: &[String]) -> Result<usize, OutboxError> {
        let mut q = self.lock()?;
        let fit = self.capacity.saturating_sub(q.len()).min(lines.len());
        q.extend(lines[..fit].iter().cloned());
        Ok(fit)
    }

    async fn peek(&self, n: usize) -> Result<Vec<String>, OutboxError> {
        Ok(self.lock()?.iter().take(n).cloned().collect())
    }

    async fn remove_head(&self, confirmed: &[String]) -> Result<usize, OutboxError> {
        let mut q = self.lock()?;
        let mut n = 0;
        for line in confirmed {
            if q.front() != Some(line) {
                break;
            }
            q.pop_front();
            n += 1;
        }
        Ok(n)
    }

    async fn depth(&self) -> Result<u64, OutboxError> {
        Ok(self.lock()?.len() as u64)
    }

    fn describe(&self) -> String {
        format!("memory (capacity {})", self.capacity)
    }
}

/// `RPUSH` while `LLEN` < capacity, atomically.
const PUSH: &str = r"
local n = 0
for i = 2, #ARGV do
  if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then break end
  redis.call('RPUSH', KEYS[1], ARGV[i])
  n = n + 1
end
return n";

/// `LPOP` while the head is the next confirmed line, atomically.
const REMOVE_HEAD: &str = r"
local n = 0
for i = 1, #ARGV do
  if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[i] then break end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n";

/// A Redis list, connected lazily (the publisher starts while Redis is down).
pub struct RedisOutbox {
    key: String,
    capacity: usize,
    conn: LazyConnection,
    push: LuaScript,
    remove: LuaScript,
}

impl RedisOutbox {
    /// `key` like `nexus:events:outbox:<deployment>`.
    pub fn new(url: &str, key: &str, capacity: usize) -> Result<Self, OutboxError> {
        Ok(Self {
            conn: LazyConnection::open(url, Duration::from_secs(2)).map_err(OutboxError)?,
            key: key.to_string(),
            capacity,
            push: LuaScript::new(PUSH),
            remove: LuaScript::new(REMOVE_HEAD),
        })
    }

    async fn connection(&self) -> Result<RedisConnection, OutboxError> {
        self.conn.get().await.map_err(OutboxError)
    }
}

fn redis_error(e: redis::RedisError) -> OutboxError {
    OutboxError(format!("redis: {e}"))
}

#[async_trait::async_trait]
impl Outbox for RedisOutbox {
    async fn push(&self, lines: &[String]) -> Result<usize, OutboxError> {
        let mut conn = self.connection().await?;
        let mut inv = self.push.prepare_invoke();
        inv.key(&self.key).arg(self.capacity);
        for l in lines {
            inv.arg(l);
        }
        inv.invoke_async(&mut conn).await.map_err(redis_error)
    }

    async fn peek(&self, n: usize) -> Result<Vec<String>, OutboxError> {
        let mut conn = self.connection().await?;
        let end = isize::try_from(n).unwrap_or(isize::MAX) - 1;
        redis::cmd("LRANGE")
            .arg(&self.key)
            .arg(0)
            .arg(end)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn remove_head(&self, confirmed: &[String]) -> Result<usize, OutboxError> {
        let mut conn = self.connection().await?;
        let mut inv = self.remove.prepare_invoke();
        inv.key(&self.key);
        for l in confirmed {
            inv.arg(l);
        }
        inv.invoke_async(&mut conn).await.map_err(redis_error)
    }

    async fn depth(&self) -> Result<u64, OutboxError> {
        let mut conn = self.connection().await?;
        redis::cmd("LLEN")
            .arg(&self.key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    fn describe(&self) -> String {
        format!(
            "redis list {} in {} (capacity {})",
            self.key,
            self.conn.target().describe(),
            self.capacity
        )
    }
}
