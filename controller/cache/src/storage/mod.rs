//! The shared (L2) cache behind one trait, one module per backend.
//!
//! The storage speaks the protocol's own messages: a put is a [`PutRequest`], an entry is an
//! [`Entry`], and a selection of entries to drop is an [`Invalidation`] (the very message that
//! is then published to every replica).
//!
//! An invalidation also leaves **watermarks** behind (per key, per prefix, per tag): a put whose
//! `timestamp_ms` is at or before the newest watermark matching it is refused, so a response
//! fetched before an invalidation cannot be written back after it. Watermarks are recorded
//! before anything is removed, and checked inside the put's own atomic step.

mod memory;
mod redis;

pub use self::memory::MemoryStorage;
pub use self::redis::{RedisNamespace, RedisStorage};
/// A Redis connection made on first use, so a service starts (and answers UNAVAILABLE) while
/// Redis is down: one implementation for every Nexus service on Redis.
pub use nexus_ratelimit_service::storage::LazyConnection;

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nexus_proto::cache::{Entry, Invalidation, PutRequest, PutResponse};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageError {}

/// Where shared entries live. Every operation is atomic per entry; `put` decides last-write-wins
/// inside the backend (a mutex, a Lua script), so concurrent writers from many replicas agree.
#[tonic::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The live entry under `key`, with the time it has left.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError>;

    /// Stores `put` unless the stored version is as new or newer ([`newer`]), or an
    /// invalidation watermark matching the put (its key, a prefix of its key, one of its tags)
    /// is at or after `put.timestamp_ms`; answers with the version stored afterwards (zero and
    /// empty when there is none). `put.ttl_ms` must be positive (the service checks).
    async fn put(&self, put: &PutRequest) -> Result<PutResponse, StorageError>;

    /// First records `watermark` for every key, prefix and tag of `selection` (raising, never
    /// lowering, a watermark already there; each lives `watermark.ttl_ms`), then removes every
    /// entry named by a key, starting with a prefix, or carrying a tag; answers how many
    /// entries were removed (each counted once). Recording first leaves no gap: a stale put
    /// that lands before the watermark is removed, one that lands after it is refused.
    async fn invalidate(
        &self,
        selection: &Invalidation,
        watermark: Watermark,
    ) -> Result<u64, StorageError>;

    /// The keys the tag index lists under `tag` (diagnostics and tests: the index is cleaned
    /// when entries are removed or re-tagged, and expires with its longest-lived entry).
    async fn tag_index(&self, tag: &str) -> Result<Vec<String>, StorageError>;

    /// A short human description for logs (`memory`, `redis at 127.0.0.1:6379`).
    fn describe(&self) -> String;
}

/// Last write wins: is version `(a_ts, a_writer)` strictly newer than `(b_ts, b_writer)`?
/// A put with exactly the stored version is a retry, not a newer write.
pub fn newer(a_ts: u64, a_writer: &str, b_ts: u64, b_writer: &str) -> bool {
    match a_ts.cmp(&b_ts) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => a_writer > b_writer,
    }
}

/// What an invalidation leaves behind: puts stamped at or before `at_ms` (unix milliseconds,
/// the service's clock plus its skew allowance) of a matching key are refused for `ttl_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub at_ms: u64,
    pub ttl_ms: u64,
}

/// Unix milliseconds; injectable so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The machine's clock, in unix milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}
