//! nexus-router's GraphQL rules in real Envoy: each query reaches the upstream owning its root
//! fields (the upstreams' own records show it), refusals come back GraphQL-shaped with their
//! exact bodies and reach no upstream, and persisted queries are served by hash.

use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::upstream::Upstream;
use sha2::{Digest, Sha256};

const ROUTER_CONFIG: &str = r#"{"rules": [
  {"name": "graphql", "category": "data_operations", "match": {"path": {"exact": "/graphql"}},
   "graphql": {"fields": {"datasets": "lake", "streams": "stream"},
               "max_depth": 3, "max_cost": 100, "max_body_bytes": 4096}}
]}"#;

struct Setup {
    lake: Upstream,
    stream: Upstream,
    envoy: Envoy,
}

fn setup() -> Setup {
    let lake = Upstream::start("lake").unwrap();
    let stream = Upstream::start("stream").unwrap();
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-router".into(),
            module: nexus_tests::filter_module("nexus_router").unwrap(),
            config: ROUTER_CONFIG.into(),
        }],
        upstreams: vec![
            ("lake".into(), lake.port()),
            ("stream".into(), stream.port()),
        ],
        ..Default::default()
    })
    .unwrap();
    Setup {
        lake,
        stream,
        envoy,
    }
}

fn post(s: &Setup, body: &str) -> client::Response {
    let headers = [("content-type", "application/json")];
    client::request(s.envoy.port, "POST", "/graphql", &headers, body.as_bytes())
        .unwrap_or_else(|e| panic!("{e}\n{}", s.envoy.log()))
}

#[test]
fn each_query_reaches_the_upstream_owning_its_root_fields() {
    let s = setup();
    let lake_query = r#"{"query": "query Tables { datasets(first: 5) { id name } }"}"#;
    let resp = post(&s, lake_query);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), s.envoy.log());
    assert_eq!(resp.json().unwrap()["upstream"], "lake");
    let resp = post(&s, r#"{"query": "query Live { streams { id } }"}"#);
    assert_eq!(resp.json().unwrap()["upstream"], "stream");

    let lake = s.lake.requests();
    let stream = s.stream.requests();
    assert_eq!((lake.len(), stream.len()), (1, 1));
    assert_eq!(lake[0].header("x-nexus-graphql-operation"), Some("Tables"));
    assert_eq!(lake[0].header("x-nexus-upstream"), Some("lake"));
    assert_eq!(
        lake[0].body,
        lake_query.as_bytes(),
        "the body goes on unchanged"
    );
    assert_eq!(stream[0].header("x-nexus-graphql-operation"), Some("Live"));
}

#[test]
fn a_query_spanning_two_owners_is_refused_and_reaches_no_upstream() {
    let s = setup();
    let resp = post(&s, r#"{"query": "{ datasets { id } streams { id } }"}"#);
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.text(),
        r#"{"errors":[{"extensions":{"code":"UNROUTABLE_OPERATION"},"message":"root fields \"datasets\" (lake) and \"streams\" (stream) belong to different upstreams: send them as separate operations"}]}"#
    );
    assert!(s.lake.requests().is_empty() && s.stream.requests().is_empty());
}

#[test]
fn a_malformed_body_and_an_over_deep_query_get_their_exact_responses() {
    let s = setup();
    let cases = [
        (
            "{\"query\": ",
            400,
            r#"{"errors":[{"extensions":{"code":"BAD_REQUEST"},"message":"body is not JSON: EOF while parsing a value at line 1 column 10"}]}"#,
        ),
        (
            r#"{"query": "{ datasets { id "}"#,
            400,
            r#"{"errors":[{"extensions":{"code":"GRAPHQL_PARSE_FAILED"},"locations":[{"column":17,"line":1}],"message":"Syntax Error: expected a name, found end of document"}]}"#,
        ),
        (
            r#"{"query": "{ datasets { owner { team { name } } } }"}"#,
            400,
            r#"{"errors":[{"extensions":{"code":"MAX_DEPTH_EXCEEDED"},"message":"query depth exceeds the maximum of 3 (field \"name\" is at depth 4)"}]}"#,
        ),
        (
            r#"{"query": "{ datasets(first: 60) { id name } }"}"#,
            400,
            r#"{"errors":[{"extensions":{"code":"MAX_COST_EXCEEDED"},"message":"query cost exceeds the maximum of 100"}]}"#,
        ),
    ];
    for (body, status, expected) in cases {
        let resp = post(&s, body);
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.text(), expected, "{body}");
    }
    let big = format!(
        r#"{{"query": "{{ datasets {{ id }} }}", "pad": "{}"}}"#,
        "x".repeat(5000)
    );
    let resp = post(&s, &big);
    assert_eq!(resp.status, 413);
    assert_eq!(
        resp.text(),
        r#"{"errors":[{"extensions":{"code":"REQUEST_TOO_LARGE"},"message":"request body exceeds 4096 bytes"}]}"#
    );
    assert!(s.lake.requests().is_empty() && s.stream.requests().is_empty());
}

#[test]
fn a_persisted_query_is_refused_until_registered_then_served_by_hash() {
    let s = setup();
    let query = "{ streams { id } }";
    let hash: String = Sha256::digest(query)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let by_hash = format!(
        r#"{{"extensions": {{"persistedQuery": {{"version": 1, "sha256Hash": "{hash}"}}}}}}"#
    );
    let resp = post(&s, &by_hash);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.text(),
        r#"{"errors":[{"extensions":{"code":"PERSISTED_QUERY_NOT_FOUND"},"message":"PersistedQueryNotFound"}]}"#
    );
    let register = format!(
        r#"{{"query": "{query}", "extensions": {{"persistedQuery": {{"version": 1, "sha256Hash": "{hash}"}}}}}}"#
    );
    assert_eq!(post(&s, &register).status, 200);
    let resp = post(&s, &by_hash);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["upstream"], "stream");
    let got = s.stream.requests();
    assert_eq!(
        got.len(),
        2,
        "the first hash-only request reached no upstream"
    );
    let forwarded: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(
        forwarded["query"], query,
        "the upstream gets the query, not only its hash"
    );
    assert_eq!(
        got[1].header("content-length"),
        Some(got[1].body.len().to_string().as_str())
    );
}
