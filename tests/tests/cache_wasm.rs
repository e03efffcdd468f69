//! The real nexus_cache.wasm under the strict wasmtime host: L1 hits, the `Get` / `Put` calls
//! to a simulated coherency service, the root context's `Subscribe` stream (events, breaks,
//! reconnects), bypasses, and fuel per callback on the hit and miss paths.

use std::time::Duration;

use nexus_proto::cache::{
    event, CachedResponse, Entry, Event, Flush, GetRequest, GetResponse, Hello, Invalidation,
    PutRequest, SubscribeRequest, Update,
};
use prost::Message;
use proxy_wasm_test_host::{Action, Host, ROOT_CONTEXT_ID};

const RULES: &str = r#""rules": [{"name": "lake", "match": {"path": {"prefix": "/lake/"}},
    "policy": {"ttl": 60, "vary": ["accept"]}}]"#;

fn host(extra: &str) -> Host {
    let config = format!(r#"{{{RULES}{extra}}}"#);
    let mut host = Host::builder()
        .plugin_config(config.into_bytes())
        .allow_cluster("nexus-cache")
        .build_from_file(nexus_tests::filter_module("nexus_cache").unwrap())
        .unwrap();
    assert!(host.start().unwrap());
    host
}

const SERVICE: &str =
    r#", "service": {"cluster": "nexus-cache", "timeout_ms": 40}, "writer": "proxy-a""#;

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":path", "/lake/tables?limit=2"),
    (":authority", "api.example"),
    ("accept", "application/json"),
];

fn fuel(host: &Host, callback: &str) -> u64 {
    host.fuel_log()
        .iter()
        .rev()
        .find(|(n, _)| n == callback)
        .map(|(_, f)| *f)
        .unwrap_or(0)
}

/// A miss served by "upstream": response headers, then the body in two chunks.
fn upstream_response(host: &mut Host, ctx: u32, extra: &[(&str, &str)], body: &[u8]) -> String {
    let mut http = host.http(ctx).unwrap();
    let mut headers = vec![(":status", "200"), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    assert_eq!(
        http.response_headers(&headers, false).unwrap(),
        Action::Continue
    );
    let (a, b) = body.split_at(body.len() / 2);
    assert_eq!(http.response_body(a, false).unwrap(), Action::Continue);
    assert_eq!(http.response_body(b, true).unwrap(), Action::Continue);
    http.response_header("x-nexus-cache").unwrap_or_default()
}

fn stream_token(host: &Host) -> u32 {
    host.grpc_calls()
        .iter()
        .rev()
        .find(|c| c.method == "Subscribe")
        .map(|c| c.token)
        .unwrap()
}

fn send_event(host: &mut Host, kind: event::Kind) {
    let token = stream_token(host);
    host.grpc_receive(token, &Event { kind: Some(kind) }.encode_to_vec())
        .unwrap();
}

/// Starts a host with the service, ticks the stream open and says Hello.
fn subscribed() -> Host {
    let mut host = host(SERVICE);
    assert_eq!(host.tick_period(), Some(Duration::from_millis(100)));
    host.tick().unwrap();
    let sub = host.grpc_calls().pop().unwrap();
    assert_eq!(
        (sub.service.as_str(), sub.method.as_str()),
        ("nexus.cache.v1.Cache", "Subscribe")
    );
    assert!(sub.streaming && sub.end_stream_sent);
    assert_eq!(sub.context_id, ROOT_CONTEXT_ID);
    let req = SubscribeRequest::decode(sub.messages[0].as_slice()).unwrap();
    assert_eq!(req.subscriber, "proxy-a");
    send_event(
        &mut host,
        event::Kind::Hello(Hello {
            replica: "r1".into(),
        }),
    );
    host
}

#[test]
fn l1_only_second_get_is_a_local_hit() {
    let mut host = host("");
    let mut http = host.http_context().unwrap();
    let ctx = http.id();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Continue);
    let miss_req_fuel = fuel(&host, "proxy_on_request_headers");
    let label = upstream_response(
        &mut host,
        ctx,
        &[("etag", "\"v1\"")],
        br#"{"tables":[1,2]}"#,
    );
    assert_eq!(label, "miss");
    let store_fuel = fuel(&host, "proxy_on_response_body");

    host.advance_time(Duration::from_secs(2));
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    let hit = http.local_response().unwrap();
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, br#"{"tables":[1,2]}"#);
    let header = |n: &str| {
        hit.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("x-nexus-cache"), Some("hit-local"));
    assert_eq!(header("etag"), Some("\"v1\""));
    assert_eq!(header("age"), Some("2"));
    let hit_fuel = fuel(&host, "proxy_on_request_headers");
    assert_eq!(host.metric("nexus_cache.hit.local"), Some(1));
    assert_eq!(host.metric("nexus_cache.miss"), Some(1));
    assert_eq!(host.metric("nexus_cache.store"), Some(1));
    // Staleness histogram: one sample, the 2 s old copy.
    assert_eq!(host.histogram("nexus_cache.hit_age_ms"), Some(vec![2_000]));
    println!(
        "nexus-cache fuel: hit-local on_request_headers {hit_fuel}; miss on_request_headers \
         {miss_req_fuel}, storing on_response_body {store_fuel}"
    );
}

