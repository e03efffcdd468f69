//! Counter storage behind one trait, one module per backend.

mod batch;
mod connection;
pub mod lease;
mod memory;
mod redis;
mod script;

pub use self::connection::{LazyConnection, RedisConnection, RedisTarget, CLUSTER_SCHEME};
pub use self::memory::MemoryStorage;
pub use self::redis::{tagged_key, RedisStorage};
pub use self::script::{LuaScript, ScriptCall};

use std::future::Future;

use self::lease::{Grant, LeaseOp};
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

    /// Deletes every counter whose descriptor has all of `entries` (`client_id=alice`,
    /// `route=lake-read`): an operator's `ratelimit.reset`. Returns how many were deleted.
    fn reset(
        &self,
        entries: &[(String, String)],
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Leased quota on `counter`'s fixed-window counter (see [`lease`]): takes back what
    /// `op` returns, then grants at most what the current window has left, atomically.
    fn lease(
        &self,
        counter: &Counter,
        op: LeaseOp,
        now_us: u64,
    ) -> impl Future<Output = Result<Grant, StorageError>> + Send;

    /// A short human description for logs (`memory`, `redis at 127.0.0.1:6379`).
    fn describe(&self) -> String;
}

/// See [`nexus_config::ratelimit::key_matches`]: the filter's over-limit cache clears its
/// entries on a `ratelimit.reset` with the same test.
pub use nexus_config::ratelimit::key_matches;

#[cfg(test)]
mod tests {
    use super::key_matches;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_reset_matches_whole_values_only() {
        let key = "nexus|route=lake|client_id=alice:5s:1000";
        assert!(key_matches(key, &e(&[("client_id", "alice")])));
        assert!(key_matches(
            key,
            &e(&[("route", "lake"), ("client_id", "alice")])
        ));
        assert!(!key_matches(key, &e(&[("client_id", "al")])));
        assert!(!key_matches(
            key,
            &e(&[("route", "lake"), ("client_id", "bob")])
        ));
        assert!(key_matches(
            "nexus|route=lake:100m",
            &e(&[("route", "lake")])
        ));
    }
}
