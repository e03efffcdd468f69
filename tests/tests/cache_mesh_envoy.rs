//! nexus-cache in a mesh, against the REAL coherency service: two Envoys (two workers each),
//! each following its own `nexus-cache-service` replica, the replicas sharing one Redis under
//! a namespace of this run. What one replica is told (gRPC `Invalidate`, `POST
//! /cache/invalidate`) and what one Envoy writes (`Put` → `Update`) reaches the other Envoy
//! through Redis pub/sub; a restarted Redis makes both replicas send `Flush`, which empties
//! both Envoys' L1.

use std::time::{Duration, Instant};

use nexus_ratelimit_service::testkit::PrivateRedis;
use nexus_tests::cache_service::{
    cache_envoy, cache_label, unique_namespace, RealReplica, SHARED_REDIS, TOKEN,
};
use nexus_tests::client;
use nexus_tests::envoy::Envoy;
use nexus_tests::upstream::Upstream;

const CONFIG: &str = r#"{"rules": [{"name": "lake", "match": {"path": {"prefix": "/lake/"}},
    "policy": {"ttl": 300}}],
  "service": {"cluster": "nexus-cache", "timeout_ms": 500, "reconnect_initial_ms": 200}}"#;

/// Replicas 1 and 2 on `redis_url`, Envoy A following replica 1 and Envoy B replica 2.
struct Mesh {
    replicas: Vec<RealReplica>,
    a: Envoy,
    b: Envoy,
    upstream: Upstream,
}

impl Mesh {
    fn start(redis_url: &str) -> Self {
        let ns = unique_namespace("cache-mesh");
        let replicas = RealReplica::start_n(2, redis_url, &ns).unwrap();
        let upstream = Upstream::start("lake").unwrap();
        let a = cache_envoy(CONFIG, &replicas[0], upstream.port()).unwrap();
        let b = cache_envoy(CONFIG, &replicas[1], upstream.port()).unwrap();
        Self {
            replicas,
            a,
            b,
            upstream,
        }
    }