#[test]
fn private_no_store_and_credentials_bypass() {
    let mut host = host("");
    for (req_extra, resp_extra) in [
        (Some(("authorization", "Bearer t")), None),
        (Some(("cache-control", "no-store")), None),
        (None, Some(("cache-control", "private"))),
        (None, Some(("cache-control", "no-store"))),
    ] {
        let mut headers = GET.to_vec();
        headers.extend(req_extra);
        let mut http = host.http_context().unwrap();
        let ctx = http.id();
        assert_eq!(
            http.request_headers(&headers, true).unwrap(),
            Action::Continue
        );
        let label = upstream_response(
            &mut host,
            ctx,
            &resp_extra.into_iter().collect::<Vec<_>>(),
            b"x",
        );
        assert_eq!(label, "bypass", "{req_extra:?} {resp_extra:?}");
    }
    assert_eq!(host.metric("nexus_cache.store"), None);
    let mut http = host.http_context().unwrap();
    assert_eq!(
        http.request_headers(&GET, true).unwrap(),
        Action::Continue,
        "nothing was stored"
    );
}

#[test]
fn service_miss_writes_through_then_hits_locally_until_invalidated() {
    let mut host = subscribed();
    let mut http = host.http_context().unwrap();
    let ctx = http.id();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    let get = http.grpc_calls().pop().unwrap();
    assert_eq!(get.method, "Get");
    assert_eq!(get.timeout, Some(Duration::from_millis(40)));
    let key = GetRequest::decode(get.messages[0].as_slice()).unwrap().key;
    assert!(key.starts_with("/lake/tables?limit=2#"), "{key}");
    http.grpc_receive(get.token, &GetResponse { entry: None }.encode_to_vec())
        .unwrap();
    let get_answer_fuel = fuel(&host, "proxy_on_grpc_receive");
    assert!(host.http(ctx).unwrap().request_resumed());
    let label = upstream_response(&mut host, ctx, &[("x-nexus-cache-tags", "tables")], b"rows");
    assert_eq!(label, "miss");
    let put_fuel = fuel(&host, "proxy_on_response_body");

    let put = host
        .grpc_calls()
        .into_iter()
        .find(|c| c.method == "Put")
        .unwrap();
    assert_eq!(
        put.context_id, ROOT_CONTEXT_ID,
        "owned by the root: survives the request"
    );
    let put = PutRequest::decode(put.messages[0].as_slice()).unwrap();
    assert_eq!(
        (put.key.as_str(), put.writer.as_str(), put.ttl_ms),
        (key.as_str(), "proxy-a", 60_000)
    );
    assert_eq!(put.tags, ["tables"]);
    assert_eq!(
        CachedResponse::decode(put.value.as_slice()).unwrap().body,
        b"rows"
    );

    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    assert_eq!(
        http.local_response()
            .unwrap()
            .headers
            .iter()
            .find(|(k, _)| k == "x-nexus-cache")
            .unwrap()
            .1,
        "hit-local"
    );
    let calls = host.grpc_calls().len();

    send_event(
        &mut host,
        event::Kind::Invalidation(Invalidation {
            keys: vec![key.clone()],
            ..Default::default()
        }),
    );
    let event_fuel = fuel(&host, "proxy_on_grpc_receive");
    assert_eq!(host.metric("nexus_cache.invalidations"), Some(1));
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    assert!(
        http.local_response().is_none(),
        "invalidated: asks the service again"
    );
    assert_eq!(host.grpc_calls().len(), calls + 1);
    println!(
        "nexus-cache fuel: Get answer (miss) {get_answer_fuel}; storing + Put on_response_body \
         {put_fuel}; Invalidation event {event_fuel}"
    );
}

