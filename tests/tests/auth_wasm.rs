//! The real nexus_auth.wasm under the strict wasmtime host: every algorithm, every rejection,
//! JWKS callouts (cold start, rotation, stale keys, failure), identity out, and the fuel one
//! verification costs per algorithm versus a cache hit.

use std::time::Duration;

use nexus_auth::testkit::{self, SigningKey, ALGS};
use proxy_wasm_test_host::{Action, Host, HttpContext, LocalResponse};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://id.example.com";

fn host(config: &Value) -> Host {
    let module = nexus_tests::filter_module("nexus_auth").unwrap();
    let mut host = Host::builder()
        .plugin_config(config.to_string().into_bytes())
        .allow_cluster("jwks")
        .time_nanos(NOW * 1_000_000_000)
        .build_from_file(module)
        .unwrap();
    assert!(host.start().unwrap(), "{:?}", host.logs());
    host
}

fn inline(jwks: &str) -> Value {
    json!({
        "providers": {"corp": {"issuer": ISS, "audiences": ["nexus"], "jwks": {"inline": jwks},
            "claims_to_headers": [{"claim": "tenant", "header": "x-nexus-tenant"}]}},
        "api_keys": {"keys": [{"sha256": testkit::sha256_hex("k-1"), "client_id": "billing", "scopes": ["read"]}]},
        "rules": [
            {"name": "health", "match": {"path": {"exact": "/health"}}, "requirement": "allow"},
            {"name": "admin", "match": {"path": {"prefix": "/admin/"}}, "requirement": {"jwt": {"scopes": ["admin"]}}},
            {"name": "keys", "match": {"path": {"prefix": "/keys/"}}, "requirement": {"api_key": {"scopes": ["read"]}}},
            {"name": "api", "match": {"path": {"prefix": "/api/"}}, "requirement": {"jwt": {}}}
        ]
    })
}

fn remote() -> Value {
    json!({
        "providers": {"corp": {"issuer": ISS,
            "jwks": {"remote": {"cluster": "jwks", "uri": "http://idp.local/.well-known/jwks.json",
                                "refresh_period_s": 60}}}},
        "rules": [{"name": "api", "requirement": {"jwt": {}}}],
        "jwks_refetch_min_interval_ms": 5000
    })
}

fn claims(extra: Value) -> Value {
    testkit::claims(ISS, "nexus", "alice", NOW, extra)
}

fn send(http: &mut HttpContext<'_>, path: &str, token: Option<&str>) -> Action {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(":method", "GET"), (":path", path), (":authority", "nexus")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    http.request_headers(&headers, true).unwrap()
}