    /// Requests for `path` that reached the upstream.
    fn fetched(&self, path: &str) -> usize {
        self.upstream
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// The one shared key of `path`, once a write-through has landed in Redis.
    fn stored_key(&self, path: &str) -> String {
        let prefix = format!("{path}#");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let keys = self.replicas[0].stored_keys(&prefix).unwrap();
            match keys.as_slice() {
                [key] => return key.clone(),
                [] => assert!(
                    Instant::now() < deadline,
                    "no shared entry for {path} in Redis after 5 s"
                ),
                more => panic!("one variant of {path} expected, Redis holds {more:?}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `path` cached in both Envoys: A fetches and writes through, B takes the shared copy;
    /// each then answers from its L1. Returns the shared key.
    fn cache_in_both(&self, path: &str) -> String {
        assert_eq!(label(&self.a, path), "miss", "{path} at A");
        assert_eq!(label(&self.a, path), "hit-local", "{path} at A");
        let key = self.stored_key(path);
        assert_eq!(label(&self.b, path), "hit-shared", "{path} at B");
        assert_eq!(label(&self.b, path), "hit-local", "{path} at B");
        assert_eq!(
            self.fetched(path),
            1,
            "{path}: one upstream fetch for both Envoys"
        );
        key
    }

    /// The next request for `path` at A and at B, sent together, the upstream holding both
    /// answers 500 ms: neither Envoy can see the other's write-through, so each label says
    /// what its own L1 and the shared cache held.
    fn next_labels(&self, path: &str) -> (String, String) {
        let delayed = [("x-upstream-delay-ms", "500")];
        std::thread::scope(|s| {
            let a = s.spawn(|| cache_label(&self.a, path, &delayed).unwrap());
            let b = s.spawn(|| cache_label(&self.b, path, &delayed).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        })
    }
}

fn label(envoy: &Envoy, path: &str) -> String {
    cache_label(envoy, path, &[]).unwrap()
}

fn stat(envoy: &Envoy, name: &str) -> i64 {
    envoy
        .stat(&format!("wasmcustom.nexus_cache.{name}"))
        .unwrap()
        .unwrap_or(0)
}

/// Waits (at most 10 s) until `nexus_cache.<name>` reaches `at_least` in `envoy`.
fn wait_for_stat(envoy: &Envoy, name: &str, at_least: i64) {
    envoy
        .wait_for_stat_settled(&format!("wasmcustom.nexus_cache.{name}"), at_least)
        .unwrap();
}

#[test]
fn invalidations_sent_to_one_replica_reach_both_envoys() {
    let mesh = Mesh::start(SHARED_REDIS);

    // By key, on replica 1 only.
    let key = mesh.cache_in_both("/lake/tables/orders");
    let (inv_a, inv_b) = (
        stat(&mesh.a, "invalidations"),
        stat(&mesh.b, "invalidations"),
    );
    assert_eq!(mesh.replicas[0].invalidate(&[&key], &[], &[]).unwrap(), 1);
    // Every worker (two per Envoy) follows its own stream and applies the event.
    wait_for_stat(&mesh.a, "invalidations", inv_a + 2);
    wait_for_stat(&mesh.b, "invalidations", inv_b + 2);
    assert_eq!(
        mesh.next_labels("/lake/tables/orders"),
        ("miss".into(), "miss".into())
    );
    assert_eq!(mesh.fetched("/lake/tables/orders"), 3);

    // By prefix, on replica 1 only: both entries under it go, in both Envoys.
    mesh.cache_in_both("/lake/p/one");
    mesh.cache_in_both("/lake/p/two");
    let (inv_a, inv_b) = (
        stat(&mesh.a, "invalidations"),
        stat(&mesh.b, "invalidations"),
    );
    assert_eq!(
        mesh.replicas[0]
            .invalidate(&[], &["/lake/p/"], &[])
            .unwrap(),
        2
    );
    wait_for_stat(&mesh.a, "invalidations", inv_a + 2);
    wait_for_stat(&mesh.b, "invalidations", inv_b + 2);
    for path in ["/lake/p/one", "/lake/p/two"] {
        assert_eq!(
            mesh.next_labels(path),
            ("miss".into(), "miss".into()),
            "{path}"
        );
        assert_eq!(mesh.fetched(path), 3, "{path}");
    }
}

#[test]
fn post_cache_invalidate_at_one_replica_reaches_both_envoys() {
    let mesh = Mesh::start(SHARED_REDIS);
    let key = mesh.cache_in_both("/lake/http");
    let body = format!(r#"{{"keys":[{}]}}"#, serde_json::Value::from(key.as_str()));
    let port = mesh.replicas[0].http_port;

    // Without the token: refused, and nothing happens.
    let resp = client::request(port, "POST", "/cache/invalidate", &[], body.as_bytes()).unwrap();
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert!(mesh.replicas[1].get(&key).unwrap().is_some());
    assert_eq!(label(&mesh.b, "/lake/http"), "hit-local");

    let inv = (
        stat(&mesh.a, "invalidations"),
        stat(&mesh.b, "invalidations"),
    );
    let bearer = format!("Bearer {TOKEN}");
    let resp = client::request(
        port,
        "POST",
        "/cache/invalidate",
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap(), serde_json::json!({"removed": 1}));
    assert!(mesh.replicas[1].get(&key).unwrap().is_none());
    wait_for_stat(&mesh.a, "invalidations", inv.0 + 2);
    wait_for_stat(&mesh.b, "invalidations", inv.1 + 2);
    assert_eq!(
        mesh.next_labels("/lake/http"),
        ("miss".into(), "miss".into())
    );
}

#[test]
fn a_fresh_put_by_envoy_a_drops_envoy_bs_older_copy() {
    let mesh = Mesh::start(SHARED_REDIS);
    let path = "/lake/fresh";
    let key = mesh.cache_in_both(path);
    let old = mesh.replicas[1].get(&key).unwrap().unwrap();
    let (inv_b, flushes_b) = (stat(&mesh.b, "invalidations"), stat(&mesh.b, "flushes"));

    // A refreshes (no-cache: skip the lookup, store the answer): a newer version in Redis,
    // and an `Update` from replica 1 that replica 2 forwards to B.
    assert_eq!(
        cache_label(&mesh.a, path, &[("cache-control", "no-cache")]).unwrap(),
        "miss"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let new = loop {
        let e = mesh.replicas[1].get(&key).unwrap().unwrap();
        if (e.timestamp_ms, &e.writer) != (old.timestamp_ms, &old.writer) {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "A's refreshed copy never reached Redis"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(new.timestamp_ms >= old.timestamp_ms);

    // B serves its older copy until the Update arrives, then fetches the new one from L2.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = label(&mesh.b, path);
        if l == "hit-shared" {
            break;
        }
        assert_eq!(l, "hit-local", "B serves its copy until the Update arrives");
        assert!(Instant::now() < deadline, "B never dropped its older copy");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(label(&mesh.b, path), "hit-local");
    assert_eq!(mesh.fetched(path), 2, "B never went upstream");
    // It was the Update: no invalidation or flush reached B.
    assert_eq!(stat(&mesh.b, "invalidations"), inv_b);
    assert_eq!(stat(&mesh.b, "flushes"), flushes_b);
}

#[test]
fn restarting_redis_makes_both_replicas_flush_both_envoys() {
    let mut redis = PrivateRedis::start();
    let mesh = Mesh::start(&redis.url());
    let path = "/lake/restart";
    mesh.cache_in_both(path);

    let flushes = (stat(&mesh.a, "flushes"), stat(&mesh.b, "flushes"));
    let reconnects = (
        stat(&mesh.a, "stream.reconnects"),
        stat(&mesh.b, "stream.reconnects"),
    );
    let sent: Vec<u64> = mesh
        .replicas
        .iter()
        .map(RealReplica::flushes_sent)
        .collect();

    redis.stop();
    // Each replica notices its pub/sub connection broke and flushes its two streams...
    wait_until("replicas flush on the break", || {
        mesh.replicas
            .iter()
            .zip(&sent)
            .all(|(r, s)| r.flushes_sent() >= s + 2)
    });
    redis.restart();
    // ...and again once subscribed to the restarted Redis.
    wait_until("replicas flush on resubscribing", || {
        mesh.replicas
            .iter()
            .zip(&sent)
            .all(|(r, s)| r.flushes_sent() >= s + 4)
    });
    wait_for_stat(&mesh.a, "flushes", flushes.0 + 4);
    wait_for_stat(&mesh.b, "flushes", flushes.1 + 4);
    // The Flush events came over the streams, which stayed open.
    assert_eq!(stat(&mesh.a, "stream.reconnects"), reconnects.0);
    assert_eq!(stat(&mesh.b, "stream.reconnects"), reconnects.1);

    // Both L1s are empty (and the restarted Redis has no copy either).
    assert_eq!(mesh.next_labels(path), ("miss".into(), "miss".into()));
    assert_eq!(mesh.fetched(path), 3);
    // And caching works again on the restarted Redis, through both replicas.
    mesh.cache_in_both("/lake/after-restart");
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}
