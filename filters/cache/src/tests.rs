//! The request/response state machine with in-memory hosts.

use super::*;
use nexus_filter_core::testing::{MemLog, MemMetrics, MemSharedData};
use nexus_proto::cache::Entry;

const T0: u64 = 1_800_000_000_000;

fn cache(extra: &str) -> Cache {
    Cache::from_json(
        format!(
            r#"{{"rules": [
                {{"name": "me", "match": {{"path": {{"prefix": "/me/"}}}},
                  "policy": {{"ttl": 60, "key_by": "client"}}}},
                {{"name": "lake", "match": {{"path": {{"prefix": "/lake/"}}}},
                  "policy": {{"ttl": 60, "vary": ["accept"], "max_object_bytes": 10}}}}],
               "l1_max_entries": 4{extra}}}"#
        )
        .as_bytes(),
        "w1",
    )
    .unwrap()
}

fn req(path: &str, extra: &[(&str, &str)]) -> HeaderList {
    let mut v: HeaderList = [(":method", "GET"), (":path", path), (":authority", "api")]
        .into_iter()
        .collect();
    v.extend(extra.iter().copied());
    v
}

/// The same request with another method.
fn with_method(r: HeaderList, method: &str) -> HeaderList {
    r.iter()
        .map(|(k, v)| (k, if k == ":method" { method } else { v }))
        .collect()
}

fn resp(status: &str, extra: &[(&str, &str)]) -> HeaderList {
    let mut v: HeaderList = [(":status", status), ("content-type", "text/plain")]
        .into_iter()
        .collect();
    v.extend(extra.iter().copied());
    v
}

#[derive(Default)]
struct Env {
    shared: MemSharedData,
    metrics: MemMetrics,
    log: MemLog,
}

impl Env {
    /// A whole exchange: request, then (unless answered from cache) the upstream response.
    /// Returns the cache header and the local response, if any.
    fn exchange(
        &self,
        c: &Cache,
        request: &HeaderList,
        response: &HeaderList,
        body: &[u8],
        now: u64,
    ) -> (String, Option<LocalResponse>, ResponseStep) {
        let mut ex = Exchange::default();
        match c.on_request_headers(&mut ex, request, true, &self.shared, &self.metrics, now) {
            Step::Respond(r) => {
                let label = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == CACHE_HEADER)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (label, Some(r), ResponseStep::default())
            }
            Step::Lookup(_) => panic!("no service configured"),
            Step::Continue => {
                let h = c.on_response_headers(
                    &mut ex,
                    response,
                    false,
                    &self.shared,
                    &self.metrics,
                    now,
                );
                let label = h
                    .headers
                    .iter()
                    .find(|(k, _)| k == CACHE_HEADER)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                c.on_response_body(
                    &mut ex,
                    &body[..body.len() / 2],
                    false,
                    &self.shared,
                    &self.metrics,
                    now,
                );
                let end = c.on_response_body(
                    &mut ex,
                    &body[body.len() / 2..],
                    true,
                    &self.shared,
                    &self.metrics,
                    now,
                );
                (label, None, end)
            }
        }
    }
}

#[test]
fn second_get_is_a_local_hit_with_stored_status_headers_body_and_age() {
    let c = cache("");
    let e = Env::default();
    let r = req("/lake/t?x=1", &[]);
    let (label, _, _) = e.exchange(
        &c,
        &r,
        &resp("200", &[("etag", "1"), ("vary", "Accept")]),
        b"hello",
        T0,
    );
    assert_eq!(label, "miss");
    let (label, hit, _) = e.exchange(&c, &r, &HeaderList::new(), b"", T0 + 3_500);
    assert_eq!(label, "hit-local");
    let hit = hit.unwrap();
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, b"hello");
    assert!(hit.headers.contains(&("etag".into(), "1".into())));
    assert!(hit.headers.contains(&("age".into(), "3".into())));
    assert_eq!(e.metrics.value(metrics::MISS), 1);
    assert_eq!(e.metrics.value(metrics::HIT_LOCAL), 1);
    assert_eq!(e.metrics.value(metrics::STORES), 1);
    // Staleness: the hit served a 3.5 s old copy (the store is stamped at the response).
    assert_eq!(
        e.metrics.value(&format!("{}.count", metrics::HIT_AGE_MS)),
        1
    );
    let age = e.metrics.value(&format!("{}.sum", metrics::HIT_AGE_MS));
    assert!((3_000..=3_500).contains(&age), "{age}");
    // TTL: expired after 60 s.
    let (label, _, _) = e.exchange(&c, &r, &resp("200", &[]), b"again", T0 + 60_000);
    assert_eq!(label, "miss");
}

