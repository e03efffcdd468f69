//! nexus-auth in real Envoy, keys fetched from a local JWKS server through an Envoy cluster:
//! every algorithm accepted, bad tokens refused with the exact JSON error, rotation picked up
//! on first sight, a JWKS outage survived with a warm cache, and a cold outage answered 503.

use std::time::{Duration, Instant};

use nexus_auth::testkit::{self, SigningKey, ALGS};
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::jwks::JwksServer;
use nexus_tests::upstream::Upstream;
use serde_json::{json, Value};

const ISS: &str = "https://id.example.com";

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config(refresh_s: u64) -> String {
    json!({
        "providers": {"corp": {"issuer": ISS, "audiences": ["nexus"],
            "jwks": {"remote": {"cluster": "jwks", "uri": "http://idp.local/jwks.json",
                                "refresh_period_s": refresh_s, "timeout_ms": 1000}},
            "claims_to_headers": [{"claim": "tenant", "header": "x-nexus-tenant"}]}},
        "rules": [
            {"name": "health", "match": {"path": {"exact": "/health"}}, "requirement": "allow"},
            {"name": "api", "match": {"path": {"prefix": "/api/"}}, "requirement": {"jwt": {}}}
        ],
        "jwks_refetch_min_interval_ms": 1000
    })
    .to_string()
}

struct Setup {
    api: Upstream,
    jwks: JwksServer,
    envoy: Envoy,
}

fn setup(doc: &str, refresh_s: u64) -> Setup {
    let api = Upstream::start("api").unwrap();
    let jwks = JwksServer::start(doc).unwrap();
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-auth".into(),
            module: nexus_tests::filter_module("nexus_auth").unwrap(),
            config: config(refresh_s),
        }],
        // The JWKS server is just another cluster to Envoy.
        upstreams: vec![("api".into(), api.port()), ("jwks".into(), jwks.port())],
        ..Default::default()
    })
    .unwrap();
    Setup { api, jwks, envoy }
}

fn call(s: &Setup, token: &str) -> client::Response {
    let auth = format!("Bearer {token}");
    client::get(
        s.envoy.port,
        "/api/items",
        &[
            ("authorization", &auth),
            ("x-nexus-upstream", "api"),
            ("x-nexus-client-id", "spoofed"),
        ],
    )
    .unwrap()
}

fn claims(sub: &str, extra: Value) -> Value {
    testkit::claims(ISS, "nexus", sub, now_s(), extra)
}

