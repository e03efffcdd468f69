use nexus_config::router_graphql::GraphqlRule;
use serde_json::json;

use super::parse::{parse, Selection, NESTING_LIMIT};
use super::*;

fn plan(rule: serde_json::Value) -> GraphqlPlan {
    let rule: GraphqlRule = serde_json::from_value(rule).unwrap();
    GraphqlPlan::new(&rule)
}

fn federated() -> GraphqlPlan {
    plan(json!({
        "fields": {"datasets": "lake", "streams": "stream"},
        "operations": {"Health": "cortex"},
        "max_depth": 3,
        "max_cost": 50,
    }))
}

fn post(plan: &GraphqlPlan, body: serde_json::Value) -> Result<Routed, GraphqlError> {
    plan.decide_body(body.to_string().as_bytes(), "rule-upstream")
}

fn query(plan: &GraphqlPlan, q: &str) -> Result<Routed, GraphqlError> {
    post(plan, json!({ "query": q }))
}

#[test]
fn parses_operations_fragments_variables_directives_and_values() {
    let doc = parse(
        r#"# comment
        query Q($n: Int! = 3, $ids: [ID!]) @cached {
          a: datasets(first: $n, filter: {name: "x", tags: ["a" "b"]}, f: 1.5e3, on: true) {
            id @include(if: $flag) ...F ... on Dataset { size }
            ... @skip(if: false) { owner }
          }
        }
        fragment F on Dataset { name desc: description(format: """block "quoted" \""" """) }
        mutation { touch(id: -1) }"#,
    )
    .unwrap();
    assert_eq!(doc.operations.len(), 2);
    assert_eq!(doc.operations[0].name, Some("Q"));
    assert_eq!(doc.operations[1].kind, parse::OpKind::Mutation);
    assert_eq!(doc.fragments[0].name, "F");
    let Selection::Field(field) = &doc.operations[0].selections[0] else {
        panic!("field expected");
    };
    assert_eq!(field.name, "datasets", "aliases are not names");
    assert_eq!(field.args[0], ("first", parse::Value::Variable("n")));
    assert_eq!(field.selections.len(), 4);
}

#[test]
fn syntax_errors_name_the_problem_and_its_line_and_column() {
    let cases = [
        (
            "{ datasets { id }",
            "expected a name, found end of document",
            1,
            18,
        ),
        (
            "query {\n  datasets(first: ) { id }\n}",
            "expected a value, found \")\"",
            2,
            19,
        ),
        ("{ a(x: \"open) }", "unterminated string", 1, 8),
        ("{ a(x: 01) }", "invalid number", 1, 8),
        ("{ a }\n  % ", "unexpected character '%'", 2, 3),
        (
            "",
            "expected a query, mutation, subscription or fragment, found end of document",
            1,
            1,
        ),
        (
            "type Q { a: Int }",
            "expected a query, mutation, subscription or fragment, found name \"type\"",
            1,
            1,
        ),
    ];
    for (src, message, line, column) in cases {
        let e = parse(src).unwrap_err();
        assert_eq!(
            (e.message.as_str(), e.line, e.column),
            (message, line, column),
            "{src:?}"
        );
    }
}