#[test]
fn vary_query_and_method_select_variants() {
    let c = cache("");
    let e = Env::default();
    e.exchange(
        &c,
        &req("/lake/t", &[("accept", "a/json")]),
        &resp("200", &[]),
        b"j",
        T0,
    );
    let label = |r: HeaderList| e.exchange(&c, &r, &resp("200", &[]), b"x", T0).0;
    assert_eq!(label(req("/lake/t", &[("accept", "a/json")])), "hit-local");
    assert_eq!(label(req("/lake/t", &[("accept", "text/html")])), "miss");
    assert_eq!(label(req("/lake/t?q=1", &[("accept", "a/json")])), "miss");
    let head = with_method(req("/lake/t", &[("accept", "a/json")]), "HEAD");
    assert_eq!(label(head), "miss");
}

#[test]
fn credentials_private_no_store_cookies_and_statuses_bypass() {
    let c = cache("");
    let e = Env::default();
    let label = |r: HeaderList, p: HeaderList| e.exchange(&c, &r, &p, b"x", T0).0;
    assert_eq!(
        label(
            req("/lake/a", &[("authorization", "Bearer t")]),
            resp("200", &[])
        ),
        "bypass"
    );
    assert_eq!(
        label(
            req("/lake/a", &[("x-nexus-client-id", "alice")]),
            resp("200", &[])
        ),
        "bypass"
    );
    assert_eq!(
        label(
            req("/lake/a", &[("cache-control", "no-store")]),
            resp("200", &[])
        ),
        "bypass"
    );
    assert_eq!(
        label(
            req("/lake/b", &[]),
            resp("200", &[("cache-control", "private")])
        ),
        "bypass"
    );
    assert_eq!(
        label(
            req("/lake/c", &[]),
            resp("200", &[("cache-control", "no-store")])
        ),
        "bypass"
    );
    assert_eq!(
        label(req("/lake/d", &[]), resp("200", &[("set-cookie", "s=1")])),
        "bypass"
    );
    assert_eq!(label(req("/lake/e", &[]), resp("503", &[])), "bypass");
    let post = with_method(req("/lake/f", &[]), "POST");
    assert_eq!(label(post, resp("200", &[])), "bypass");
    assert_eq!(e.metrics.value(metrics::STORES), 0);
    // None of them left anything behind.
    for p in ["/lake/a", "/lake/b", "/lake/c", "/lake/d", "/lake/e"] {
        assert_eq!(label(req(p, &[]), resp("200", &[])), "miss", "{p}");
    }
    // A path no rule matches is not touched at all.
    assert_eq!(label(req("/other", &[]), resp("200", &[])), "");
}

#[test]
fn request_no_cache_skips_the_lookup_but_refreshes_the_copy() {
    let c = cache("");
    let e = Env::default();
    e.exchange(&c, &req("/lake/a", &[]), &resp("200", &[]), b"old", T0);
    let (label, _, _) = e.exchange(
        &c,
        &req("/lake/a", &[("cache-control", "no-cache")]),
        &resp("200", &[]),
        b"new",
        T0,
    );
    assert_eq!(label, "miss");
    let (_, hit, _) = e.exchange(&c, &req("/lake/a", &[]), &HeaderList::new(), b"", T0);
    assert_eq!(hit.unwrap().body, b"new");
}