#[test]
fn every_algorithm_passes_and_bad_tokens_get_exact_errors() {
    let keys: Vec<SigningKey> = ALGS
        .iter()
        .map(|alg| SigningKey::new(alg, &format!("kid-{alg}")))
        .collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let s = setup(&testkit::jwks(&refs), 600);
    for key in &keys {
        let resp = call(
            &s,
            &key.token(&claims(
                &format!("user-{}", key.alg),
                json!({"tenant": "acme"}),
            )),
        );
        assert_eq!(resp.status, 200, "{}: {}", key.alg, resp.text());
    }
    let got = s.api.requests();
    assert_eq!(got.len(), ALGS.len());
    for (req, alg) in got.iter().zip(ALGS) {
        assert_eq!(
            req.header("x-nexus-client-id"),
            Some(format!("user-{alg}").as_str())
        );
        assert_eq!(req.header("x-nexus-auth-method"), Some("jwt:corp"));
        assert_eq!(req.header("x-nexus-tenant"), Some("acme"));
        // The verified token is not forwarded (as jwt_authn's default `forward: false`).
        assert_eq!(req.header("authorization"), None);
        assert_eq!(
            req.headers
                .iter()
                .filter(|(k, _)| k == "x-nexus-client-id")
                .count(),
            1
        );
    }
    // One fetch served every algorithm (the first request's; later ones used the shared copy).
    assert_eq!(s.jwks.hits(), 1);
    // The identity also went out as Envoy filter state (wasm.nexus.client_id), without error.
    let log = s.envoy.log();
    assert!(!log.contains("setting property"), "{log}");

    let rsa = &keys[0];
    let ok = claims("eve", json!({}));
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let cases = [
        (
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&ok)),
            "alg none is not accepted",
        ),
        (
            SigningKey::new("HS256", "kid-RS256").token(&ok),
            "no key with kid kid-RS256 can verify HS256 (algorithm mismatch)",
        ),
        (
            rsa.token(&testkit::claims(ISS, "other", "eve", now_s(), json!({}))),
            "audience not accepted",
        ),
        (
            rsa.token(&claims("eve", json!({"exp": now_s() - 300}))),
            "the token has expired",
        ),
        (
            rsa.token(&claims("eve", json!({"nbf": now_s() + 300}))),
            "the token is not valid yet (nbf)",
        ),
        (
            rsa.token(&testkit::claims(
                "https://evil",
                "nexus",
                "eve",
                now_s(),
                json!({}),
            )),
            "issuer https://evil is not accepted here",
        ),
    ];
    for (token, detail) in &cases {
        let resp = call(&s, token);
        assert_eq!(resp.status, 401, "{detail}: {}", resp.text());
        assert_eq!(
            resp.json().unwrap(),
            json!({"error": "invalid_token", "detail": detail})
        );
        assert_eq!(
            resp.header("www-authenticate"),
            Some(
                format!("Bearer error=\"invalid_token\", error_description=\"{detail}\"").as_str()
            )
        );
    }
    let resp = client::get(s.envoy.port, "/api/items", &[("x-nexus-upstream", "api")]).unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json().unwrap()["error"], "missing_credentials");
    let resp = client::get(s.envoy.port, "/other", &[("x-nexus-upstream", "api")]).unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(resp.json().unwrap()["error"], "access_denied");
    assert_eq!(
        s.api.requests().len(),
        ALGS.len(),
        "no refused request reached the upstream"
    );
}

#[test]
fn rotation_is_picked_up_on_first_sight_and_an_outage_is_survived_warm() {
    let old = SigningKey::new("ES256", "old");
    let s = setup(&testkit::jwks(&[&old]), 1);
    assert_eq!(call(&s, &old.token(&claims("a", json!({})))).status, 200);

    // The IdP rotates: the new kid is fetched when first seen, no restart.
    let new = SigningKey::new("EdDSA", "new");
    s.jwks.set_document(&testkit::jwks(&[&old, &new]));
    std::thread::sleep(Duration::from_millis(1100)); // the refetch rate limit
    let resp = call(&s, &new.token(&claims("b", json!({}))));
    assert_eq!(resp.status, 200, "{}", resp.text());

    // The JWKS server goes down; refreshes (every second) fail; fresh tokens keep passing.
    s.jwks.set_down(true);
    let hits = s.jwks.hits();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.jwks.hits() < hits + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.jwks.hits() >= hits + 2, "no refresh attempted while down");
    for i in 0..5 {
        let t = new.token(&claims(&format!("c{i}"), json!({})));
        let resp = call(&s, &t);
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let log = s.envoy.log();
    assert!(
        log.contains("JWKS fetch for corp failed: status 503; serving the keys already held"),
        "{log}"
    );
}

#[test]
fn cold_outage_is_503() {
    let k = SigningKey::new("RS256", "k");
    let s = setup(&testkit::jwks(&[&k]), 600);
    s.jwks.set_down(true);
    let resp = call(&s, &k.token(&claims("a", json!({}))));
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(
        resp.json().unwrap(),
        json!({"error": "jwks_unavailable", "detail": "no signing keys for provider corp (JWKS fetch failed)"})
    );
    assert!(s.api.requests().is_empty());
    // Once the server is back (and the rate limit has passed), requests pass.
    s.jwks.set_down(false);
    std::thread::sleep(Duration::from_millis(1100));
    let resp = call(&s, &k.token(&claims("a", json!({}))));
    assert_eq!(resp.status, 200, "{}", resp.text());
}
