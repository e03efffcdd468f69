//! Where sessions live, behind one trait, one module per backend. A session is stored under
//! the lower-case hex SHA-256 of its id (a dump of the store holds no usable id) with an
//! absolute expiry: the backend drops it at `expires_at_s`, whatever its use.

mod memory;
mod redis;

pub use self::memory::MemoryStorage;
pub use self::redis::{RedisStorage, DEFAULT_PREFIX};

pub use nexus_cache_service::storage::{Clock, StorageError};
use nexus_config::session::SessionIdentity;

#[tonic::async_trait]
pub trait SessionStorage: Send + Sync + 'static {
    /// Stores `session` under `id_hash` until its `expires_at_s` (unix seconds).
    async fn put(&self, id_hash: &str, session: &SessionIdentity) -> Result<(), StorageError>;

    /// The live session under `id_hash`.
    async fn get(&self, id_hash: &str) -> Result<Option<SessionIdentity>, StorageError>;

    /// Removes the session; whether there was one.
    async fn delete(&self, id_hash: &str) -> Result<bool, StorageError>;

    /// Keeps a sign-in in progress (its `state`'s hash → what the callback needs) for
    /// `ttl_s` seconds.
    async fn put_pending(&self, key: &str, value: &str, ttl_s: u64) -> Result<(), StorageError>;

    /// Takes a sign-in in progress out, atomically: a `state` is good for one callback.
    async fn take_pending(&self, key: &str) -> Result<Option<String>, StorageError>;

    /// A short human description for logs (`memory`, `redis at 127.0.0.1:6379`).
    fn describe(&self) -> String;
}
