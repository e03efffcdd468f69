//! Redis only: events between replicas, the flush when a replica's pub/sub connection breaks
//! (a private redis-server really killed and restarted), and answers while Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_cache_service::bus::RedisBus;
use nexus_cache_service::storage::RedisStorage;
use nexus_cache_service::{http, CacheService};
use nexus_proto::cache::{event, GetRequest, InvalidateRequest, PutRequest, Update};
use nexus_ratelimit_service::testkit::PrivateRedis;
use support::{
    assert_shared_redis, config, grpc, next, next_not_flush, open_stream, redis_replica, subscribe,
    unique_namespace, SHARED_REDIS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

fn put(key: &str, ts: u64, writer: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        tags: vec![],
        ttl_ms: 60_000,
        timestamp_ms: ts,
        writer: writer.into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn invalidate_key(key: &str) -> InvalidateRequest {
    InvalidateRequest {
        keys: vec![key.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn events_reach_the_subscribers_of_another_replica() {
    assert_shared_redis();
    let ns = unique_namespace();
    let mut a = grpc(redis_replica(SHARED_REDIS, &ns, "replica-a").await).await;
    let mut b = grpc(redis_replica(SHARED_REDIS, &ns, "replica-b").await).await;
    let mut at_b = subscribe(&mut b, "replica-b").await;
    let mut at_a = subscribe(&mut a, "replica-a").await;

    a.invalidate(invalidate_key("/x#1")).await.unwrap();
    match next(&mut at_b).await {
        event::Kind::Invalidation(i) => assert_eq!(i.keys, ["/x#1"]),
        other => panic!("expected Invalidation at B, got {other:?}"),
    }
    // The writer's own replica hears it too, through Redis like everyone.
    assert!(matches!(
        next(&mut at_a).await,
        event::Kind::Invalidation(_)
    ));

    // Fetched after the invalidation (a put stamped before it would be refused).
    let ts = now_ms() + 1;
    a.put(put("/x#1", ts, "proxy-a")).await.unwrap();
    assert_eq!(
        next(&mut at_b).await,
        event::Kind::Update(Update {
            key: "/x#1".into(),
            timestamp_ms: ts,
            writer: "proxy-a".into()
        })
    );
    // And B serves what A stored.
    let e = b
        .get(GetRequest { key: "/x#1".into() })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(e.writer, "proxy-a");
}

/// The `cache.flush` command: one replica's flush reaches every replica's subscribers.
#[tokio::test]
async fn a_flush_reaches_the_subscribers_of_another_replica() {
    assert_shared_redis();
    let ns = unique_namespace();
    let a = redis_replica(SHARED_REDIS, &ns, "replica-a").await;
    let mut b = grpc(redis_replica(SHARED_REDIS, &ns, "replica-b").await).await;
    let mut at_b = subscribe(&mut b, "replica-b").await;
    a.flush("deploy").await.unwrap();
    // Skips the flush B's own (re)subscription may have sent.
    loop {
        match next(&mut at_b).await {
            event::Kind::Flush(f) if f.reason == "deploy" => break,
            event::Kind::Flush(_) => {}
            other => panic!("expected the flush at B, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_undecodable_message_flushes_subscribers() {
    assert_shared_redis();
    let ns = unique_namespace();
    let mut a = grpc(redis_replica(SHARED_REDIS, &ns, "replica-a").await).await;
    let mut events = subscribe(&mut a, "replica-a").await;
    let mut conn = redis::Client::open(SHARED_REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(ns.invalidate_channel())
        .arg(&[0xff_u8, 0xff, 0xff][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    match next(&mut events).await {
        event::Kind::Flush(f) => assert!(f.reason.contains("undecodable event"), "{}", f.reason),
        other => panic!("expected Flush, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broken_pubsub_connection_flushes_subscribers_and_recovers() {
    let mut redis = PrivateRedis::start();
    let ns = unique_namespace();
    let mut a = grpc(redis_replica(&redis.url(), &ns, "replica-a").await).await;
    let mut events = subscribe(&mut a, "replica-a").await;

    redis.stop();
    match next(&mut events).await {
        event::Kind::Flush(f) => assert!(f.reason.contains("connection lost"), "{}", f.reason),
        other => panic!("expected Flush when Redis went away, got {other:?}"),
    }
    // Down: UNAVAILABLE, not a hang; the stream stays open.
    let started = Instant::now();
    let status = a.get(GetRequest { key: "/k".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    redis.restart();
    match next(&mut events).await {
        event::Kind::Flush(f) => assert!(f.reason.contains("subscribed"), "{}", f.reason),
        other => panic!("expected Flush after resubscribing, got {other:?}"),
    }
    // Back: calls succeed again (the connection manager reconnects on use) and events flow.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.invalidate(invalidate_key("/k")).await.is_err() {
        assert!(Instant::now() < deadline, "service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        next_not_flush(&mut events).await,
        event::Kind::Invalidation(_)
    ));
}

/// A TCP proxy to the shared Redis that can go silent: while frozen, bytes in both directions
/// are swallowed and connections stay open (a partition, not a crash).
async fn freezable_proxy() -> (std::net::SocketAddr, Arc<AtomicBool>) {
    async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !frozen.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, f.clone()));
            tokio::spawn(pump(server_read, client_write, f.clone()));
        }
    });
    (addr, frozen)
}

#[tokio::test]
async fn a_silent_pubsub_connection_is_noticed_and_flushed() {
    assert_shared_redis();
    let (addr, frozen) = freezable_proxy().await;
    let url = format!("redis://{addr}/0");
    let ns = unique_namespace();
    let mut a = grpc(redis_replica(&url, &ns, "replica-a").await).await;
    let mut events = subscribe(&mut a, "replica-a").await;

    frozen.store(true, Ordering::SeqCst);
    let started = Instant::now();
    match next(&mut events).await {
        event::Kind::Flush(f) => assert!(f.reason.contains("no answer to PING"), "{}", f.reason),
        other => panic!("expected Flush when the connection went silent, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let status = a.get(GetRequest { key: "/k".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    frozen.store(false, Ordering::SeqCst);
    match next(&mut events).await {
        event::Kind::Flush(f) => assert!(f.reason.contains("subscribed"), "{}", f.reason),
        other => panic!("expected Flush after resubscribing, got {other:?}"),
    }
}

/// A Redis that accepts connections and never answers: every call still ends, UNAVAILABLE,
/// within the deadline.
#[tokio::test]
async fn a_silent_redis_answers_unavailable_within_the_deadline() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/0", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let ns = unique_namespace();
    let timeout = Duration::from_millis(200);
    let cache = Arc::new(CacheService::new(
        RedisStorage::new(&url, &ns, timeout).unwrap(),
        RedisBus::start(&url, &ns, timeout).unwrap(),
        config("replica-a"),
    ));
    let mut c = grpc(cache).await;
    let mut events = open_stream(&mut c).await;
    for call in ["get", "put", "invalidate"] {
        let started = Instant::now();
        let status = match call {
            "get" => c.get(GetRequest { key: "/k".into() }).await.map(|_| ()),
            "put" => c.put(put("/k", 1, "w")).await.map(|_| ()),
            _ => c.invalidate(invalidate_key("/k")).await.map(|_| ()),
        }
        .unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{call}: {status:?}"
        );
        assert!(
            status.message().contains("unavailable"),
            "{call}: {}",
            status.message()
        );
        assert!(took < Duration::from_secs(1), "{call} took {took:?}");
    }
    // The stream is open, without `Hello`: the feed is not live, so the filter must keep off
    // its L1. Nothing arrives, and the stream has not ended.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.message())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn while_redis_is_not_running_calls_are_unavailable_and_hello_waits() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    redis.stop();
    let ns = unique_namespace();
    let cache = Arc::new(CacheService::new(
        RedisStorage::new(&url, &ns, Duration::from_millis(200)).unwrap(),
        RedisBus::start(&url, &ns, Duration::from_millis(200)).unwrap(),
        config("replica-a"),
    ));
    let mut c = grpc(cache.clone()).await;
    let mut events = open_stream(&mut c).await;
    let started = Instant::now();
    let status = c.put(put("/k", 1, "w")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().starts_with("cache storage unavailable: "),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let reply = http::invalidate(&cache, Some("Bearer s3cret-token"), br#"{"keys":["/k"]}"#).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .body
            .starts_with(r#"{"detail":"cache storage unavailable: "#),
        "{}",
        reply.body
    );
    assert!(
        reply.body.ends_with(r#"","error":"unavailable"}"#),
        "{}",
        reply.body
    );
    // No Hello while the feed is down; it comes once Redis is up (then the first
    // subscription's Flush, harmless).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.message())
            .await
            .is_err()
    );
    redis.restart();
    assert!(matches!(next(&mut events).await, event::Kind::Hello(_)));
    assert!(matches!(next(&mut events).await, event::Kind::Flush(_)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.invalidate(invalidate_key("/k")).await.is_err() {
        assert!(Instant::now() < deadline, "service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        next(&mut events).await,
        event::Kind::Invalidation(_)
    ));
}

/// Rough numbers for the report (printed; the assertions are loose): put and get latency over
/// gRPC on the shared Redis, and how long an event takes from one replica to another's stream.
#[tokio::test]
async fn latency_of_calls_and_of_events_between_replicas() {
    assert_shared_redis();
    let ns = unique_namespace();
    let mut a = grpc(redis_replica(SHARED_REDIS, &ns, "replica-a").await).await;
    let mut b = grpc(redis_replica(SHARED_REDIS, &ns, "replica-b").await).await;
    let mut at_b = subscribe(&mut b, "replica-b").await;
    const N: u64 = 200;
    let (mut puts, mut gets, mut lags) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        let key = format!("/bench/{i}");
        let t = Instant::now();
        a.put(put(&key, i + 1, "w")).await.unwrap();
        puts.push(t.elapsed());
        // The Update was published before Put answered; lag = call start to arrival at B.
        assert!(matches!(next(&mut at_b).await, event::Kind::Update(_)));
        lags.push(t.elapsed());
        let t = Instant::now();
        a.get(GetRequest { key }).await.unwrap();
        gets.push(t.elapsed());
    }
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * q) as usize]
    };
    eprintln!(
        "cache service on redis, {N} calls over gRPC: put p50 {:?} p99 {:?}; get p50 {:?} p99 {:?}; put-to-event-at-other-replica p50 {:?} p99 {:?}",
        p(&mut puts, 0.5),
        p(&mut puts, 0.99),
        p(&mut gets, 0.5),
        p(&mut gets, 0.99),
        p(&mut lags, 0.5),
        p(&mut lags, 0.99),
    );
    assert!(p(&mut lags, 0.5) < Duration::from_millis(200));
}