fn expect_error(resp: &LocalResponse, status: u32, error: &str, detail: &str) {
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(resp.status, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    // Envoy's response code details, for access logs.
    assert_eq!(resp.details, format!("nexus_{error}"));
}

#[test]
fn every_algorithm_verifies_and_fuel_per_verification() {
    let mut table = Vec::new();
    for alg in ALGS {
        let key = SigningKey::new(alg, "k1");
        let mut host = host(&inline(&testkit::jwks(&[&key])));
        // Warm-up (defines metrics), then a first sight (verification) and a reuse (cache hit).
        let warm = key.token(&claims(json!({"tenant": "warm-up"})));
        let token = key.token(&claims(json!({"tenant": "acme"})));
        for t in [&warm, &token, &token] {
            let mut http = host.http_context().unwrap();
            assert_eq!(
                send(&mut http, "/api/x", Some(t)),
                Action::Continue,
                "{alg}"
            );
            assert_eq!(
                http.request_header("x-nexus-client-id").as_deref(),
                Some("alice")
            );
            http.finish().unwrap();
        }
        let fuel: Vec<u64> = host
            .fuel_log()
            .iter()
            .filter(|(n, _)| n == "proxy_on_request_headers")
            .map(|(_, f)| *f)
            .collect();
        assert_eq!(host.metric("nexus_auth.token_cache.hit"), Some(1), "{alg}");
        assert_eq!(host.metric("nexus_auth.token_cache.miss"), Some(2), "{alg}");
        assert!(host.violations().is_empty(), "{:?}", host.violations());
        // HMAC is cheap anyway; for public-key algorithms the cache saves most of the cost.
        let factor = if alg.starts_with("HS") { 2 } else { 5 };
        assert!(
            fuel[2] * factor < fuel[1],
            "{alg}: a cache hit must be cheaper: {fuel:?}"
        );
        // Parsing the inline JWKS (and preparing its key: RSA's Montgomery context, EC's table
        // of multiples and, for the first EC key, the generator's) happens at configuration.
        let configure: u64 = host
            .fuel_log()
            .iter()
            .filter(|(n, _)| n == "proxy_on_configure")
            .map(|(_, f)| *f)
            .sum();
        table.push((alg, fuel[1], fuel[2], configure));
    }
    println!("nexus-auth fuel per on_request_headers (wasm instructions):");
    println!(
        "{:<6} {:>14} {:>12} {:>14}",
        "alg", "verify(miss)", "cache hit", "configure"
    );
    for (alg, miss, hit, configure) in &table {
        println!("{alg:<6} {miss:>14} {hit:>12} {configure:>14}");
    }
}

#[test]
fn fuel_floor_of_a_request_without_credentials() {
    // What every request pays before any JWT work: headers, rule match, decision.
    let key = SigningKey::new("EdDSA", "k1");
    let mut host = host(&inline(&testkit::jwks(&[&key])));
    for _ in 0..2 {
        let mut http = host.http_context().unwrap();
        assert_eq!(send(&mut http, "/health", None), Action::Continue);
        http.finish().unwrap();
    }
    let fuel: Vec<u64> = host
        .fuel_log()
        .iter()
        .filter(|(n, _)| n == "proxy_on_request_headers")
        .map(|(_, f)| *f)
        .collect();
    println!("nexus-auth fuel of an allow rule (first, steady): {fuel:?}");
    assert!(fuel[1] > 0);
}

#[test]
fn rejections_with_exact_status_and_error() {
    let rsa = SigningKey::new("RS256", "r1");
    let mut host = host(&inline(&testkit::jwks(&[&rsa])));
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let ok = claims(json!({}));
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&ok));
    let hs_confused = SigningKey::new("HS256", "r1").token(&ok);
    let cases: Vec<(String, &str)> = vec![
        (none, "alg none is not accepted"),
        (hs_confused, "no key with kid r1 can verify HS256"),
        (
            rsa.token_with_header(&json!({"alg": "RS256", "kid": "zz"}), &ok),
            "unknown kid zz",
        ),
        (
            rsa.token(&testkit::claims(
                "https://evil",
                "nexus",
                "a",
                NOW,
                json!({}),
            )),
            "issuer https://evil is not accepted",
        ),
        (
            rsa.token(&testkit::claims(ISS, "else", "a", NOW, json!({}))),
            "audience not accepted",
        ),
        (
            rsa.token(&claims(json!({"exp": NOW - 120}))),
            "the token has expired",
        ),
        (
            rsa.token(&claims(json!({"nbf": NOW + 120}))),
            "not valid yet",
        ),
        (
            SigningKey::with_rsa("RS256", "r1", testkit::RSA_B).token(&ok),
            "signature verification failed",
        ),
    ];
    for (token, detail) in &cases {
        let mut http = host.http_context().unwrap();
        assert_eq!(send(&mut http, "/api/x", Some(token)), Action::Pause);
        let resp = http.local_response().unwrap();
        expect_error(&resp, 401, "invalid_token", detail);
        let www = resp.header("www-authenticate").unwrap();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        http.finish().unwrap();
    }
    assert_eq!(
        host.metric("nexus_auth.denied.invalid_token"),
        Some(cases.len() as u64)
    );

    // Missing token, default deny, missing scope, API keys.
    let mut http = host.http_context().unwrap();
    send(&mut http, "/api/x", None);
    expect_error(
        &http.local_response().unwrap(),
        401,
        "missing_credentials",
        "rule api",
    );
    let mut http = host.http_context().unwrap();
    send(&mut http, "/nowhere", None);
    expect_error(
        &http.local_response().unwrap(),
        403,
        "access_denied",
        "no auth rule matches GET /nowhere",
    );
    let mut http = host.http_context().unwrap();
    send(&mut http, "/admin/x", Some(&rsa.token(&ok)));
    expect_error(
        &http.local_response().unwrap(),
        403,
        "insufficient_scope",
        "lacks scope admin",
    );
    let mut http = host.http_context().unwrap();
    http.request_headers(
        &[
            (":method", "GET"),
            (":path", "/keys/x"),
            ("x-api-key", "k-2"),
        ],
        true,
    )
    .unwrap();
    expect_error(
        &http.local_response().unwrap(),
        401,
        "invalid_api_key",
        "no known key",
    );
    let mut http = host.http_context().unwrap();
    let action = http
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/keys/x"),
                ("x-api-key", "k-1"),
                ("x-nexus-client-id", "root"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(
        http.request_header("x-nexus-client-id").as_deref(),
        Some("billing")
    );
    assert_eq!(
        http.request_header("x-nexus-auth-method").as_deref(),
        Some("api_key")
    );
    http.finish().unwrap();
    assert_eq!(
        host.property(&["nexus.client_id"]).as_deref(),
        Some(&b"billing"[..])
    );
    assert_eq!(
        host.property(&["nexus.auth_method"]).as_deref(),
        Some(&b"api_key"[..])
    );
    assert!(host.violations().is_empty(), "{:?}", host.violations());
}

#[test]
fn identity_out_switched_off_sets_no_headers_and_no_filter_state() {
    let key = SigningKey::new("ES256", "k1");
    let mut config = inline(&testkit::jwks(&[&key]));
    config["identity"] = json!({"headers": false, "filter_state": false});
    let mut host = host(&config);
    let token = key.token(&claims(json!({})));
    let mut http = host.http_context().unwrap();
    assert_eq!(send(&mut http, "/api/x", Some(&token)), Action::Continue);
    assert_eq!(http.request_header("x-nexus-client-id"), None);
    assert_eq!(http.request_header("x-nexus-auth-method"), None);
    http.finish().unwrap();
    assert_eq!(host.property(&["nexus.client_id"]), None);
    assert_eq!(host.property(&["nexus.auth_method"]), None);
    assert_eq!(host.metric("nexus_auth.allowed.jwt"), Some(1));
    assert!(host.violations().is_empty(), "{:?}", host.violations());
}

