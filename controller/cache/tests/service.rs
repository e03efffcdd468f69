//! The service through its real gRPC server (and HTTP endpoint), every scenario on every
//! backend (memory, and real Redis or a real three-primary Redis Cluster for both storage and
//! events) by one macro.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use nexus_cache_service::{http, CacheService};
use nexus_proto::cache::{event, GetRequest, InvalidateRequest, PutRequest, Update};
use support::{grpc, next, subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn put(key: &str, value: &[u8], ts: u64, writer: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.to_vec(),
        tags: vec!["t".into()],
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

fn invalidate(keys: &[&str], prefixes: &[&str], tags: &[&str]) -> InvalidateRequest {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect();
    InvalidateRequest {
        keys: own(keys),
        prefixes: own(prefixes),
        tags: own(tags),
    }
}

macro_rules! every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::support::memory_service()).await; } )*
        }
        mod redis {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::support::redis_service().await).await; } )*
        }
        mod redis_cluster {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::support::cluster_service().await).await; } )*
        }
    };
}

every_backend!(
    get_put_round_trip_over_grpc,
    hello_first_then_update_and_invalidation_events,
    a_rejected_put_publishes_nothing,
    invalid_requests_are_refused,
    http_invalidate_answers_401_400_and_200,
    a_put_fetched_before_an_invalidation_is_refused_and_announces_nothing,
    metrics_count_what_happened,
);

