//! Serving the rate-limit service: one limiter over whichever storage is configured, with
//! limits that can be replaced while it runs (the controller feeds it what it renders).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::storage::{MemoryStorage, RedisStorage, Storage, StorageError};
use crate::{Algorithm, Limits, RateLimiter, UnknownDomain};

/// A limiter on memory or Redis, cheap to clone.
#[derive(Clone)]
pub enum SharedLimiter {
    Memory(Arc<RateLimiter<MemoryStorage>>),
    Redis(Arc<RateLimiter<RedisStorage>>),
}

impl SharedLimiter {
    /// Redis when `redis_url` is given (connected lazily: the service starts, and answers
    /// UNAVAILABLE, while Redis is down), memory otherwise.
    pub fn new(
        limits: Limits,
        redis_url: Option<&str>,
        algorithm: Algorithm,
        unknown_domain: UnknownDomain,
        redis_timeout: Duration,
    ) -> Result<Self> {
        Ok(match redis_url {
            Some(url) => {
                let storage = RedisStorage::new(url, "nexus:rl:", redis_timeout)?;
                Self::Redis(Arc::new(RateLimiter::new(
                    limits,
                    storage,
                    algorithm,
                    unknown_domain,
                )))
            }
            None => Self::Memory(Arc::new(RateLimiter::new(
                limits,
                MemoryStorage::new(),
                algorithm,
                unknown_domain,
            ))),
        })
    }

    /// See [`RateLimiter::on_refusal`].
    pub fn on_refusal(&self, refusals: crate::service::Refusals) -> bool {
        match self {
            Self::Memory(l) => l.on_refusal(refusals),
            Self::Redis(l) => l.on_refusal(refusals),
        }
    }

    pub fn set_limits(&self, limits: Limits) {
        match self {
            Self::Memory(l) => l.set_limits(limits),
            Self::Redis(l) => l.set_limits(limits),
        }
    }

    /// See [`RateLimiter::set_response_dynamic_metadata`].
    pub fn set_response_dynamic_metadata(&self, on: bool) {
        match self {
            Self::Memory(l) => l.set_response_dynamic_metadata(on),
            Self::Redis(l) => l.set_response_dynamic_metadata(on),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Memory(l) => l.storage().describe(),
            Self::Redis(l) => l.storage().describe(),
        }
    }

    /// `None` for memory; for Redis, whether it answers a `PING`.
    pub async fn ping(&self) -> Option<Result<(), String>> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(l) => Some(l.storage().ping().await.map_err(|e| e.to_string())),
        }
    }

    /// Deletes the counters of every descriptor carrying all of `entries` (e.g.
    /// `client_id=alice`): the `ratelimit.reset` command. Returns how many were deleted.
    pub async fn reset(&self, entries: &[(String, String)]) -> Result<u64, StorageError> {
        match self {
            Self::Memory(l) => l.storage().reset(entries).await,
            Self::Redis(l) => l.storage().reset(entries).await,
        }
    }

    pub fn metrics(&self) -> String {
        match self {
            Self::Memory(l) => l.metrics.render(),
            Self::Redis(l) => l.metrics.render(),
        }
    }

    /// Serves gRPC on `addr` until `shutdown` completes.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        match self {
            Self::Memory(l) => serve_one(l.clone(), addr, shutdown).await,
            Self::Redis(l) => serve_one(l.clone(), addr, shutdown).await,
        }
    }
}

async fn serve_one<S: Storage>(
    limiter: Arc<RateLimiter<S>>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(limiter.clone().into_service())
        .add_service(limiter.into_lease_service())
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
