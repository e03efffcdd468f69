use nexus_filter_core::testing::{MemHeaders, MemLog, MemMetrics};
use nexus_filter_core::{HeaderMap, IdGenerator};

use crate::graphql::HEADER_OPERATION;
use crate::{BodyStep, Router, Step, HEADER_RULE, HEADER_UPSTREAM};

const CONFIG: &str = r#"{"rules": [
  {"name": "graphql", "category": "data_operations", "match": {"path": {"exact": "/graphql"}},
   "graphql": {"fields": {"datasets": "lake", "streams": "stream"}, "max_depth": 2}}
]}"#;

fn headers_step(router: &Router, h: &mut MemHeaders, eos: bool) -> Step {
    let (m, log) = (MemMetrics::default(), MemLog::default());
    router.on_request_headers_step(h, &mut IdGenerator::new(1), &m, &log, eos)
}

fn post() -> MemHeaders {
    MemHeaders::new(&[
        (":method", "POST"),
        (":path", "/graphql"),
        ("x-nexus-graphql-operation", "spoof"),
    ])
}

#[test]
fn a_post_waits_for_its_body_then_goes_to_the_owner_of_its_fields() {
    let router = Router::from_json(CONFIG.as_bytes()).unwrap();
    let mut h = post();
    let Step::ReadBody(wait) = headers_step(&router, &mut h, false) else {
        panic!("a GraphQL POST waits for its body");
    };
    assert_eq!(
        h.get(HEADER_OPERATION),
        None,
        "client-sent operation header is stripped"
    );
    assert_eq!(h.get(HEADER_RULE).as_deref(), Some("graphql"));
    assert!(router.graphql_body_too_large(wait, 64 * 1024).is_none());
    assert_eq!(
        router
            .graphql_body_too_large(wait, 64 * 1024 + 1)
            .map(|r| r.status),
        Some(413)
    );
    let m = MemMetrics::default();
    let body = br#"{"query": "query Streams { streams { id } }"}"#;
    let step = router.on_graphql_body(wait, body, &mut h, &m, &MemLog::default());
    assert!(matches!(step, BodyStep::Continue), "{step:?}");
    assert_eq!(h.get(HEADER_UPSTREAM).as_deref(), Some("stream"));
    assert_eq!(h.get(HEADER_OPERATION).as_deref(), Some("Streams"));
    assert_eq!(m.value("nexus_router.graphql.routed"), 1);
}

#[test]
fn an_over_deep_body_is_refused_and_counted() {
    let router = Router::from_json(CONFIG.as_bytes()).unwrap();
    let mut h = post();
    let Step::ReadBody(wait) = headers_step(&router, &mut h, false) else {
        panic!("a GraphQL POST waits for its body");
    };
    let m = MemMetrics::default();
    let body = br#"{"query": "{ datasets { owner { name } } }"}"#;
    let BodyStep::Respond(r) = router.on_graphql_body(wait, body, &mut h, &m, &MemLog::default())
    else {
        panic!("refused");
    };
    assert_eq!(r.status, 400);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"errors":[{"extensions":{"code":"MAX_DEPTH_EXCEEDED"},"message":"query depth exceeds the maximum of 2 (field \"name\" is at depth 3)"}]}"#
    );
    assert_eq!(
        m.value("nexus_router.graphql.refused.max_depth_exceeded"),
        1
    );
}

#[test]
fn a_get_is_decided_at_its_headers_and_other_methods_refused() {
    let router = Router::from_json(CONFIG.as_bytes()).unwrap();
    let mut h = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/graphql?query=%7Bdatasets%7Bid%7D%7D"),
    ]);
    assert!(matches!(
        headers_step(&router, &mut h, true),
        Step::Continue
    ));
    assert_eq!(h.get(HEADER_UPSTREAM).as_deref(), Some("lake"));
    assert_eq!(h.get(HEADER_OPERATION).as_deref(), Some("anonymous"));
    let mut h = MemHeaders::new(&[(":method", "PUT"), (":path", "/graphql")]);
    let Step::Respond(r) = headers_step(&router, &mut h, false) else {
        panic!("PUT is refused");
    };
    assert_eq!(r.status, 405);
    let mut h = post();
    let Step::Respond(r) = headers_step(&router, &mut h, true) else {
        panic!("a POST without body is refused");
    };
    assert_eq!(r.status, 400);
}