#[test]
fn per_client_policies_keep_one_copy_per_client() {
    let c = cache("");
    let e = Env::default();
    let alice = req(
        "/me/profile",
        &[
            ("x-nexus-client-id", "alice"),
            ("authorization", "Bearer a"),
        ],
    );
    let bob = req(
        "/me/profile",
        &[("x-nexus-client-id", "bob"), ("authorization", "Bearer b")],
    );
    e.exchange(&c, &alice, &resp("200", &[]), b"A", T0);
    assert_eq!(e.exchange(&c, &bob, &resp("200", &[]), b"B", T0).0, "miss");
    assert_eq!(
        e.exchange(&c, &alice, &HeaderList::new(), b"", T0)
            .1
            .unwrap()
            .body,
        b"A"
    );
    assert_eq!(
        e.exchange(&c, &bob, &HeaderList::new(), b"", T0)
            .1
            .unwrap()
            .body,
        b"B"
    );
    assert_eq!(
        e.exchange(&c, &req("/me/profile", &[]), &resp("200", &[]), b"?", T0)
            .0,
        "bypass"
    );
}

#[test]
fn bodies_over_max_object_bytes_are_served_not_stored() {
    let c = cache("");
    let e = Env::default();
    let (label, _, _) = e.exchange(
        &c,
        &req("/lake/big", &[]),
        &resp("200", &[]),
        b"0123456789A",
        T0,
    );
    assert_eq!(label, "miss", "the size is only known at the end");
    assert_eq!(e.metrics.value(metrics::STORES), 0);
    assert_eq!(
        e.exchange(&c, &req("/lake/big", &[]), &resp("200", &[]), b"x", T0)
            .0,
        "miss"
    );
    let big_len = resp("200", &[("content-length", "11")]);
    assert_eq!(
        e.exchange(&c, &req("/lake/cl", &[]), &big_len, b"0123456789A", T0)
            .0,
        "bypass"
    );
}

#[test]
fn l1_is_bounded() {
    let c = cache("");
    let e = Env::default();
    for i in 0..10 {
        e.exchange(
            &c,
            &req(&format!("/lake/{i}"), &[]),
            &resp("200", &[]),
            b"x",
            T0,
        );
    }
    let hits = (0..10)
        .filter(|i| {
            e.exchange(
                &c,
                &req(&format!("/lake/{i}"), &[]),
                &resp("200", &[]),
                b"x",
                T0,
            )
            .0 == "hit-local"
        })
        .count();
    // 4 live after the first pass; each miss of the second pass stores and evicts again.
    assert!(hits <= 4, "{hits}");
}