#[test]
fn a_shared_hit_answers_and_fills_l1() {
    let mut host = subscribed();
    let mut http = host.http_context().unwrap();
    http.request_headers(&GET, true).unwrap();
    let get = http.grpc_calls().pop().unwrap();
    let now_ms = host.time_nanos() / 1_000_000;
    let stored = CachedResponse {
        status: 404,
        headers: vec![nexus_proto::cache::Header {
            name: "content-type".into(),
            value: b"application/json".to_vec(),
        }],
        body: b"{}".to_vec(),
        stored_at_ms: now_ms - 5_000,
        expires_at_ms: now_ms + 55_000,
    };
    let answer = GetResponse {
        entry: Some(Entry {
            value: stored.encode_to_vec(),
            tags: vec![],
            timestamp_ms: now_ms - 5_000,
            writer: "proxy-b".into(),
            ttl_remaining_ms: 55_000,
        }),
    };
    let mut http = host.http(get.context_id).unwrap();
    http.grpc_receive(get.token, &answer.encode_to_vec())
        .unwrap();
    let hit_shared_fuel = fuel(&host, "proxy_on_grpc_receive");
    let resp = host.http(get.context_id).unwrap().local_response().unwrap();
    assert_eq!(resp.status, 404);
    assert!(resp
        .headers
        .contains(&("x-nexus-cache".into(), "hit-shared".into())));
    assert!(resp.headers.contains(&("age".into(), "5".into())));
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    assert!(http
        .local_response()
        .unwrap()
        .headers
        .contains(&("x-nexus-cache".into(), "hit-local".into())));
    assert_eq!(host.metric("nexus_cache.hit.shared"), Some(1));
    println!("nexus-cache fuel: hit-shared on_grpc_receive {hit_shared_fuel}");
}

#[test]
fn service_failures_are_misses_never_errors() {
    let mut host = subscribed();
    let mut http = host.http_context().unwrap();
    let ctx = http.id();
    http.request_headers(&GET, true).unwrap();
    let token = http.grpc_calls().pop().unwrap().token;
    http.grpc_close(token, 4, "deadline exceeded").unwrap();
    let http = host.http(ctx).unwrap();
    assert!(http.request_resumed());
    assert!(http.local_response().is_none());
    assert_eq!(upstream_response(&mut host, ctx, &[], b"ok"), "miss");
    assert_eq!(host.metric("nexus_cache.service.errors"), Some(1));
}

#[test]
fn a_broken_stream_flushes_once_stops_using_l1_and_reconnects_with_backoff() {
    let mut host = subscribed();
    // Fill L1 through a miss.
    let mut http = host.http_context().unwrap();
    let ctx = http.id();
    http.request_headers(&GET, true).unwrap();
    let token = http.grpc_calls().pop().unwrap().token;
    http.grpc_receive(token, &GetResponse { entry: None }.encode_to_vec())
        .unwrap();
    upstream_response(&mut host, ctx, &[], b"v1");

    let stream = stream_token(&host);
    host.grpc_close(stream, 14, "upstream reset").unwrap();
    let close_fuel = fuel(&host, "proxy_on_grpc_close");
    assert_eq!(host.metric("nexus_cache.flushes"), Some(1));
    // Not live: the L1 is neither read nor written; requests go to the service.
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    assert!(http.local_response().is_none());

    // Backoff: no reconnect before 500 ms.
    let before = host
        .grpc_calls()
        .iter()
        .filter(|c| c.method == "Subscribe")
        .count();
    host.advance_time(Duration::from_millis(400));
    host.tick().unwrap();
    assert_eq!(
        host.grpc_calls()
            .iter()
            .filter(|c| c.method == "Subscribe")
            .count(),
        before
    );
    host.advance_time(Duration::from_millis(100));
    host.tick().unwrap();
    assert_eq!(
        host.grpc_calls()
            .iter()
            .filter(|c| c.method == "Subscribe")
            .count(),
        before + 1
    );
    assert_eq!(host.metric("nexus_cache.stream.reconnects"), Some(1));
    // The new stream fails before its Hello: no second flush.
    host.grpc_close(stream_token(&host), 14, "again").unwrap();
    assert_eq!(host.metric("nexus_cache.flushes"), Some(1));
    host.advance_time(Duration::from_millis(1000));
    host.tick().unwrap();
    send_event(&mut host, event::Kind::Hello(Hello::default()));
    // Live again, with an empty L1: a miss asks the service.
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    assert!(http.local_response().is_none());
    println!("nexus-cache fuel: stream close (flush) {close_fuel}");
}

