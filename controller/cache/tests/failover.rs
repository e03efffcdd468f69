//! A Redis Cluster primary is killed (SIGKILL) under a cache replica: the one serving the
//! namespace's slot, and the node the replica's event subscriber is connected to. Invalidations
//! made just before the crash and during the failover hold afterwards (no stale entry is
//! served, and a response fetched before them cannot be written back), the subscribers get a
//! `Flush` when the feed breaks, and events flow again from another node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use nexus_cache_service::bus::RedisBus;
use nexus_cache_service::storage::{RedisNamespace, RedisStorage};
use nexus_cache_service::CacheService;
use nexus_proto::cache::cache_client::CacheClient;
use nexus_proto::cache::{event, Event, GetRequest, InvalidateRequest, PutRequest};
use nexus_toolenv::redis_cluster::RedisCluster;
use tonic::transport::Channel;
use tonic::Streaming;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn put(key: &str, value: &[u8], ts: u64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.to_vec(),
        tags: vec![],
        ttl_ms: 600_000,
        timestamp_ms: ts,
        writer: "proxy-1".into(),
    }
}

fn by_key(key: &str) -> InvalidateRequest {
    InvalidateRequest {
        keys: vec![key.into()],
        prefixes: vec![],
        tags: vec![],
    }
}

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A namespace whose slot the cluster's first seed serves: the replica's subscriber connects
/// to that seed first, so killing the slot's primary also breaks the event feed.
fn namespace_on_first_seed(cluster: &RedisCluster) -> RedisNamespace {
    let first = port(&cluster.seed_urls()[0]);
    loop {
        let ns = support::unique_namespace();
        let slot = cluster.slot_of(&ns.hash_tag()).unwrap();
        if cluster.primary_of_slot(slot).unwrap() == Some(first) {
            return ns;
        }
    }
}

async fn get(c: &mut CacheClient<Channel>, key: &str) -> Result<Option<Vec<u8>>, tonic::Status> {
    let got = c.get(GetRequest { key: key.into() }).await?;
    Ok(got.into_inner().entry.map(|e| e.value))
}

/// Retries `invalidate` (UNAVAILABLE while the slot has no primary) until it is acknowledged.
async fn invalidate_through(c: &mut CacheClient<Channel>, key: &str) -> u32 {
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = c.invalidate(by_key(key)).await {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(Instant::now() < deadline, "invalidation failed for 30 s");
        failures += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failures
}

/// Events until one satisfies `wanted` (within 15 s); true if a `Flush` came first.
async fn flushed_before(
    events: &mut Streaming<Event>,
    wanted: impl Fn(&event::Kind) -> bool,
) -> bool {
    let mut flushed = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, events.message()).await;
        let kind = msg
            .expect("no event within 15 s")
            .unwrap()
            .unwrap()
            .kind
            .unwrap();
        if wanted(&kind) {
            return flushed;
        }
        flushed |= matches!(kind, event::Kind::Flush(_));
    }
}

fn invalidates(key: &'static str) -> impl Fn(&event::Kind) -> bool {
    move |k| matches!(k, event::Kind::Invalidation(i) if i.keys == [key])
}

/// A replica whose Redis calls give up after 300 ms, so calls made during the failover fail
/// rather than wait it out.
async fn replica(url: &str, ns: &RedisNamespace) -> std::sync::Arc<CacheService> {
    let timeout = Duration::from_millis(300);
    let cache = std::sync::Arc::new(CacheService::new(
        RedisStorage::new(url, ns, timeout).unwrap(),
        RedisBus::start(url, ns, timeout).unwrap(),
        support::config("replica-a"),
    ));
    assert!(cache.bus().wait_live(Duration::from_secs(5)).await);
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_entry_is_served_after_invalidations_around_a_primary_failover() {
    let mut cluster = RedisCluster::start().unwrap();
    let ns = namespace_on_first_seed(&cluster);
    let cache = replica(&cluster.url(), &ns).await;
    let mut c = support::grpc(cache).await;
    let mut events = support::subscribe(&mut c, "replica-a").await;
    let fetched = now_ms();
    for key in ["/before", "/during", "/after"] {
        assert!(
            c.put(put(key, b"v1", fetched))
                .await
                .unwrap()
                .into_inner()
                .stored
        );
        assert_eq!(get(&mut c, key).await.unwrap().as_deref(), Some(&b"v1"[..]));
    }
    // Acknowledged just before the crash: on a cluster, only once a replica has it.
    c.invalidate(by_key("/before")).await.unwrap();
    assert!(!flushed_before(&mut events, invalidates("/before")).await);

    let killed = cluster.kill_primary_of(&ns.hash_tag()).unwrap();
    let at = Instant::now();
    let failures = invalidate_through(&mut c, "/during").await;
    let acknowledged = at.elapsed();
    let promoted =
        tokio::task::block_in_place(|| cluster.wait_for_failover(killed, Duration::from_secs(30)))
            .unwrap();
    eprintln!(
        "failover {} -> {promoted} in {:?}; the invalidation during it failed {failures} times \
         and was acknowledged after {acknowledged:?}",
        killed.port,
        at.elapsed()
    );
    assert!(
        failures > 0,
        "the invalidation did not happen during the failover"
    );

    for key in ["/before", "/during"] {
        assert_eq!(get(&mut c, key).await.unwrap(), None, "{key} served stale");
        let stale = c.put(put(key, b"v1", fetched)).await.unwrap().into_inner();
        assert!(
            !stale.stored,
            "{key}: a response fetched before its invalidation was stored"
        );
    }
    assert_eq!(
        get(&mut c, "/after").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    // The feed broke with its node: subscribers flushed (whatever was lost meanwhile, the
    // "/during" event included, is covered), and events flow again from another node.
    c.invalidate(by_key("/after")).await.unwrap();
    assert!(flushed_before(&mut events, invalidates("/after")).await);
    assert_eq!(get(&mut c, "/after").await.unwrap(), None);
}
