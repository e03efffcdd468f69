//! Every storage scenario, run against every backend (memory, real Redis, a real three-primary
//! Redis Cluster) by one macro.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use nexus_cache_service::storage::{MemoryStorage, Storage, Watermark};
use nexus_proto::cache::{Invalidation, PutRequest};

fn put(key: &str, value: &str, tags: &[&str], ts: u64, writer: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        tags: tags.iter().map(|t| (*t).to_string()).collect(),
        ttl_ms: 60_000,
        timestamp_ms: ts,
        writer: writer.into(),
    }
}

/// The watermark of the scenarios that are not about watermarks (in them, no put follows an
/// invalidation of its key).
const WM: Watermark = Watermark {
    at_ms: 1_000_000,
    ttl_ms: 60_000,
};

fn select(keys: &[&str], prefixes: &[&str], tags: &[&str]) -> Invalidation {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect();
    Invalidation {
        keys: own(keys),
        prefixes: own(prefixes),
        tags: own(tags),
    }
}

async fn value<S: Storage>(s: &S, key: &str) -> Option<String> {
    s.get(key)
        .await
        .unwrap()
        .map(|e| String::from_utf8(e.value).unwrap())
}

macro_rules! every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::MemoryStorage::new()).await; } )*
        }
        mod redis {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::support::shared_redis_storage()).await; } )*
        }
        mod redis_cluster {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::support::cluster_storage()).await; } )*
        }
    };
}

every_backend!(
    get_answers_what_was_put,
    an_older_put_is_rejected_with_the_stored_version,
    equal_timestamps_are_ordered_by_writer,
    the_newest_of_concurrent_writers_wins,
    entries_expire_after_their_ttl,
    invalidate_by_key,
    invalidate_by_prefix_matches_only_that_prefix,
    invalidate_by_tag_and_the_tag_index_is_cleaned,
    a_re_put_moves_the_key_between_tag_indexes,
    an_entry_selected_twice_is_counted_once,
    a_put_fetched_before_a_key_invalidation_is_refused,
    a_put_fetched_before_a_prefix_invalidation_is_refused,
    a_put_fetched_before_a_tag_invalidation_is_refused,
    watermarks_are_raised_never_lowered,
    watermarks_expire,
);

fn wm(at_ms: u64) -> Watermark {
    Watermark {
        at_ms,
        ttl_ms: 60_000,
    }
}

/// Whether the put was stored, and the version answered.
async fn try_put<S: Storage>(s: &S, key: &str, tags: &[&str], ts: u64) -> (bool, u64, String) {
    let r = s
        .put(&put(key, &format!("{key}@{ts}"), tags, ts, "w"))
        .await
        .unwrap();
    (r.stored, r.timestamp_ms, r.writer)
}

async fn get_answers_what_was_put<S: Storage>(s: S) {
    assert_eq!(s.get("/a#1").await.unwrap(), None);
    let r = s
        .put(&put("/a#1", "body", &["t1", "t2"], 1000, "w1"))
        .await
        .unwrap();
    assert!(r.stored);
    assert_eq!((r.timestamp_ms, r.writer.as_str()), (1000, "w1"));
    let e = s.get("/a#1").await.unwrap().unwrap();
    assert_eq!(e.value, b"body");
    assert_eq!(e.tags, ["t1", "t2"]);
    assert_eq!((e.timestamp_ms, e.writer.as_str()), (1000, "w1"));
    assert!(
        e.ttl_remaining_ms > 50_000 && e.ttl_remaining_ms <= 60_000,
        "{}",
        e.ttl_remaining_ms
    );
    // Binary values survive.
    let mut bin = put("/bin", "", &[], 1, "w");
    bin.value = vec![0, 255, 10, 13, 0];
    s.put(&bin).await.unwrap();
    assert_eq!(
        s.get("/bin").await.unwrap().unwrap().value,
        [0, 255, 10, 13, 0]
    );
}

