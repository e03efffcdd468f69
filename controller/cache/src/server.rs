//! Building the service from configuration, and serving it over gRPC.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::bus::{MemoryBus, RedisBus};
use crate::storage::{MemoryStorage, RedisNamespace, RedisStorage};
use crate::{CacheService, Config};

/// The conventional gRPC port of the cache service.
pub const DEFAULT_PORT: u16 = 8083;

/// On Redis when `redis_url` is given (connected lazily: the service starts, and answers
/// UNAVAILABLE, while Redis is down; events follow once it is up), in memory otherwise. Must
/// run inside a tokio runtime (the Redis bus starts its subscriber task).
pub fn build(
    redis_url: Option<&str>,
    namespace: &RedisNamespace,
    config: Config,
    redis_timeout: Duration,
) -> Result<Arc<CacheService>> {
    Ok(Arc::new(match redis_url {
        Some(url) => CacheService::new(
            RedisStorage::new(url, namespace, redis_timeout)?,
            RedisBus::start(url, namespace, redis_timeout)?,
            config,
        ),
        None => CacheService::new(MemoryStorage::new(), MemoryBus::new(), config),
    }))
}

/// Serves `nexus.cache.v1.Cache` on `listener` until `shutdown` completes.
pub async fn serve_grpc(
    cache: Arc<CacheService>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(cache.into_service())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
