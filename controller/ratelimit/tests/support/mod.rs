//! Shared test support: Redis connections with per-test key prefixes, on the machine's shared
//! Redis and on one private Redis Cluster per test binary (the private `redis-server` for
//! tests that stop Redis is `nexus_ratelimit_service::testkit`).

#![allow(
    dead_code,
    unused_macros,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use nexus_toolenv::redis_cluster::RedisCluster;

use nexus_ratelimit_service::storage::RedisStorage;

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// A descriptor with these entries and no limit override.
pub fn descriptor(entries: &[(&str, &str)]) -> nexus_proto::ratelimit::RateLimitDescriptor {
    nexus_proto::ratelimit::RateLimitDescriptor {
        entries: entries
            .iter()
            .map(
                |(k, v)| nexus_proto::ratelimit::rate_limit_descriptor::Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                },
            )
            .collect(),
        limit: None,
    }
}

/// A request for one hit of each descriptor in `domain`.
pub fn request(
    domain: &str,
    descriptors: &[&[(&str, &str)]],
) -> nexus_proto::ratelimit::RateLimitRequest {
    nexus_proto::ratelimit::RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors.iter().map(|e| descriptor(e)).collect(),
        hits_addend: 0,
    }
}

/// Serves `limiter` over gRPC on a free loopback port (for the test's lifetime) and returns a
/// client connected to it: Envoy's ratelimit protocol end to end.
pub async fn grpc_client<S: nexus_ratelimit_service::storage::Storage>(
    limiter: std::sync::Arc<nexus_ratelimit_service::RateLimiter<S>>,
) -> nexus_proto::ratelimit::rate_limit_service_client::RateLimitServiceClient<
    tonic::transport::Channel,
> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = limiter.into_service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    nexus_proto::ratelimit::rate_limit_service_client::RateLimitServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .unwrap()
}

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "nexus-test:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Storage on the machine's shared Redis; fails (never skips) when Redis is not there.
pub fn shared_redis() -> RedisStorage {
    let ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false);
    assert!(ok, "Redis is not answering on 127.0.0.1:6379; start it (.ci/run does) with: redis-server --daemonize yes --port 6379 --save ''");
    RedisStorage::new(SHARED_REDIS, &unique_prefix(), Duration::from_secs(2)).unwrap()
}

/// This test binary's Redis Cluster (three primaries, three replicas), started on first use;
/// its nodes die with the process. Tests share it with a key prefix each; a test that kills a
/// node starts its own.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("Redis Cluster: {e:#}"));
        eprintln!("redis cluster ready in {:?}", cluster.started_in);
        cluster
    })
}

/// Storage on [`shared_cluster`], under a key prefix of its own.
pub fn cluster_redis() -> RedisStorage {
    RedisStorage::new(
        &shared_cluster().url(),
        &unique_prefix(),
        Duration::from_secs(2),
    )
    .unwrap()
}

/// Runs each scenario (an `async fn(S)` generic over `Storage`, in the invoking module) once per
/// backend: process memory, the machine's shared Redis and a three-primary Redis Cluster (a
/// key prefix per test). Test files take it with `#[macro_use] mod support;`.
macro_rules! every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $scenario() {
                super::$scenario(nexus_ratelimit_service::storage::MemoryStorage::new()).await;
            } )*
        }
        mod redis {
            $( #[tokio::test] async fn $scenario() {
                super::$scenario(crate::support::shared_redis()).await;
            } )*
        }
        mod redis_cluster {
            $( #[tokio::test] async fn $scenario() {
                super::$scenario(crate::support::cluster_redis()).await;
            } )*
        }
    };
}