async fn get_put_round_trip_over_grpc(cache: Arc<CacheService>) {
    let mut c = grpc(cache).await;
    let miss = c
        .get(GetRequest { key: "/a#1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(miss.entry, None);
    let r = c
        .put(put("/a#1", b"resp", 7, "proxy-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.stored);
    let e = c
        .get(GetRequest { key: "/a#1".into() })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(
        (e.value.as_slice(), e.timestamp_ms, e.writer.as_str()),
        (&b"resp"[..], 7, "proxy-1")
    );
    let removed = c
        .invalidate(invalidate(&[], &["/a"], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 1);
    assert_eq!(
        c.get(GetRequest { key: "/a#1".into() })
            .await
            .unwrap()
            .into_inner()
            .entry,
        None
    );
}

async fn hello_first_then_update_and_invalidation_events(cache: Arc<CacheService>) {
    let mut c = grpc(cache).await;
    let mut events = subscribe(&mut c, "replica-a").await;
    c.put(put("/k", b"v", 42, "proxy-1")).await.unwrap();
    assert_eq!(
        next(&mut events).await,
        event::Kind::Update(Update {
            key: "/k".into(),
            timestamp_ms: 42,
            writer: "proxy-1".into()
        })
    );
    c.invalidate(invalidate(&["/k"], &["/p/"], &["t"]))
        .await
        .unwrap();
    match next(&mut events).await {
        event::Kind::Invalidation(i) => {
            assert_eq!(
                (i.keys, i.prefixes, i.tags),
                (
                    vec!["/k".to_string()],
                    vec!["/p/".to_string()],
                    vec!["t".to_string()]
                )
            );
        }
        other => panic!("expected Invalidation, got {other:?}"),
    }
}

async fn a_rejected_put_publishes_nothing(cache: Arc<CacheService>) {
    let mut c = grpc(cache).await;
    let mut events = subscribe(&mut c, "replica-a").await;
    c.put(put("/k", b"new", 10, "w")).await.unwrap();
    assert!(matches!(next(&mut events).await, event::Kind::Update(_)));
    let r = c.put(put("/k", b"old", 9, "w")).await.unwrap().into_inner();
    assert!(!r.stored);
    assert_eq!(r.timestamp_ms, 10);
    // The next event is the invalidation: the rejected put sent none.
    c.invalidate(invalidate(&["/k"], &[], &[])).await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        event::Kind::Invalidation(_)
    ));
}

fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> (tonic::Code, String) {
    let s = r.unwrap_err();
    (s.code(), s.message().to_string())
}

async fn invalid_requests_are_refused(cache: Arc<CacheService>) {
    let mut c = grpc(cache).await;
    let (status, msg) = refused(c.get(GetRequest { key: String::new() }).await);
    assert_eq!(
        (status, msg.as_str()),
        (tonic::Code::InvalidArgument, "key: must not be empty")
    );
    let (status, _) = refused(c.put(put("", b"v", 1, "w")).await);
    assert_eq!(status, tonic::Code::InvalidArgument);
    let (status, msg) = refused(c.put(put("/big", &[b'x'; 1025], 1, "w")).await);
    assert_eq!(
        (status, msg.as_str()),
        (
            tonic::Code::InvalidArgument,
            "value: 1025 bytes is more than the maximum of 1024"
        )
    );
    let mut no_ttl = put("/k", b"v", 1, "w");
    no_ttl.ttl_ms = 0;
    let (status, msg) = refused(c.put(no_ttl).await);
    assert_eq!(
        (status, msg.as_str()),
        (tonic::Code::InvalidArgument, "ttl_ms: must be positive")
    );
    let (status, msg) = refused(c.invalidate(invalidate(&[], &[], &[])).await);
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(
        msg.contains("at least one of keys, prefixes or tags"),
        "{msg}"
    );
    let (status, msg) = refused(c.invalidate(invalidate(&["/a"], &[""], &[])).await);
    assert_eq!(
        (status, msg.as_str()),
        (
            tonic::Code::InvalidArgument,
            "prefixes[0]: must not be empty"
        )
    );
    // A value of exactly the maximum is fine.
    assert!(
        c.put(put("/max", &[b'x'; 1024], 1, "w"))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
async fn post(addr: std::net::SocketAddr, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /cache/invalidate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

async fn http_invalidate_answers_401_400_and_200(cache: Arc<CacheService>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(cache.clone(), listener, std::future::pending()));
    let mut c = grpc(cache).await;
    let mut events = subscribe(&mut c, "replica-a").await;
    c.put(put("/lake/1", b"v", 1, "w")).await.unwrap();
    c.put(put("/lake/2", b"v", 1, "w")).await.unwrap();
    // (Redis: events published before a stream opened may still reach it, so they are taken
    // here, not left to race with the ones under test.)
    for _ in 0..2 {
        assert!(matches!(next(&mut events).await, event::Kind::Update(_)));
    }

    let ok_body = r#"{"prefixes":["/lake/"]}"#;
    assert_eq!(
        post(addr, None, ok_body).await,
        (401, r#"{"detail":"missing bearer token (Authorization: Bearer <token>)","error":"unauthorized"}"#.into())
    );
    assert_eq!(
        post(addr, Some("Bearer s3cret-tokem"), ok_body).await,
        (
            401,
            r#"{"detail":"wrong bearer token","error":"unauthorized"}"#.into()
        )
    );
    assert_eq!(post(addr, Some("Basic s3cret-token"), ok_body).await.0, 401);
    let huge = format!(r#"{{"keys":["{}"]}}"#, "k".repeat(http::MAX_BODY_BYTES));
    assert_eq!(
        post(addr, Some("Bearer s3cret-token"), &huge).await,
        (
            413,
            format!(
                r#"{{"detail":"the body may have at most {} bytes","error":"payload_too_large"}}"#,
                http::MAX_BODY_BYTES
            )
        )
    );
    let auth = Some("Bearer s3cret-token");
    assert_eq!(
        post(addr, auth, r#"{"keys":["/a", 7]}"#).await,
        (400, r#"{"detail":"invalid type: integer `7`, expected a string at line 1 column 16","error":"bad_request","path":"keys[1]"}"#.into())
    );
    assert_eq!(
        post(addr, auth, r#"{"key":["/a"]}"#).await,
        (400, r#"{"detail":"unknown field `key`, expected one of `keys`, `prefixes`, `tags` at line 1 column 6","error":"bad_request","path":"key"}"#.into())
    );
    assert_eq!(
        post(addr, auth, "{}").await,
        (400, r#"{"detail":"an invalidation needs at least one of keys, prefixes or tags","error":"bad_request","path":"."}"#.into())
    );
    assert_eq!(
        post(addr, auth, r#"{"tags":["x",""]}"#).await,
        (
            400,
            r#"{"detail":"must not be empty","error":"bad_request","path":"tags[1]"}"#.into()
        )
    );
    // Nothing so far was invalidated, nor announced.
    assert!(c
        .get(GetRequest {
            key: "/lake/1".into()
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .is_some());
    assert_eq!(
        post(addr, auth, ok_body).await,
        (200, r#"{"removed":2}"#.into())
    );
    match next(&mut events).await {
        event::Kind::Invalidation(i) => assert_eq!(i.prefixes, ["/lake/"]),
        other => panic!("expected Invalidation, got {other:?}"),
    }
    assert_eq!(
        post(addr, Some("bearer  s3cret-token "), ok_body).await,
        (200, r#"{"removed":0}"#.into())
    );
}

async fn metrics_count_what_happened(cache: Arc<CacheService>) {
    let mut c = grpc(cache.clone()).await;
    let _events = subscribe(&mut c, "replica-a").await;
    c.get(GetRequest { key: "/m".into() }).await.unwrap();
    c.put(put("/m", b"v", 2, "w")).await.unwrap();
    c.put(put("/m", b"v", 1, "w")).await.unwrap();
    c.get(GetRequest { key: "/m".into() }).await.unwrap();
    c.invalidate(invalidate(&["/m"], &[], &[])).await.unwrap();
    let text = cache.metrics.render();
    for line in [
        "nexus_cache_gets_total{result=\"hit\"} 1",
        "nexus_cache_gets_total{result=\"miss\"} 1",
        "nexus_cache_puts_total{result=\"stored\"} 1",
        "nexus_cache_puts_total{result=\"rejected\"} 1",
        "nexus_cache_invalidations_total 1",
        "nexus_cache_entries_removed_total 1",
        "nexus_cache_events_published_total 2",
        "nexus_cache_subscribers 1",
        "# TYPE nexus_cache_subscribers gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

async fn a_put_fetched_before_an_invalidation_is_refused_and_announces_nothing(
    cache: Arc<CacheService>,
) {
    let mut c = grpc(cache.clone()).await;
    let mut events = subscribe(&mut c, "replica-a").await;
    // A proxy starts fetching; meanwhile the prefix is invalidated; then its response arrives.
    let started = now_ms();
    c.invalidate(invalidate(&[], &["/lake/"], &[]))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut events).await,
        event::Kind::Invalidation(_)
    ));
    let r = c
        .put(put("/lake/t#1", b"stale", started, "proxy-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.stored);
    assert_eq!((r.timestamp_ms, r.writer.as_str()), (0, ""));
    let get = |c: &mut nexus_proto::cache::cache_client::CacheClient<_>| {
        let mut c = c.clone();
        async move {
            c.get(GetRequest {
                key: "/lake/t#1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .entry
        }
    };
    assert_eq!(get(&mut c).await, None);
    // A fetch that started after the invalidation is stored (and announced).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let fresh = now_ms();
    assert!(
        c.put(put("/lake/t#1", b"fresh", fresh, "proxy-2"))
            .await
            .unwrap()
            .into_inner()
            .stored
    );
    // The next event is that Update: the refused put announced nothing.
    assert_eq!(
        next(&mut events).await,
        event::Kind::Update(Update {
            key: "/lake/t#1".into(),
            timestamp_ms: fresh,
            writer: "proxy-2".into()
        })
    );
    assert_eq!(get(&mut c).await.unwrap().value, b"fresh");
    let text = cache.metrics.render();
    for line in [
        "nexus_cache_puts_total{result=\"invalidated\"} 1",
        "nexus_cache_puts_total{result=\"rejected\"} 0",
        "nexus_cache_puts_total{result=\"stored\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn the_clock_skew_allowance_moves_the_watermark_later() {
    use nexus_cache_service::bus::MemoryBus;
    use nexus_cache_service::storage::MemoryStorage;
    let mut config = support::config("replica-a");
    config.clock_skew_allowance = std::time::Duration::from_millis(50);
    let cache = CacheService::new(MemoryStorage::new(), MemoryBus::new(), config)
        .with_clock(Arc::new(|| 1_000_000));
    cache
        .invalidate(invalidate(&["/k"], &[], &[]))
        .await
        .unwrap();
    // Stamped up to 50 ms after the service's clock: a proxy whose clock runs ahead.
    assert!(
        !cache
            .put(put("/k", b"v", 1_000_050, "w"))
            .await
            .unwrap()
            .stored
    );
    assert!(
        cache
            .put(put("/k", b"v", 1_000_051, "w"))
            .await
            .unwrap()
            .stored
    );
}