async fn an_older_put_is_rejected_with_the_stored_version<S: Storage>(s: S) {
    assert!(
        s.put(&put("k", "new", &[], 2000, "w1"))
            .await
            .unwrap()
            .stored
    );
    let r = s.put(&put("k", "old", &[], 1999, "w9")).await.unwrap();
    assert!(!r.stored);
    assert_eq!((r.timestamp_ms, r.writer.as_str()), (2000, "w1"));
    assert_eq!(value(&s, "k").await.as_deref(), Some("new"));
    // The very same version again is a retry: not stored twice.
    let r = s.put(&put("k", "again", &[], 2000, "w1")).await.unwrap();
    assert!(!r.stored);
    assert_eq!(value(&s, "k").await.as_deref(), Some("new"));
    // Timestamps compare as numbers, not strings ("10000" > "9999").
    assert!(s.put(&put("n", "a", &[], 9999, "w")).await.unwrap().stored);
    assert!(s.put(&put("n", "b", &[], 10000, "w")).await.unwrap().stored);
    assert!(!s.put(&put("n", "c", &[], 9999, "z")).await.unwrap().stored);
    assert_eq!(value(&s, "n").await.as_deref(), Some("b"));
}

async fn equal_timestamps_are_ordered_by_writer<S: Storage>(s: S) {
    assert!(s.put(&put("k", "B", &[], 5, "B")).await.unwrap().stored);
    // Byte order: "B" (0x42) < "a" (0x61), whatever the Redis server's locale says.
    assert!(s.put(&put("k", "a", &[], 5, "a")).await.unwrap().stored);
    let r = s.put(&put("k", "A", &[], 5, "A")).await.unwrap();
    assert!(!r.stored);
    assert_eq!(r.writer, "a");
    assert_eq!(value(&s, "k").await.as_deref(), Some("a"));
}

async fn the_newest_of_concurrent_writers_wins<S: Storage>(s: S) {
    let s = Arc::new(s);
    // 64 writers, timestamps shuffled (7 is coprime with 64), two writers per timestamp.
    let mut tasks = Vec::new();
    for i in 0u64..64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let ts = 1_000 + (i * 7) % 32;
            let writer = format!("w{}", i % 2);
            let r = s
                .put(&put(
                    "hot",
                    &format!("{ts}/{writer}"),
                    &["hot"],
                    ts,
                    &writer,
                ))
                .await
                .unwrap();
            (ts, writer, r)
        }));
    }
    let mut stored = 0;
    for t in tasks {
        let (ts, writer, r) = t.await.unwrap();
        if r.stored {
            stored += 1;
            assert_eq!((r.timestamp_ms, &r.writer), (ts, &writer));
        } else {
            // Rejected only in favour of a version at least as new.
            assert!(
                (r.timestamp_ms, r.writer.as_str()) >= (ts, writer.as_str()),
                "{ts}/{writer} rejected for {}/{}",
                r.timestamp_ms,
                r.writer
            );
        }
    }
    assert!(stored >= 1);
    let e = s.get("hot").await.unwrap().unwrap();
    assert_eq!((e.timestamp_ms, e.writer.as_str()), (1_031, "w1"));
    assert_eq!(e.value, b"1031/w1");
    assert_eq!(s.tag_index("hot").await.unwrap(), ["hot"]);
}

async fn entries_expire_after_their_ttl<S: Storage>(s: S) {
    let mut p = put("short", "v", &["t"], 10, "w");
    p.ttl_ms = 150;
    assert!(s.put(&p).await.unwrap().stored);
    let e = s.get("short").await.unwrap().unwrap();
    assert!(e.ttl_remaining_ms <= 150);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.get("short").await.unwrap(), None);
    // An expired version no longer decides: an older put is stored.
    assert!(
        s.put(&put("short", "older", &[], 5, "w"))
            .await
            .unwrap()
            .stored
    );
    assert_eq!(value(&s, "short").await.as_deref(), Some("older"));
}

async fn invalidate_by_key<S: Storage>(s: S) {
    s.put(&put("/a", "1", &[], 1, "w")).await.unwrap();
    s.put(&put("/b", "2", &[], 1, "w")).await.unwrap();
    assert_eq!(
        s.invalidate(&select(&["/a", "/nope"], &[], &[]), WM)
            .await
            .unwrap(),
        1
    );
    assert_eq!(value(&s, "/a").await, None);
    assert_eq!(value(&s, "/b").await.as_deref(), Some("2"));
}