/// Answers the single pending JWKS callout; returns how many there were.
fn answer(host: &mut Host, status: Option<&str>, doc: &str) -> usize {
    let calls = host.http_calls();
    for c in &calls {
        assert_eq!(c.cluster, "jwks");
        assert_eq!(c.header(":path"), Some("/.well-known/jwks.json"));
        assert_eq!(c.header(":authority"), Some("idp.local"));
        match status {
            Some(s) => host
                .respond_http_call(c.token, &[(":status", s)], doc.as_bytes())
                .unwrap(),
            None => host.fail_http_call(c.token).unwrap(),
        }
    }
    calls.len()
}

#[test]
fn remote_jwks_cold_start_rotation_stale_keys() {
    let k1 = SigningKey::new("ES256", "k1");
    let k2 = SigningKey::new("RS256", "k2");
    let mut host = host(&remote());
    assert_eq!(host.tick_period(), Some(Duration::from_secs(1)));
    let t1 = k1.token(&claims(json!({})));

    // Cold: the request waits for the fetch it triggered, then goes on.
    let id = {
        let mut http = host.http_context().unwrap();
        assert_eq!(send(&mut http, "/x", Some(&t1)), Action::Pause);
        http.id()
    };
    // A second request on the same worker waits for the same fetch.
    let id2 = {
        let mut http = host.http_context().unwrap();
        assert_eq!(send(&mut http, "/y", Some(&t1)), Action::Pause);
        http.id()
    };
    assert_eq!(answer(&mut host, Some("200"), &testkit::jwks(&[&k1])), 1);
    for ctx in [id, id2] {
        let http = host.http(ctx).unwrap();
        assert!(http.request_resumed(), "context {ctx} not resumed");
        assert_eq!(
            http.request_header("x-nexus-client-id").as_deref(),
            Some("alice")
        );
    }
    assert_eq!(host.metric("nexus_auth.jwks.refreshed"), Some(1));

    // Rotation: a new kid is fetched on first sight (the refetch interval has passed).
    host.advance_time(Duration::from_secs(6));
    let t2 = k2.token(&claims(json!({})));
    let id = {
        let mut http = host.http_context().unwrap();
        assert_eq!(send(&mut http, "/x", Some(&t2)), Action::Pause);
        http.id()
    };
    assert_eq!(
        answer(&mut host, Some("200"), &testkit::jwks(&[&k1, &k2])),
        1
    );
    assert!(host.http(id).unwrap().request_resumed());

    // The JWKS server goes down: the periodic refresh fails, cached keys keep serving.
    host.advance_time(Duration::from_secs(61));
    host.tick().unwrap();
    assert_eq!(answer(&mut host, None, ""), 1);
    assert_eq!(host.metric("nexus_auth.jwks.refresh_failed"), Some(1));
    let fresh = k2.token(&claims(json!({"sub": "bob"})));
    let mut http = host.http_context().unwrap();
    assert_eq!(send(&mut http, "/x", Some(&fresh)), Action::Continue);
    assert!(host.logged("JWKS fetch for corp failed"));
    assert!(host.violations().is_empty(), "{:?}", host.violations());
}

#[test]
fn cold_jwks_failure_is_503_not_a_pass() {
    let k1 = SigningKey::new("EdDSA", "k1");
    let mut host = host(&remote());
    let t1 = k1.token(&claims(json!({})));
    let id = {
        let mut http = host.http_context().unwrap();
        assert_eq!(send(&mut http, "/x", Some(&t1)), Action::Pause);
        http.id()
    };
    assert_eq!(answer(&mut host, Some("500"), "oops"), 1);
    let http = host.http(id).unwrap();
    assert!(!http.request_resumed());
    expect_error(
        &http.local_response().unwrap(),
        503,
        "jwks_unavailable",
        "no signing keys for provider corp",
    );
    // The next request within the refetch interval is refused at once, without a callout.
    let mut http = host.http_context().unwrap();
    assert_eq!(send(&mut http, "/x", Some(&t1)), Action::Pause);
    expect_error(
        &http.local_response().unwrap(),
        503,
        "jwks_unavailable",
        "corp",
    );
    assert!(host.http_calls().is_empty());
    assert_eq!(host.metric("nexus_auth.denied.jwks_unavailable"), Some(2));
}

#[test]
fn invalid_configuration_is_refused_with_its_path() {
    let module = nexus_tests::filter_module("nexus_auth").unwrap();
    let mut host = Host::builder()
        .plugin_config(
            br#"{"providers": {"corp": {"issuer": "", "jwks": {"inline": "{\"keys\": []}"}}}}"#
                .to_vec(),
        )
        .build_from_file(module)
        .unwrap();
    assert!(!host.start().unwrap());
    assert!(host
        .logged("nexus-auth: invalid configuration: $.providers.corp.issuer: must not be empty"));
}