#[test]
fn nesting_beyond_the_parser_limit_is_an_error_not_a_stack_overflow() {
    let depth = NESTING_LIMIT as usize + 1;
    let src = format!("{}{}", "{a".repeat(depth), "}".repeat(depth));
    let e = parse(&src).unwrap_err();
    assert_eq!(e.message, "document nests deeper than 128 levels");
    let lists = format!(
        "{{ a(x: {}1{}) }}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse(&lists).is_err());
}

#[test]
fn malformed_bodies_get_bad_request_with_the_reason() {
    let p = federated();
    let cases: [(&[u8], &str); 6] = [
        (
            b"not json",
            "body is not JSON: expected ident at line 1 column 2",
        ),
        (b"[1]", "body must be a JSON object with a \"query\""),
        (
            b"{}",
            "request has no \"query\" (nor a persisted-query hash)",
        ),
        (br#"{"query": 1}"#, "\"query\" must be a string"),
        (
            br#"{"query": "{a}", "variables": [1]}"#,
            "\"variables\" must be an object",
        ),
        (
            br#"{"query": "{a}", "operationName": 2}"#,
            "\"operationName\" must be a string",
        ),
    ];
    for (body, message) in cases {
        let e = p.decide_body(body, "x").unwrap_err();
        assert_eq!(
            (e.status, e.code, e.message.as_str()),
            (400, "BAD_REQUEST", message)
        );
    }
}

#[test]
fn a_syntax_error_response_is_graphql_shaped_with_its_location() {
    let e = query(&federated(), "{ datasets { id }").unwrap_err();
    assert_eq!(e.status, 400);
    let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
    assert_eq!(
        body,
        json!({"errors": [{
            "message": "Syntax Error: expected a name, found end of document",
            "locations": [{"line": 1, "column": 18}],
            "extensions": {"code": "GRAPHQL_PARSE_FAILED"},
        }]})
    );
    let r = e.response();
    assert_eq!(r.status, 400);
    assert_eq!(r.details, "nexus_graphql_graphql_parse_failed");
}

#[test]
fn routes_by_root_field_owner_and_by_operation_name() {
    let p = federated();
    let r = query(&p, "query Lake { datasets { id } __typename }").unwrap();
    assert_eq!(
        (r.upstream.as_str(), r.operation.as_str()),
        ("lake", "Lake")
    );
    let r = query(
        &p,
        "{ s: streams { id } ...More } fragment More on Query { streams { n } }",
    )
    .unwrap();
    assert_eq!(
        (r.upstream.as_str(), r.operation.as_str()),
        ("stream", "anonymous")
    );
    let r = query(&p, "query Health { datasets { id } streams { id } }").unwrap();
    assert_eq!(
        r.upstream, "cortex",
        "the operation's own upstream wins over its fields"
    );
    let r = query(&p, "{ __schema { types { name } } }").unwrap();
    assert_eq!(
        r.upstream, "rule-upstream",
        "introspection alone goes to the rule's upstream"
    );
}

#[test]
fn root_fields_of_two_owners_are_refused_unless_a_default_is_given() {
    let e = query(&federated(), "{ datasets { id } streams { id } }").unwrap_err();
    assert_eq!((e.status, e.code), (400, "UNROUTABLE_OPERATION"));
    assert_eq!(
        e.message,
        "root fields \"datasets\" (lake) and \"streams\" (stream) belong to different upstreams: \
         send them as separate operations"
    );
    let e = query(&federated(), "{ models { id } }").unwrap_err();
    assert_eq!(e.message, "no upstream owns root field \"models\"");
    let p = plan(
        json!({"fields": {"datasets": "lake", "streams": "stream"}, "default_upstream": "gateway"}),
    );
    assert_eq!(
        query(&p, "{ datasets { id } streams { id } }")
            .unwrap()
            .upstream,
        "gateway"
    );
    assert_eq!(query(&p, "{ models { id } }").unwrap().upstream, "gateway");
}

#[test]
fn picks_the_named_operation_of_several() {
    let p = federated();
    let doc = "query A { datasets { id } } query B { streams { id } }";
    let r = post(&p, json!({"query": doc, "operationName": "B"})).unwrap();
    assert_eq!((r.upstream.as_str(), r.operation.as_str()), ("stream", "B"));
    let e = query(&p, doc).unwrap_err();
    assert_eq!(
        e.message,
        "Must provide operation name if query contains multiple operations."
    );
    let e = post(&p, json!({"query": doc, "operationName": "C"})).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            "GRAPHQL_VALIDATION_FAILED",
            "Unknown operation named \"C\"."
        )
    );
}

#[test]
fn depth_counts_fields_not_fragments_and_is_refused_over_the_limit() {
    let p = federated();
    let r = query(&p, "{ datasets { owner { name } } }").unwrap();
    assert_eq!(r.depth, 3);
    let r = query(
        &p,
        "{ datasets { ... on D { ...F } } } fragment F on D { owner { name } }",
    )
    .unwrap();
    assert_eq!(r.depth, 3);
    let e = query(&p, "{ datasets { owner { team { name } } } }").unwrap_err();
    assert_eq!((e.status, e.code), (400, "MAX_DEPTH_EXCEEDED"));
    assert_eq!(
        e.message,
        "query depth exceeds the maximum of 3 (field \"name\" is at depth 4)"
    );
}

#[test]
fn cost_multiplies_selections_by_literal_or_variable_list_sizes() {
    let p = federated();
    assert_eq!(query(&p, "{ datasets { id name } }").unwrap().cost, 3);
    assert_eq!(
        query(&p, "{ datasets(first: 10) { id name } }")
            .unwrap()
            .cost,
        21
    );
    let q = "query($n: Int) { datasets(limit: $n) { id name } }";
    let r = post(&p, json!({"query": q, "variables": {"n": 20}})).unwrap();
    assert_eq!(r.cost, 41);
    let r = post(&p, json!({"query": q, "variables": {"n": "x"}})).unwrap();
    assert_eq!(r.cost, 3, "a non-integer variable multiplies by 1");
    let e = query(&p, "{ datasets(first: 25) { id name } }").unwrap_err();
    assert_eq!((e.status, e.code), (400, "MAX_COST_EXCEEDED"));
    assert_eq!(e.message, "query cost exceeds the maximum of 50");
    let e = query(&p, "{ datasets(first: 9223372036854775807) { id } }").unwrap_err();
    assert_eq!(e.code, "MAX_COST_EXCEEDED");
}

