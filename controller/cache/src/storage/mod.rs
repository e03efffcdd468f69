//! The shared (L2) cache behind one trait, one module per backend.
//!
//! The storage speaks the protocol's own messages: a put is a [`PutRequest`], an entry is an
//! [`Entry`], and a selection of entries to drop is an [`Invalidation`] (the very message that
//! is then published to every replica).

mod memory;
mod redis;

pub use self::memory::MemoryStorage;
pub use self::redis::{RedisNamespace, RedisStorage};

use std::cmp::Ordering;

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

    /// Stores `put` unless the stored version is as new or newer ([`newer`]); answers with the
    /// version stored afterwards. `put.ttl_ms` must be positive (the service checks).
    async fn put(&self, put: &PutRequest) -> Result<PutResponse, StorageError>;

    /// Removes every entry named by a key, starting with a prefix, or carrying a tag; answers
    /// how many entries were removed (each counted once).
    async fn invalidate(&self, selection: &Invalidation) -> Result<u64, StorageError>;

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
