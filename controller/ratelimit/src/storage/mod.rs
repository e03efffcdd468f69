//! Counter storage behind one trait, one module per backend.

mod memory;
mod redis;

pub use self::memory::MemoryStorage;
pub use self::redis::RedisStorage;

use std::future::Future;

use crate::algorithm::{Algorithm, Counter, Decision};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageError {}

/// Where counters live. One call decides every counter of a request (one round trip for Redis);
/// each counter is updated atomically, so parallel clients never over-admit a fixed window, and
/// never admit more than the burst under GCRA.
pub trait Storage: Send + Sync + 'static {
    fn check_and_update(
        &self,
        algorithm: Algorithm,
        counters: &[Counter],
        hits: u32,
        now_us: u64,
    ) -> impl Future<Output = Result<Vec<Decision>, StorageError>> + Send;

    /// A short human description for logs (`memory`, `redis at 127.0.0.1:6379`).
    fn describe(&self) -> String;
}