#[test]
fn fragment_bombs_run_out_of_budget_and_cycles_are_refused() {
    let p = plan(json!({"max_depth": 50, "max_cost": 1000}));
    let mut doc = String::from("{ ...F0 }");
    for i in 0..30 {
        doc.push_str(&format!(
            " fragment F{i} on Q {{ ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    doc.push_str(" fragment F30 on Q { a }");
    let e = query(&p, &doc).unwrap_err();
    assert_eq!(e.code, "MAX_COST_EXCEEDED");
    let e = query(
        &p,
        "{ ...A } fragment A on Q { a ...B } fragment B on Q { ...A }",
    )
    .unwrap_err();
    assert_eq!(e.message, "fragment \"A\" spreads itself");
    let e = query(&p, "{ ...Missing }").unwrap_err();
    assert_eq!(e.message, "unknown fragment \"Missing\"");
}

#[test]
fn get_requests_are_read_from_the_url_and_mutations_refused() {
    let p = federated();
    let r = p
        .decide_get("query=query%20Q%7Bstreams%7Bid%7D%7D&operationName=Q", "x")
        .unwrap();
    assert_eq!((r.upstream.as_str(), r.operation.as_str()), ("stream", "Q"));
    let e = p
        .decide_get("query=mutation+%7Bdatasets%7D", "x")
        .unwrap_err();
    assert_eq!((e.status, e.code), (405, "METHOD_NOT_ALLOWED"));
    let e = p.decide_get("query=%zz", "x").unwrap_err();
    assert_eq!(e.message, "malformed %-escape in the URL");
}

#[test]
fn persisted_queries_register_serve_and_report_unknown_hashes_as_apollo_does() {
    let p = federated();
    let q = "{ datasets { id } }";
    let hash = apq::sha256_hex(q);
    let ext = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}});
    let e = post(&p, json!({"extensions": ext})).unwrap_err();
    assert_eq!((e.status, e.code), (200, "PERSISTED_QUERY_NOT_FOUND"));
    assert_eq!(
        e.body(),
        r#"{"errors":[{"extensions":{"code":"PERSISTED_QUERY_NOT_FOUND"},"message":"PersistedQueryNotFound"}]}"#
    );
    let r = post(&p, json!({"query": q, "extensions": ext})).unwrap();
    assert_eq!(
        (r.upstream.as_str(), r.served_query.as_deref()),
        ("lake", None)
    );
    let r = post(&p, json!({"extensions": ext})).unwrap();
    assert_eq!(
        (r.upstream.as_str(), r.served_query.as_deref()),
        ("lake", Some(q))
    );
    let wrong = json!({"persistedQuery": {"version": 1, "sha256Hash": apq::sha256_hex("{ x }")}});
    let e = post(&p, json!({"query": q, "extensions": wrong})).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (400, "provided sha does not match query")
    );
    let off = plan(json!({"persisted_queries": 0}));
    let e = post(&off, json!({"query": q, "extensions": ext})).unwrap_err();
    assert_eq!(e.code, "PERSISTED_QUERY_NOT_SUPPORTED");
}

#[test]
fn the_persisted_query_cache_drops_the_least_recently_used() {
    let mut cache = apq::PersistedQueries::new(2);
    cache.put("a", "{a}");
    cache.put("b", "{b}");
    assert_eq!(cache.get("a").as_deref(), Some("{a}"));
    cache.put("c", "{c}");
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get("b"), None, "b was the least recently used");
    assert_eq!(cache.get("a").as_deref(), Some("{a}"));
    assert_eq!(cache.get("c").as_deref(), Some("{c}"));
}

#[test]
fn the_sha256_is_the_standard_one() {
    assert_eq!(
        apq::sha256_hex("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn bodies_over_the_limit_are_refused_with_413() {
    let p = plan(json!({"max_body_bytes": 16}));
    let e = p
        .decide_body(br#"{"query": "{ datasets { id } }"}"#, "x")
        .unwrap_err();
    assert_eq!((e.status, e.code), (413, "REQUEST_TOO_LARGE"));
    assert_eq!(e.message, "request body exceeds 16 bytes");
}

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: [&str; 24] = [
    "{", "}", "(", ")", "[", "]", "...", "on", "query", "fragment", "F", "a", ":", "$v", "@d",
    "\"s\"", "\"\"\"", "1", "-0", "1e", "#", "\n", ",", "first: 9",
];

#[test]
fn arbitrary_bytes_and_token_soup_never_panic() {
    let p = plan(json!({"fields": {"a": "lake"}, "max_depth": 100, "max_cost": 100000}));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = p.decide_body(&bytes, "x");
        let src = String::from_utf8_lossy(&bytes);
        let _ = parse(&src);
        let soup: String = (0..rng.below(40))
            .map(|_| PIECES[rng.below(PIECES.len())])
            .collect();
        let _ = query(&p, &soup);
        let _ = p.decide_get(&soup, "x");
    }
}
