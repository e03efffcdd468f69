//! Shared test support: backends with per-test Redis namespaces, a service on a real gRPC port,
//! and stream helpers, on the machine's shared Redis and on one private Redis Cluster per test
//! binary. The private `redis-server` for tests that stop Redis is
//! `nexus_ratelimit_service::testkit::PrivateRedis`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nexus_toolenv::redis_cluster::RedisCluster;

use nexus_cache_service::bus::{MemoryBus, RedisBus};
use nexus_cache_service::storage::{MemoryStorage, RedisNamespace, RedisStorage};
use nexus_cache_service::{server, CacheService, Config};
use nexus_proto::cache::cache_client::CacheClient;
use nexus_proto::cache::{event, Event, SubscribeRequest};
use tonic::transport::Channel;
use tonic::Streaming;

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A namespace no other test (or earlier run) uses: keys and channels both.
pub fn unique_namespace() -> RedisNamespace {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    RedisNamespace::isolated(&format!(
        "nexus-test:cache:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Fails (never skips) when the machine's Redis is not there.
pub fn assert_shared_redis() {
    let ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false);
    assert!(ok, "Redis is not answering on 127.0.0.1:6379; start it (.ci/run does) with: redis-server --daemonize yes --port 6379 --save ''");
}

pub fn shared_redis_storage() -> RedisStorage {
    assert_shared_redis();
    RedisStorage::new(SHARED_REDIS, &unique_namespace(), TIMEOUT).unwrap()
}

/// This test binary's Redis Cluster (three primaries, three replicas), started on first use;
/// its nodes die with the process. Tests share it with a namespace each (each namespace is one
/// hash slot, so they spread over the primaries); a test that kills a node starts its own.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("Redis Cluster: {e:#}"));
        eprintln!("redis cluster ready in {:?}", cluster.started_in);
        cluster
    })
}

pub fn cluster_storage() -> RedisStorage {
    RedisStorage::new(&shared_cluster().url(), &unique_namespace(), TIMEOUT).unwrap()
}

pub async fn cluster_service() -> Arc<CacheService> {
    redis_replica(&shared_cluster().url(), &unique_namespace(), "replica-a").await
}

pub fn config(replica: &str) -> Config {
    Config {
        replica: replica.into(),
        max_value_bytes: 1024,
        max_ttl: Duration::from_secs(3600),
        token: Some("s3cret-token".into()),
        watermark_ttl: Duration::from_secs(3600),
        clock_skew_allowance: Duration::ZERO,
    }
}

pub fn memory_service() -> Arc<CacheService> {
    Arc::new(CacheService::new(
        MemoryStorage::new(),
        MemoryBus::new(),
        config("replica-a"),
    ))
}

/// A replica on `url` in `namespace`, its event feed already subscribed.
pub async fn redis_replica(url: &str, ns: &RedisNamespace, replica: &str) -> Arc<CacheService> {
    let cache = Arc::new(CacheService::new(
        RedisStorage::new(url, ns, TIMEOUT).unwrap(),
        RedisBus::start(url, ns, TIMEOUT).unwrap(),
        config(replica),
    ));
    assert!(cache.bus().wait_live(Duration::from_secs(5)).await);
    cache
}

pub async fn redis_service() -> Arc<CacheService> {
    assert_shared_redis();
    redis_replica(SHARED_REDIS, &unique_namespace(), "replica-a").await
}

/// Serves `cache` on a free 127.0.0.1 port; a connected client.
pub async fn grpc(cache: Arc<CacheService>) -> CacheClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_grpc(cache, listener, std::future::pending()));
    CacheClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Opens a stream (the response headers arrive; no message is awaited).
pub async fn open_stream(client: &mut CacheClient<Channel>) -> Streaming<Event> {
    client
        .subscribe(SubscribeRequest {
            subscriber: "test".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Opens a stream and checks its first message is `Hello` from `replica`.
pub async fn subscribe(client: &mut CacheClient<Channel>, replica: &str) -> Streaming<Event> {
    let mut stream = open_stream(client).await;
    match next(&mut stream).await {
        event::Kind::Hello(h) => assert_eq!(h.replica, replica),
        other => panic!("first event is not Hello: {other:?}"),
    }
    stream
}

/// The next event, within 5 s.
pub async fn next(stream: &mut Streaming<Event>) -> event::Kind {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no event within 5 s")
        .expect("stream failed")
        .expect("stream ended")
        .kind
        .expect("event without kind")
}

/// The next event that is not a `Flush` (a replica's feed flushes when it (re)subscribes).
pub async fn next_not_flush(stream: &mut Streaming<Event>) -> event::Kind {
    loop {
        match next(stream).await {
            event::Kind::Flush(_) => continue,
            other => return other,
        }
    }
}