async fn invalidate_by_prefix_matches_only_that_prefix<S: Storage>(s: S) {
    for key in [
        "/lake/tables/1#aa",
        "/lake/tables/2?x=1#bb",
        "/lake/tablesX#cc",
        "/lake/views/1#dd",
        "/l*ke/tables/1#ee",
    ] {
        s.put(&put(key, key, &[], 1, "w")).await.unwrap();
    }
    let removed = s
        .invalidate(&select(&[], &["/lake/tables/"], &[]), WM)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(value(&s, "/lake/tables/1#aa").await, None);
    assert_eq!(value(&s, "/lake/tables/2?x=1#bb").await, None);
    for kept in ["/lake/tablesX#cc", "/lake/views/1#dd", "/l*ke/tables/1#ee"] {
        assert!(value(&s, kept).await.is_some(), "{kept} was removed");
    }
    // Glob characters in a prefix are literal.
    assert_eq!(
        s.invalidate(&select(&[], &["/l*ke/"], &[]), WM)
            .await
            .unwrap(),
        1
    );
    assert!(value(&s, "/lake/views/1#dd").await.is_some());
}

async fn invalidate_by_tag_and_the_tag_index_is_cleaned<S: Storage>(s: S) {
    s.put(&put("/p/1", "1", &["product:1", "products"], 1, "w"))
        .await
        .unwrap();
    s.put(&put("/p/2", "2", &["product:2", "products"], 1, "w"))
        .await
        .unwrap();
    s.put(&put("/other", "3", &["other"], 1, "w"))
        .await
        .unwrap();
    assert_eq!(s.tag_index("products").await.unwrap(), ["/p/1", "/p/2"]);

    assert_eq!(
        s.invalidate(&select(&[], &[], &["product:1"]), WM)
            .await
            .unwrap(),
        1
    );
    assert_eq!(value(&s, "/p/1").await, None);
    assert!(s.tag_index("product:1").await.unwrap().is_empty());
    // The removed entry left its other tags' indexes too.
    assert_eq!(s.tag_index("products").await.unwrap(), ["/p/2"]);

    assert_eq!(
        s.invalidate(&select(&[], &[], &["products"]), WM)
            .await
            .unwrap(),
        1
    );
    assert!(s.tag_index("products").await.unwrap().is_empty());
    assert!(s.tag_index("product:2").await.unwrap().is_empty());
    assert_eq!(value(&s, "/other").await.as_deref(), Some("3"));
    assert_eq!(s.tag_index("other").await.unwrap(), ["/other"]);
}

async fn a_re_put_moves_the_key_between_tag_indexes<S: Storage>(s: S) {
    s.put(&put("k", "v1", &["old", "both"], 1, "w"))
        .await
        .unwrap();
    s.put(&put("k", "v2", &["new", "both"], 2, "w"))
        .await
        .unwrap();
    assert!(s.tag_index("old").await.unwrap().is_empty());
    assert_eq!(s.tag_index("new").await.unwrap(), ["k"]);
    assert_eq!(s.tag_index("both").await.unwrap(), ["k"]);
    // A rejected put changes no index.
    s.put(&put("k", "v0", &["stale"], 0, "w")).await.unwrap();
    assert!(s.tag_index("stale").await.unwrap().is_empty());
    assert_eq!(
        s.invalidate(&select(&[], &[], &["old"]), WM).await.unwrap(),
        0
    );
    assert_eq!(value(&s, "k").await.as_deref(), Some("v2"));
}

async fn an_entry_selected_twice_is_counted_once<S: Storage>(s: S) {
    s.put(&put("/x/1", "1", &["t"], 1, "w")).await.unwrap();
    s.put(&put("/x/2", "2", &[], 1, "w")).await.unwrap();
    let removed = s
        .invalidate(&select(&["/x/1"], &["/x/"], &["t"]), WM)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(
        s.invalidate(&select(&["/x/1"], &["/x/"], &["t"]), WM)
            .await
            .unwrap(),
        0
    );
}

async fn a_put_fetched_before_a_key_invalidation_is_refused<S: Storage>(s: S) {
    assert!(try_put(&s, "/k", &[], 900).await.0);
    assert_eq!(
        s.invalidate(&select(&["/k"], &[], &[]), wm(1_000))
            .await
            .unwrap(),
        1
    );
    // Fetched before (or at) the invalidation: refused, nothing stored, nothing answered.
    assert_eq!(try_put(&s, "/k", &[], 999).await, (false, 0, String::new()));
    assert_eq!(
        try_put(&s, "/k", &[], 1_000).await,
        (false, 0, String::new())
    );
    assert_eq!(value(&s, "/k").await, None);
    // Fetched after it: stored; an older one then loses to it as before.
    assert!(try_put(&s, "/k", &[], 1_001).await.0);
    assert_eq!(
        try_put(&s, "/k", &[], 999).await,
        (false, 1_001, "w".into())
    );
    assert_eq!(value(&s, "/k").await.as_deref(), Some("/k@1001"));
    // A key watermark is for that key only.
    assert!(try_put(&s, "/k2", &[], 500).await.0);
    assert!(try_put(&s, "/k/sub", &[], 500).await.0);
}