/// Fills the L1 through a service miss; returns the key.
fn fill(host: &mut Host) -> String {
    let mut http = host.http_context().unwrap();
    let ctx = http.id();
    http.request_headers(&GET, true).unwrap();
    let get = http.grpc_calls().pop().unwrap();
    let key = GetRequest::decode(get.messages[0].as_slice()).unwrap().key;
    http.grpc_receive(get.token, &GetResponse { entry: None }.encode_to_vec())
        .unwrap();
    upstream_response(host, ctx, &[], b"v1");
    key
}

fn label_of_next_get(host: &mut Host) -> Option<String> {
    let mut http = host.http_context().unwrap();
    http.request_headers(&GET, true).unwrap();
    http.local_response().and_then(|r| {
        r.headers
            .into_iter()
            .find(|(k, _)| k == "x-nexus-cache")
            .map(|(_, v)| v)
    })
}

#[test]
fn update_events_drop_older_copies_and_flush_events_drop_everything() {
    let mut host = subscribed();
    let key = fill(&mut host);
    let put = host
        .grpc_calls()
        .into_iter()
        .find(|c| c.method == "Put")
        .unwrap();
    let stored = PutRequest::decode(put.messages[0].as_slice()).unwrap();
    let update = |ts: u64, writer: &str| {
        event::Kind::Update(Update {
            key: key.clone(),
            timestamp_ms: ts,
            writer: writer.into(),
        })
    };
    // Our own write echoed back, and an older write elsewhere: the copy stays.
    send_event(&mut host, update(stored.timestamp_ms, "proxy-a"));
    send_event(&mut host, update(stored.timestamp_ms - 1, "proxy-b"));
    assert_eq!(label_of_next_get(&mut host).as_deref(), Some("hit-local"));
    // A newer write elsewhere: dropped.
    send_event(&mut host, update(stored.timestamp_ms + 1, "proxy-b"));
    let update_fuel = fuel(&host, "proxy_on_grpc_receive");
    assert_eq!(label_of_next_get(&mut host), None, "asks the service");

    fill(&mut host);
    assert_eq!(label_of_next_get(&mut host).as_deref(), Some("hit-local"));
    send_event(
        &mut host,
        event::Kind::Flush(Flush {
            reason: "redis reconnected".into(),
        }),
    );
    assert_eq!(host.metric("nexus_cache.flushes"), Some(1));
    assert_eq!(label_of_next_get(&mut host), None);
    assert!(host.logged("service asked for a flush (redis reconnected)"));
    println!("nexus-cache fuel: Update event (drop) {update_fuel}");
}

#[test]
fn invalid_configuration_is_refused_with_paths() {
    let mut host = Host::builder()
        .plugin_config(
            br#"{"l1_max_entries": 0, "rules": [{"name": "x", "policy": {"ttl": 0}}]}"#.to_vec(),
        )
        .build_from_file(nexus_tests::filter_module("nexus_cache").unwrap())
        .unwrap();
    assert!(!host.start().unwrap());
    assert!(host.logged("$.l1_max_entries"));
    assert!(host.logged("$.rules[0].policy.ttl"));
}

#[test]
fn the_put_is_stamped_when_the_upstream_fetch_started_not_when_it_completed() {
    let mut host = subscribed();
    let mut http = host.http_context().unwrap();
    let ctx = http.id();
    assert_eq!(http.request_headers(&GET, true).unwrap(), Action::Pause);
    let get = http.grpc_calls().pop().unwrap();
    // The Get takes 7 ms; its miss resumes the request: the fetch starts then.
    host.advance_time(Duration::from_millis(7));
    let started_ms = host.time_nanos() / 1_000_000;
    host.http(ctx)
        .unwrap()
        .grpc_receive(get.token, &GetResponse { entry: None }.encode_to_vec())
        .unwrap();
    // A slow upstream: the response completes 3 s later (an invalidation in between must win).
    host.advance_time(Duration::from_secs(3));
    assert_eq!(upstream_response(&mut host, ctx, &[], b"rows"), "miss");
    let put = host
        .grpc_calls()
        .into_iter()
        .find(|c| c.method == "Put")
        .unwrap();
    let put = PutRequest::decode(put.messages[0].as_slice()).unwrap();
    assert_eq!(put.timestamp_ms, started_ms);
    // Age and expiry count from the complete response.
    let stored = CachedResponse::decode(put.value.as_slice()).unwrap();
    assert_eq!(stored.stored_at_ms, started_ms + 3_000);
}