fn with_service() -> Cache {
    cache(r#", "service": {"cluster": "cache", "timeout_ms": 20}"#)
}

#[test]
fn l1_miss_asks_the_service_and_a_shared_hit_fills_l1() {
    let c = with_service();
    let e = Env::default();
    let r = req("/lake/s", &[]);
    let mut ex = Exchange::default();
    let Step::Lookup(msg) = c.on_request_headers(&mut ex, &r, true, &e.shared, &e.metrics, T0)
    else {
        panic!("expected a lookup");
    };
    assert_eq!(GetRequest::decode(msg.as_slice()).unwrap().key, ex.key());
    let stored = CachedResponse {
        status: 200,
        headers: vec![Header {
            name: "etag".into(),
            value: b"7".to_vec(),
        }],
        body: b"shared".to_vec(),
        stored_at_ms: T0 - 2_000,
        expires_at_ms: T0 + 60_000,
    };
    let answer = GetResponse {
        entry: Some(Entry {
            value: stored.encode_to_vec(),
            tags: vec![],
            timestamp_ms: T0 - 2_000,
            writer: "w2".into(),
            ttl_remaining_ms: 58_000,
        }),
    }
    .encode_to_vec();
    let Step::Respond(hit) =
        c.on_lookup_response(&mut ex, Ok(&answer), &e.shared, &e.metrics, &e.log, T0)
    else {
        panic!("expected a hit");
    };
    assert!(hit
        .headers
        .contains(&(CACHE_HEADER.into(), "hit-shared".into())));
    assert!(hit.headers.contains(&("age".into(), "2".into())));
    assert_eq!(hit.body, b"shared");
    let (label, _, _) = e.exchange(&c, &r, &HeaderList::new(), b"", T0 + 1);
    assert_eq!(label, "hit-local");
    assert_eq!(l1::version(&e.shared, ex.key()).unwrap().writer, "w2");
}

#[test]
fn service_miss_or_failure_goes_upstream_and_writes_through() {
    let c = with_service();
    let e = Env::default();
    for answer in [
        Ok(GetResponse { entry: None }.encode_to_vec()),
        Err("deadline".to_string()),
    ] {
        let shared = MemSharedData::default();
        let mut ex = Exchange::default();
        let r = req("/lake/w", &[]);
        assert!(matches!(
            c.on_request_headers(&mut ex, &r, true, &shared, &e.metrics, T0),
            Step::Lookup(_)
        ));
        let answer = answer.as_ref().map(|v| v.as_slice()).map_err(Clone::clone);
        assert_eq!(
            c.on_lookup_response(&mut ex, answer, &shared, &e.metrics, &e.log, T0),
            Step::Continue
        );
        let h = c.on_response_headers(
            &mut ex,
            &resp("200", &[("x-nexus-cache-tags", "t1,t2")]),
            false,
            &shared,
            &e.metrics,
            T0,
        );
        assert_eq!(h.headers, [(CACHE_HEADER.to_string(), "miss".to_string())]);
        let end = c.on_response_body(&mut ex, b"body", true, &shared, &e.metrics, T0);
        let put = PutRequest::decode(end.put.unwrap().as_slice()).unwrap();
        assert_eq!(put.key, ex.key());
        assert_eq!(put.tags, ["t1", "t2"]);
        assert_eq!(
            (put.ttl_ms, put.timestamp_ms, put.writer.as_str()),
            (60_000, T0, "w1")
        );
        assert_eq!(
            CachedResponse::decode(put.value.as_slice()).unwrap().body,
            b"body"
        );
        assert!(l1::get(&shared, ex.key(), T0).is_some());
    }
    assert_eq!(e.metrics.value(metrics::SERVICE_ERRORS), 1);
}

#[test]
fn a_worker_without_a_live_stream_leaves_the_l1_alone() {
    let c = with_service();
    let e = Env::default();
    let r = req("/lake/n", &[]);
    let mut ex = Exchange::default();
    assert!(matches!(
        c.on_request_headers(&mut ex, &r, false, &e.shared, &e.metrics, T0),
        Step::Lookup(_)
    ));
    c.on_lookup_response(&mut ex, Err("x".into()), &e.shared, &e.metrics, &e.log, T0);
    c.on_response_headers(&mut ex, &resp("200", &[]), false, &e.shared, &e.metrics, T0);
    let end = c.on_response_body(&mut ex, b"b", true, &e.shared, &e.metrics, T0);
    assert!(end.put.is_some(), "still written through");
    assert!(l1::get(&e.shared, ex.key(), T0).is_none());
}

#[test]
fn a_flush_during_the_upstream_fetch_keeps_the_response_out_of_l1() {
    let c = cache("");
    let e = Env::default();
    let mut ex = Exchange::default();
    let r = req("/lake/f", &[]);
    c.on_request_headers(&mut ex, &r, true, &e.shared, &e.metrics, T0);
    coherency::flush(&e.shared, &e.metrics);
    c.on_response_headers(&mut ex, &resp("200", &[]), false, &e.shared, &e.metrics, T0);
    c.on_response_body(&mut ex, b"b", true, &e.shared, &e.metrics, T0);
    assert_eq!(e.exchange(&c, &r, &resp("200", &[]), b"b", T0).0, "miss");
}

#[test]
fn an_invalidation_during_the_upstream_fetch_keeps_the_response_out_of_l1() {
    use nexus_proto::cache::{event, Event, Hello, Invalidation};
    let c = with_service();
    let e = Env::default();
    let mut sub = c.subscription("t").unwrap();
    sub.on_tick(0);
    sub.on_opened(Some(1), 0, &e.shared, &e.metrics);
    let ev = |k| Event { kind: Some(k) }.encode_to_vec();
    sub.on_message(
        1,
        &ev(event::Kind::Hello(Hello::default())),
        &e.shared,
        &e.metrics,
        &e.log,
    );

    let r = req("/lake/i", &[]);
    let mut ex = Exchange::default();
    c.on_request_headers(&mut ex, &r, sub.live(), &e.shared, &e.metrics, T0);
    c.on_lookup_response(&mut ex, Err("x".into()), &e.shared, &e.metrics, &e.log, T0);
    // The service invalidates the key while the upstream answers (the old value).
    let inv = Invalidation {
        keys: vec![ex.key().to_string()],
        ..Default::default()
    };
    sub.on_message(
        1,
        &ev(event::Kind::Invalidation(inv)),
        &e.shared,
        &e.metrics,
        &e.log,
    );
    c.on_response_headers(&mut ex, &resp("200", &[]), false, &e.shared, &e.metrics, T0);
    let end = c.on_response_body(&mut ex, b"old", true, &e.shared, &e.metrics, T0);
    assert!(end.put.is_some());
    assert!(
        l1::get(&e.shared, ex.key(), T0).is_none(),
        "possibly stale: not stored"
    );
}

#[test]
fn the_put_is_stamped_with_when_the_fetch_started_not_when_it_completed() {
    use nexus_filter_core::testing::FixedClock;
    use nexus_filter_core::Clock;
    let c = with_service();
    let e = Env::default();
    let clock = FixedClock(std::cell::Cell::new(T0 * 1_000_000));
    let now = || clock.now_unix_nanos() / 1_000_000;
    let advance = |ms: u64| clock.0.set(clock.0.get() + ms * 1_000_000);
    let miss = GetResponse { entry: None }.encode_to_vec();

    // A shared lookup first: the fetch starts when its miss resumes the request.
    let mut ex = Exchange::default();
    let r = req("/lake/slow", &[]);
    assert!(matches!(
        c.on_request_headers(&mut ex, &r, true, &e.shared, &e.metrics, now()),
        Step::Lookup(_)
    ));
    advance(15);
    let started = now();
    assert_eq!(
        c.on_lookup_response(&mut ex, Ok(&miss), &e.shared, &e.metrics, &e.log, now()),
        Step::Continue
    );
    // A slow upstream: headers after 2.5 s, the body after another 0.5 s.
    advance(2_500);
    c.on_response_headers(
        &mut ex,
        &resp("200", &[]),
        false,
        &e.shared,
        &e.metrics,
        now(),
    );
    advance(500);
    let end = c.on_response_body(&mut ex, b"body", true, &e.shared, &e.metrics, now());
    let put = PutRequest::decode(end.put.unwrap().as_slice()).unwrap();
    assert_eq!(put.timestamp_ms, started, "stamped when the fetch started");
    assert_eq!(started, T0 + 15);
    // The L1 copy carries the same version as the shared one.
    assert_eq!(
        l1::version(&e.shared, ex.key()).unwrap(),
        l1::Version {
            timestamp_ms: started,
            writer: "w1".into()
        }
    );
    // Age and expiry still count from when the response was complete.
    let stored = CachedResponse::decode(put.value.as_slice()).unwrap();
    assert_eq!(stored.stored_at_ms, now());
    assert_eq!(stored.expires_at_ms, now() + 60_000);

    // No lookup (`no-cache`): the fetch starts with the request.
    advance(1_000);
    let mut ex = Exchange::default();
    let started = now();
    let r = req("/lake/slow", &[("cache-control", "no-cache")]);
    assert_eq!(
        c.on_request_headers(&mut ex, &r, true, &e.shared, &e.metrics, now()),
        Step::Continue
    );
    advance(700);
    // A response without a body completes with its headers.
    let step = c.on_response_headers(
        &mut ex,
        &resp("200", &[]),
        true,
        &e.shared,
        &e.metrics,
        now(),
    );
    let put = PutRequest::decode(step.put.unwrap().as_slice()).unwrap();
    assert_eq!(put.timestamp_ms, started);
    assert_eq!(
        l1::version(&e.shared, ex.key()).unwrap().timestamp_ms,
        started
    );
}