async fn a_put_fetched_before_a_prefix_invalidation_is_refused<S: Storage>(s: S) {
    assert_eq!(
        s.invalidate(&select(&[], &["/lake/ta", "/café/"], &[]), wm(1_000))
            .await
            .unwrap(),
        0
    );
    for key in [
        "/lake/tables#aa",
        "/lake/ta",
        "/lake/ta?x=1#bb",
        "/café/1#cc",
    ] {
        assert_eq!(
            try_put(&s, key, &[], 999).await,
            (false, 0, String::new()),
            "{key}"
        );
        assert_eq!(value(&s, key).await, None, "{key}");
    }
    // Keys that do not start with the prefix are not concerned.
    for key in ["/lake/t#x", "/lake/tx", "/lakes/ta", "/caf/1"] {
        assert!(try_put(&s, key, &[], 999).await.0, "{key}");
    }
    assert!(try_put(&s, "/lake/tables#aa", &[], 1_001).await.0);
    // Of several matching prefixes (of other lengths), the newest watermark decides.
    s.invalidate(&select(&[], &["/l"], &[]), wm(2_000))
        .await
        .unwrap();
    assert_eq!(
        try_put(&s, "/lake/tables#aa", &[], 1_500).await,
        (false, 0, String::new())
    );
    assert!(try_put(&s, "/lake/tables#aa", &[], 2_001).await.0);
    assert!(!try_put(&s, "/lake/t#x", &[], 2_000).await.0);
    assert!(try_put(&s, "/other", &[], 1).await.0);
}

async fn a_put_fetched_before_a_tag_invalidation_is_refused<S: Storage>(s: S) {
    assert!(try_put(&s, "/p/1", &["product:1"], 900).await.0);
    assert_eq!(
        s.invalidate(&select(&[], &[], &["product:1"]), wm(1_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        try_put(&s, "/p/1", &["products", "product:1"], 999).await,
        (false, 0, String::new())
    );
    // A refused put changes no index.
    assert!(s.tag_index("products").await.unwrap().is_empty());
    assert!(s.tag_index("product:1").await.unwrap().is_empty());
    // Any key carrying the tag: refused until fetched after the invalidation.
    assert!(!try_put(&s, "/p/2", &["product:1"], 1_000).await.0);
    assert!(try_put(&s, "/p/2", &["product:1"], 1_001).await.0);
    assert_eq!(s.tag_index("product:1").await.unwrap(), ["/p/2"]);
    // The watermark is the tag's: a response without the tag is not concerned.
    assert!(try_put(&s, "/p/1", &["products"], 999).await.0);
}

async fn watermarks_are_raised_never_lowered<S: Storage>(s: S) {
    s.invalidate(&select(&["/k"], &["/p"], &["t"]), wm(2_000))
        .await
        .unwrap();
    // A later invalidation stamped earlier (another replica's clock) lowers nothing.
    s.invalidate(&select(&["/k"], &["/p"], &["t"]), wm(1_000))
        .await
        .unwrap();
    assert!(!try_put(&s, "/k", &[], 1_500).await.0);
    assert!(!try_put(&s, "/p/1", &[], 1_500).await.0);
    assert!(!try_put(&s, "/x", &["t"], 1_500).await.0);
    assert!(try_put(&s, "/k", &[], 2_001).await.0);
}

async fn watermarks_expire<S: Storage>(s: S) {
    let short = Watermark {
        at_ms: 1_000,
        ttl_ms: 150,
    };
    s.invalidate(&select(&["/k"], &["/p/"], &["t"]), short)
        .await
        .unwrap();
    assert!(!try_put(&s, "/k", &[], 999).await.0);
    assert!(!try_put(&s, "/p/1", &[], 999).await.0);
    assert!(!try_put(&s, "/x", &["t"], 999).await.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(try_put(&s, "/k", &[], 999).await.0);
    assert!(try_put(&s, "/p/1", &[], 999).await.0);
    assert!(try_put(&s, "/x", &["t"], 999).await.0);
}
