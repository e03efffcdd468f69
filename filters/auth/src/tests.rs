#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::rc::Rc;

use nexus_filter_core::testing::{
    FixedClock, MemCallouts, MemHeaders, MemLog, MemMetrics, MemSharedData,
};
use nexus_filter_core::HeaderMap;
use serde_json::{json, Value};

use super::*;
use crate::jwks::KeyMaterial;
use crate::testkit::{self, SigningKey, ALGS};
use crate::verify::{Alg, RingVerifier};

mod oauth2;
mod session;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://id.example.com";

#[derive(Default)]
struct H {
    clock: FixedClock,
    metrics: MemMetrics,
    shared: MemSharedData,
    log: MemLog,
    callouts: MemCallouts,
}

impl H {
    fn new() -> Self {
        let h = H::default();
        h.clock.0.set(NOW * 1_000_000_000);
        h
    }
    fn env(&self) -> Env<'_> {
        Env {
            clock: &self.clock,
            metrics: &self.metrics,
            shared: &self.shared,
            log: &self.log,
            callouts: &self.callouts,
        }
    }
    fn advance(&self, s: u64) {
        self.clock.0.set(self.clock.0.get() + s * 1_000_000_000);
    }
}

fn inline_config(jwks: &str, extra: Value) -> Value {
    let mut c = json!({
        "providers": {"corp": {"issuer": ISS, "audiences": ["nexus"],
            "jwks": {"inline": jwks},
            "token_sources": ["bearer", {"header": {"name": "x-token", "prefix": "Token "}},
                              {"query": {"param": "access_token"}}, {"cookie": {"name": "session"}}],
            "claims_to_headers": [{"claim": "tenant", "header": "x-nexus-tenant"}]}},
        "api_keys": {"keys": [{"sha256": testkit::sha256_hex("k-billing"), "client_id": "billing",
                               "scopes": ["lake:read"]}]},
        "rules": [
            {"name": "health", "match": {"path": {"exact": "/health"}}, "requirement": "allow"},
            {"name": "admin", "match": {"path": {"prefix": "/admin/"}},
             "requirement": {"jwt": {"scopes": ["admin"], "required_claims": {"tenant": "acme"}}}},
            {"name": "lake-write", "match": {"path": {"prefix": "/lake/"}, "methods": ["POST"]},
             "requirement": {"api_key": {"scopes": ["lake:write"]}}},
            {"name": "lake", "match": {"path": {"prefix": "/lake/"}},
             "requirement": {"any_of": [{"jwt": {"providers": ["corp"]}}, {"api_key": {"scopes": ["lake:read"]}}]}},
            {"name": "beta", "match": {"headers": [{"name": "x-beta", "exact": "1"}]}, "requirement": "allow"},
            {"name": "api", "match": {"path": {"prefix": "/api/"}}, "requirement": {"jwt": {}}}
        ]
    });
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        m.extend(e);
    }
    c
}

fn auth(config: &Value) -> Auth {
    match Auth::from_json(config.to_string().as_bytes()) {
        Ok(a) => a,
        Err(e) => panic!("config rejected: {e}"),
    }
}

fn std_claims(extra: Value) -> Value {
    testkit::claims(ISS, "nexus", "alice", NOW, extra)
}

fn run(a: &Auth, h: &H, headers: &[(&str, &str)]) -> (Outcome, MemHeaders) {
    let mut m = MemHeaders::new(headers);
    let out = a.on_request_headers(&mut m, &h.env(), true);
    (out, m)
}

fn get(a: &Auth, h: &H, path: &str, headers: &[(&str, &str)]) -> (Outcome, MemHeaders) {
    let mut all = vec![(":method", "GET"), (":path", path)];
    all.extend_from_slice(headers);
    run(a, h, &all)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn denied(out: &Outcome) -> (u16, Value, Option<String>) {
    match out {
        Outcome::Respond(r) => (
            r.status,
            serde_json::from_slice(&r.body).unwrap(),
            r.headers
                .iter()
                .find(|(k, _)| k == "www-authenticate")
                .map(|(_, v)| v.clone()),
        ),
        other => panic!("expected a local response, got {other:?}"),
    }
}

fn assert_denied(out: &Outcome, status: u16, error: &str, detail_part: &str) {
    let (s, body, _) = denied(out);
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_part),
        "{detail:?} lacks {detail_part:?}"
    );
}

#[test]
fn every_algorithm_is_accepted() {
    for alg in ALGS {
        let key = SigningKey::new(alg, &format!("k-{alg}"));
        let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
        let h = H::new();
        let token = key.token(&std_claims(json!({"tenant": "acme"})));
        let (out, headers) = get(&a, &h, "/api/x", &[("authorization", &bearer(&token))]);
        assert_eq!(
            out,
            Outcome::Continue(Some(Identity {
                client_id: "alice".into(),
                method: "jwt:corp".into()
            })),
            "{alg}"
        );
        assert_eq!(headers.get(HEADER_CLIENT_ID).as_deref(), Some("alice"));
        assert_eq!(headers.get(HEADER_AUTH_METHOD).as_deref(), Some("jwt:corp"));
        assert_eq!(headers.get("x-nexus-tenant").as_deref(), Some("acme"));
    }
}

#[test]
fn token_sources_header_query_cookie() {
    let key = SigningKey::new("ES256", "e1");
    let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
    let h = H::new();
    let t = key.token(&std_claims(json!({})));
    let with_prefix = format!("Token {t}");
    let cookie = format!("theme=dark; session={t}");
    let query = format!("/api/x?a=1&access_token={t}");
    for (path, headers) in [
        ("/api/x", vec![("x-token", with_prefix.as_str())]),
        ("/api/x", vec![("cookie", cookie.as_str())]),
        (query.as_str(), vec![]),
    ] {
        let (out, _) = get(&a, &h, path, &headers);
        assert!(
            matches!(out, Outcome::Continue(Some(_))),
            "{path} {headers:?}: {out:?}"
        );
    }
    // Without the configured prefix the header yields nothing.
    let (out, _) = get(&a, &h, "/api/x", &[("x-token", &t)]);
    assert_denied(&out, 401, "missing_credentials", "requires credentials");
}

#[test]
fn bad_tokens_are_rejected_with_their_reason() {
    let rsa = SigningKey::new("RS256", "r1");
    let hs = SigningKey::new("HS256", "h1");
    let a = auth(&inline_config(&testkit::jwks(&[&rsa, &hs]), json!({})));
    let h = H::new();
    let ok = std_claims(json!({}));

    // The RSA public key's modulus used as an HMAC secret: classic algorithm confusion.
    let KeyMaterial::Rsa { n, .. } = &jwks::KeySet::parse(testkit::jwks(&[&rsa]).as_bytes())
        .unwrap()
        .keys[0]
        .material
        .clone()
    else {
        panic!()
    };
    let confused = {
        let input = format!(
            "{}.{}",
            URL_SAFE.encode(json!({"alg": "HS256", "kid": "r1"}).to_string()),
            URL_SAFE.encode(ok.to_string())
        );
        let sig = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, n),
            input.as_bytes(),
        );
        format!("{input}.{}", URL_SAFE.encode(sig.as_ref()))
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE.encode(ok.to_string())
    );
    let tampered = {
        let t = rsa.token(&ok);
        let parts: Vec<&str> = t.split('.').collect();
        let evil = URL_SAFE.encode(std_claims(json!({"sub": "root"})).to_string());
        format!("{}.{evil}.{}", parts[0], parts[2])
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "alg none is not accepted"),
        (
            "algorithm confusion",
            confused,
            "no key with kid r1 can verify HS256",
        ),
        (
            "unknown kid",
            rsa.token_with_header(&json!({"alg": "RS256", "kid": "nope"}), &ok),
            "unknown kid nope",
        ),
        (
            "wrong iss",
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
            "wrong aud",
            rsa.token(&testkit::claims(ISS, "other", "a", NOW, json!({}))),
            "audience not accepted",
        ),
        (
            "expired beyond skew",
            rsa.token(&std_claims(json!({"exp": NOW - 61}))),
            "expired",
        ),
        (
            "nbf beyond skew",
            rsa.token(&std_claims(json!({"nbf": NOW + 61}))),
            "not valid yet",
        ),
        (
            "no exp",
            rsa.token(&json!({"iss": ISS, "aud": "nexus", "sub": "a"})),
            "no numeric exp",
        ),
        (
            "tampered payload",
            tampered,
            "signature verification failed",
        ),
        ("garbage", "abc.def".to_string(), "not a compact JWS"),
        (
            "unsupported alg",
            rsa.token_with_header(&json!({"alg": "RS1", "kid": "r1"}), &ok),
            "unsupported alg RS1",
        ),
    ];
    for (name, token, detail) in cases {
        let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&token))]);
        let (status, body, www) = denied(&out);
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"], "invalid_token", "{name}");
        assert!(
            body["detail"].as_str().unwrap().contains(detail),
            "{name}: {body}"
        );
        let www = www.unwrap();
        assert!(
            www.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{www}"
        );
    }
    // Within the skew: accepted; nbf only checked when present.
    for c in [
        std_claims(json!({"exp": NOW - 59})),
        std_claims(json!({"nbf": NOW + 59})),
    ] {
        let (out, _) = get(
            &a,
            &h,
            "/api/x",
            &[("authorization", &bearer(&rsa.token(&c)))],
        );
        assert!(matches!(out, Outcome::Continue(Some(_))), "{c}: {out:?}");
    }
    assert_eq!(h.metrics.value("nexus_auth.denied.invalid_token"), 11);
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;
use base64::Engine;

/// RFC 7515 §4.1.11: a validly signed token whose `crit` lists extensions nobody here
/// understands is refused, and so is a malformed `crit`.
#[test]
fn critical_header_extensions_are_refused() {
    let rsa = SigningKey::new("RS256", "r1");
    let a = auth(&inline_config(&testkit::jwks(&[&rsa]), json!({})));
    let h = H::new();
    let ok = std_claims(json!({}));
    let cases = [
        (
            json!({"alg": "RS256", "kid": "r1", "crit": ["exp", "b64"], "exp": 1, "b64": false}),
            "crit lists extensions nexus-auth does not understand: exp, b64",
        ),
        (
            json!({"alg": "RS256", "kid": "r1", "crit": []}),
            "crit must be a non-empty list of header parameter names",
        ),
        (
            json!({"alg": "RS256", "kid": "r1", "crit": "b64"}),
            "crit must be a non-empty list of header parameter names",
        ),
        (
            json!({"alg": "RS256", "kid": "r1", "crit": ["alg"]}),
            "crit must not list alg, which the JWS specification defines",
        ),
    ];
    for (header, detail) in &cases {
        let token = rsa.token_with_header(header, &ok);
        let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&token))]);
        let (status, body, _) = denied(&out);
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token"))
        );
        assert_eq!(body["detail"], *detail, "{header}");
    }
    // The same key and claims without `crit` pass: the refusal is the header's alone.
    let token = rsa.token(&ok);
    let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&token))]);
    assert!(matches!(out, Outcome::Continue(Some(_))), "{out:?}");
}

#[test]
fn missing_credentials_and_default_deny() {
    let key = SigningKey::new("EdDSA", "e");
    let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
    let h = H::new();
    let (out, _) = get(&a, &h, "/api/x", &[]);
    let (s, body, www) = denied(&out);
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("missing_credentials"))
    );
    assert_eq!(www.as_deref(), Some("Bearer realm=\"nexus\""));
    let (out, _) = get(&a, &h, "/elsewhere", &[]);
    assert_denied(
        &out,
        403,
        "access_denied",
        "no auth rule matches GET /elsewhere",
    );
    assert_eq!(h.metrics.value("nexus_auth.denied.no_rule"), 1);

    let open = auth(&inline_config(
        &testkit::jwks(&[&key]),
        json!({"on_no_match": "allow"}),
    ));
    assert_eq!(get(&open, &h, "/elsewhere", &[]).0, Outcome::Continue(None));
}

#[test]
fn rules_by_path_method_header_and_allow() {
    let key = SigningKey::new("ES384", "e");
    let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
    let h = H::new();
    assert_eq!(get(&a, &h, "/health", &[]).0, Outcome::Continue(None));
    assert_eq!(
        get(&a, &h, "/x", &[("x-beta", "1")]).0,
        Outcome::Continue(None)
    );
    // POST /lake/ needs an API key with lake:write; billing only has lake:read.
    let (out, _) = run(
        &a,
        &h,
        &[
            (":method", "POST"),
            (":path", "/lake/t"),
            ("x-api-key", "k-billing"),
        ],
    );
    assert_denied(&out, 403, "insufficient_scope", "lacks scope lake:write");
    // GET /lake/: JWT or API key.
    let (out, headers) = get(&a, &h, "/lake/t", &[("x-api-key", "k-billing")]);
    assert_eq!(
        out,
        Outcome::Continue(Some(Identity {
            client_id: "billing".into(),
            method: "api_key".into()
        }))
    );
    assert_eq!(headers.get(HEADER_AUTH_METHOD).as_deref(), Some("api_key"));
    let t = key.token(&std_claims(json!({})));
    let (out, _) = get(&a, &h, "/lake/t", &[("authorization", &bearer(&t))]);
    assert!(matches!(out, Outcome::Continue(Some(ref i)) if i.method == "jwt:corp"));
    // Wrong key: 401 invalid_api_key (the any_of's most informative failure).
    let (out, _) = get(&a, &h, "/lake/t", &[("x-api-key", "k-wrong")]);
    assert_denied(
        &out,
        401,
        "invalid_api_key",
        "x-api-key header carries no known key",
    );
    let (out, _) = get(&a, &h, "/lake/t", &[]);
    assert_denied(&out, 401, "missing_credentials", "rule lake");
}

#[test]
fn scopes_and_required_claims_are_403() {
    let key = SigningKey::new("PS256", "p");
    let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
    let h = H::new();
    let cases = [
        (
            json!({"tenant": "acme"}),
            Some(("insufficient_scope", "lacks scope admin")),
        ),
        (
            json!({"tenant": "other", "scope": "admin"}),
            Some(("claim_mismatch", "claim tenant")),
        ),
        (json!({"tenant": "acme", "scope": "read admin"}), None),
        (json!({"tenant": "acme", "scp": ["admin"]}), None),
    ];
    for (extra, want) in cases {
        let t = key.token(&std_claims(extra.clone()));
        let (out, _) = get(&a, &h, "/admin/x", &[("authorization", &bearer(&t))]);
        match want {
            Some((error, detail)) => {
                assert_denied(&out, 403, error, detail);
                assert!(denied(&out)
                    .2
                    .unwrap()
                    .starts_with("Bearer error=\"insufficient_scope\""));
            }
            None => assert!(
                matches!(out, Outcome::Continue(Some(_))),
                "{extra}: {out:?}"
            ),
        }
    }
}

#[test]
fn spoofed_identity_headers_are_stripped_and_payload_forwarded() {
    let key = SigningKey::new("HS512", "h");
    let a = auth(&inline_config(
        &testkit::jwks(&[&key]),
        json!({"identity": {"client_id_claim": "azp", "payload_header": "x-nexus-jwt-payload"}}),
    ));
    let h = H::new();
    let (out, headers) = get(
        &a,
        &h,
        "/health",
        &[
            ("x-nexus-client-id", "admin"),
            ("x-nexus-tenant", "root"),
            ("x-nexus-jwt-payload", "e30"),
        ],
    );
    assert_eq!(out, Outcome::Continue(None));
    assert_eq!(headers.get("x-nexus-client-id"), None);
    assert_eq!(headers.get("x-nexus-tenant"), None);
    assert_eq!(headers.get("x-nexus-jwt-payload"), None);
    assert_eq!(h.metrics.value("nexus_auth.spoofed_headers_removed"), 3);

    let claims = std_claims(json!({"azp": "svc-7", "tenant": "acme"}));
    let t = key.token(&claims);
    let (_, headers) = get(
        &a,
        &h,
        "/api/x",
        &[
            ("authorization", &bearer(&t)),
            ("x-nexus-client-id", "admin"),
        ],
    );
    assert_eq!(headers.get(HEADER_CLIENT_ID).as_deref(), Some("svc-7"));
    let payload = URL_SAFE
        .decode(headers.get("x-nexus-jwt-payload").unwrap())
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), claims);
}

#[test]
fn identity_headers_can_be_turned_off_and_spoofed_ones_still_go() {
    let key = SigningKey::new("EdDSA", "e");
    let a = auth(&inline_config(
        &testkit::jwks(&[&key]),
        json!({"identity": {"headers": false, "filter_state": false}}),
    ));
    assert!(!a.publishes_filter_state());
    let h = H::new();
    let t = key.token(&std_claims(json!({"tenant": "acme"})));
    let (out, headers) = get(
        &a,
        &h,
        "/api/x",
        &[
            ("authorization", &bearer(&t)),
            ("x-nexus-client-id", "admin"),
            ("x-nexus-auth-method", "api_key"),
        ],
    );
    // The decision and the identity are the same; only the two identity headers stay unset.
    match out {
        Outcome::Continue(Some(id)) => assert_eq!(id.client_id, "alice"),
        other => panic!("{other:?}"),
    }
    assert_eq!(headers.get(HEADER_CLIENT_ID), None);
    assert_eq!(headers.get(HEADER_AUTH_METHOD), None);
    // Claim headers are configured per provider and still set.
    assert_eq!(headers.get("x-nexus-tenant").as_deref(), Some("acme"));
    assert_eq!(h.metrics.value("nexus_auth.spoofed_headers_removed"), 2);
    assert!(auth(&inline_config(&testkit::jwks(&[&key]), json!({}))).publishes_filter_state());
}

/// Counts verifications, to prove the cache skips them.
struct Counting(Rc<Cell<u32>>);

impl SignatureVerifier for Counting {
    fn verify(&self, alg: Alg, key: &KeyMaterial, message: &[u8], sig: &[u8]) -> bool {
        self.0.set(self.0.get() + 1);
        RingVerifier.verify(alg, key, message, sig)
    }
}

#[test]
fn reused_tokens_skip_verification_until_ttl_or_exp() {
    let key = SigningKey::new("RS256", "r");
    let count = Rc::new(Cell::new(0));
    let a = auth(&inline_config(
        &testkit::jwks(&[&key]),
        json!({"token_cache": {"max_entries": 64, "ttl_s": 100}}),
    ))
    .with_verifier(Box::new(Counting(count.clone())));
    let h = H::new();
    let t = key.token(&std_claims(json!({"exp": NOW + 1000, "tenant": "acme"})));
    for _ in 0..5 {
        let (out, headers) = get(&a, &h, "/api/x", &[("authorization", &bearer(&t))]);
        assert!(matches!(out, Outcome::Continue(Some(_))));
        assert_eq!(headers.get("x-nexus-tenant").as_deref(), Some("acme"));
    }
    assert_eq!(count.get(), 1);
    assert_eq!(h.metrics.value("nexus_auth.token_cache.hit"), 4);
    assert_eq!(h.metrics.value("nexus_auth.token_cache.miss"), 1);
    // The TTL bounds trust: after 100 s the token is verified again.
    h.advance(101);
    assert!(matches!(
        get(&a, &h, "/api/x", &[("authorization", &bearer(&t))]).0,
        Outcome::Continue(_)
    ));
    assert_eq!(count.get(), 2);
    // The per-worker cache compares whole tokens: a copy of the cached token with one byte of
    // its signature changed is verified (and fails), even when it lands on the cached entry's
    // hash slot (a collision, forced here by moving the entry there).
    let mut tampered = t.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    {
        let mut local = a.local.borrow_mut();
        let entry = local.remove(&local_key(&t)).unwrap();
        local.insert(local_key(&tampered), entry);
    }
    let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&tampered))]);
    assert_denied(&out, 401, "invalid_token", "signature verification failed");
    assert_eq!(count.get(), 3);
    // A token that shares the cached one's length and last 64 bytes lands on the same key
    // without forcing: a changed payload byte. Still compared in full, still verified.
    let mut forged = t.clone().into_bytes();
    let mid = t.find('.').unwrap() + 5;
    forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(local_key(&forged), local_key(&t));
    let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&forged))]);
    assert_eq!(denied(&out).0, 401, "{out:?}");
    // exp bounds it too (exp + skew), and an expired token is rejected, not served from cache.
    let short = key.token(&std_claims(json!({"exp": NOW + 150})));
    get(&a, &h, "/api/x", &[("authorization", &bearer(&short))]);
    h.advance(150); // now NOW+251 > exp + 60
    let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&short))]);
    assert_denied(&out, 401, "invalid_token", "expired");
    // Only one slot: two tokens evict each other.
    let one = auth(&inline_config(
        &testkit::jwks(&[&key]),
        json!({"token_cache": {"max_entries": 1}}),
    ));
    let h = H::new();
    let t2 = key.token(&std_claims(json!({"sub": "bob"})));
    for t in [&t, &t2, &t, &t2] {
        get(&one, &h, "/api/x", &[("authorization", &bearer(t))]);
    }
    assert_eq!(h.metrics.value("nexus_auth.token_cache.miss"), 4);
    assert_eq!(
        h.shared
            .0
            .borrow()
            .keys()
            .filter(|k| k.contains("tok."))
            .count(),
        1
    );
}

fn remote_config(extra: Value) -> Value {
    let mut c = json!({
        "providers": {"corp": {"issuer": ISS,
            "jwks": {"remote": {"cluster": "jwks", "uri": "http://id.example.com/keys", "refresh_period_s": 60}}}},
        "rules": [{"name": "api", "requirement": {"jwt": {}}}],
        "jwks_refetch_min_interval_ms": 10000
    });
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        m.extend(e);
    }
    c
}

fn last_call(h: &H) -> u32 {
    h.callouts.calls.borrow().last().unwrap().token
}

#[test]
fn remote_jwks_cold_fetch_rotation_stale_and_unavailable() {
    let k1 = SigningKey::new("ES256", "k1");
    let k2 = SigningKey::new("EdDSA", "k2");
    let a = auth(&remote_config(json!({})));
    let h = H::new();
    let t1 = k1.token(&std_claims(json!({})));
    let auth1 = bearer(&t1);
    // Cold: the request starts a fetch and waits.
    let (out, _) = get(&a, &h, "/x", &[("authorization", &auth1)]);
    assert_eq!(out, Outcome::Pause);
    {
        let calls = h.callouts.calls.borrow();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].cluster, "jwks");
        assert!(calls[0].headers.contains(&(":path".into(), "/keys".into())));
        assert!(calls[0]
            .headers
            .contains(&(":authority".into(), "id.example.com".into())));
    }
    // While in flight, another request waits too (no second fetch).
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &auth1)]).0,
        Outcome::Pause
    );
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    assert!(a.on_http_call_response(
        last_call(&h),
        Some(200),
        testkit::jwks(&[&k1]).as_bytes(),
        &h.env()
    ));
    let mut m = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/x"),
        ("authorization", &auth1),
    ]);
    assert!(matches!(
        a.on_request_headers(&mut m, &h.env(), false),
        Outcome::Continue(Some(_))
    ));
    assert_eq!(h.metrics.value("nexus_auth.jwks.refreshed"), 1);

    // Rotation: a token naming k2 makes the filter fetch again at once (the interval passed).
    h.advance(11);
    let t2 = k2.token(&std_claims(json!({})));
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &bearer(&t2))]).0,
        Outcome::Pause
    );
    assert_eq!(h.callouts.calls.borrow().len(), 2);
    a.on_http_call_response(
        last_call(&h),
        Some(200),
        testkit::jwks(&[&k1, &k2]).as_bytes(),
        &h.env(),
    );
    let mut m = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/x"),
        ("authorization", &bearer(&t2)),
    ]);
    assert!(matches!(
        a.on_request_headers(&mut m, &h.env(), false),
        Outcome::Continue(Some(_))
    ));

    // Rate limit: another unknown kid right after is refused without a fetch.
    let k3 = SigningKey::new("ES256", "k3");
    let (out, _) = get(
        &a,
        &h,
        "/x",
        &[("authorization", &bearer(&k3.token(&std_claims(json!({})))))],
    );
    assert_denied(&out, 401, "invalid_token", "unknown kid k3");
    assert_eq!(h.callouts.calls.borrow().len(), 2);

    // Periodic refresh on tick fails: keys are served stale.
    h.advance(61);
    a.on_tick(&h.env());
    assert_eq!(h.callouts.calls.borrow().len(), 3);
    a.on_http_call_response(last_call(&h), Some(500), b"", &h.env());
    assert_eq!(h.metrics.value("nexus_auth.jwks.refresh_failed"), 1);
    let fresh = k1.token(&std_claims(json!({"sub": "carol"})));
    assert!(matches!(
        get(&a, &h, "/x", &[("authorization", &bearer(&fresh))]).0,
        Outcome::Continue(Some(_))
    ));

    // A second worker (same shared data, own state) sees the keys without fetching.
    let b = auth(&remote_config(json!({})));
    let fresh2 = k2.token(&std_claims(json!({"sub": "dave"})));
    assert!(matches!(
        get(&b, &h, "/x", &[("authorization", &bearer(&fresh2))]).0,
        Outcome::Continue(Some(_))
    ));
    assert_eq!(h.callouts.calls.borrow().len(), 3);
}

#[test]
fn cold_jwks_failure_is_503() {
    let k1 = SigningKey::new("RS384", "k1");
    let a = auth(&remote_config(json!({})));
    let h = H::new();
    let t = bearer(&k1.token(&std_claims(json!({}))));
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    a.on_http_call_response(last_call(&h), None, b"", &h.env());
    let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/x"), ("authorization", &t)]);
    let out = a.on_request_headers(&mut m, &h.env(), false);
    assert_denied(
        &out,
        503,
        "jwks_unavailable",
        "no signing keys for provider corp",
    );
    // Within the refetch interval: 503 at once, no new fetch.
    let (out, _) = get(&a, &h, "/x", &[("authorization", &t)]);
    assert_denied(&out, 503, "jwks_unavailable", "JWKS fetch failed");
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    // A refused dispatch (unknown cluster) is also a decided 503.
    h.advance(11);
    h.callouts.refuse.set(true);
    let (out, _) = get(&a, &h, "/x", &[("authorization", &t)]);
    assert_denied(&out, 503, "jwks_unavailable", "corp");
    assert_eq!(h.metrics.value("nexus_auth.denied.jwks_unavailable"), 3);
}

#[test]
fn invalid_configuration_is_reported_with_paths() {
    let err = Auth::from_json(
        json!({"providers": {"corp": {"issuer": ISS, "jwks": {"inline": "{\"keys\": [{\"kty\": \"XX\"}]}"}}},
               "rules": [{"name": "r", "requirement": "allow"}]})
        .to_string()
        .as_bytes(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("$.providers.corp.jwks.inline: JWKS has no usable key"),
        "{err}"
    );
}

#[test]
fn a_fetch_never_answered_is_given_up_on_tick() {
    let k1 = SigningKey::new("ES256", "k1");
    let a = auth(&remote_config(json!({})));
    let h = H::new();
    let t = bearer(&k1.token(&std_claims(json!({}))));
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    // The callout is cancelled (its request went away): no answer ever comes.
    assert!(!a.on_tick(&h.env()), "not yet past the deadline");
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    h.advance(8); // 5 s timeout + 2 s margin
    assert!(a.on_tick(&h.env()), "the tick gives the fetch up");
    assert_eq!(h.metrics.value("nexus_auth.jwks.refresh_failed"), 1);
    // Waiting requests are re-decided: not waiting forever.
    let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/x"), ("authorization", &t)]);
    assert!(!matches!(
        a.on_request_headers(&mut m, &h.env(), false),
        Outcome::Pause
    ));
}

#[test]
fn verified_tokens_are_not_forwarded_unless_asked() {
    let key = SigningKey::new("EdDSA", "k1");
    let token = key.token(&std_claims(json!({})));
    let h = H::new();
    let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
    let (out, m) = get(
        &a,
        &h,
        "/api/x",
        &[("authorization", &bearer(&token)), ("x-keep", "1")],
    );
    assert!(matches!(out, Outcome::Continue(Some(_))), "{out:?}");
    assert_eq!(m.get("authorization"), None);
    assert_eq!(m.get("x-keep").as_deref(), Some("1"));

    let (_, m) = get(&a, &h, "/api/x", &[("x-token", &format!("Token {token}"))]);
    assert_eq!(m.get("x-token"), None);

    let path = format!("/api/x?a=1&access_token={token}&b=2");
    let (out, m) = get(&a, &h, &path, &[]);
    assert!(matches!(out, Outcome::Continue(Some(_))), "{out:?}");
    assert_eq!(m.get(":path").as_deref(), Some("/api/x?a=1&b=2"));
    let (_, m) = get(&a, &h, &format!("/api/x?access_token={token}"), &[]);
    assert_eq!(m.get(":path").as_deref(), Some("/api/x"));

    // A cookie carries other cookies too: it stays.
    let cookie = format!("theme=dark; session={token}");
    let (out, m) = get(&a, &h, "/api/x", &[("cookie", &cookie)]);
    assert!(matches!(out, Outcome::Continue(Some(_))), "{out:?}");
    assert_eq!(m.get("cookie"), Some(cookie));

    let mut cfg = inline_config(&testkit::jwks(&[&key]), json!({}));
    cfg["providers"]["corp"]["forward"] = json!(true);
    let a = auth(&cfg);
    let (_, m) = get(&a, &h, "/api/x", &[("authorization", &bearer(&token))]);
    assert_eq!(m.get("authorization"), Some(bearer(&token)));

    // A denied request is not touched (the upstream never sees it anyway).
    let (out, _) = get(&a, &h, "/api/x", &[("authorization", "Bearer nope")]);
    assert!(matches!(out, Outcome::Respond(_)));
}

#[test]
fn a_worker_waits_for_another_workers_cold_fetch_instead_of_503() {
    let k1 = SigningKey::new("ES256", "k1");
    let h = H::new();
    let (a, b) = (
        auth(&remote_config(json!({}))),
        auth(&remote_config(json!({}))),
    );
    let t = bearer(&k1.token(&std_claims(json!({}))));
    // Worker A wins the fetch; worker B, cold, must wait for it, not answer 503.
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    assert_eq!(
        get(&b, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    assert_eq!(
        h.callouts.calls.borrow().len(),
        1,
        "one fetch for both workers"
    );
    assert!(!b.on_tick(&h.env()), "nothing new for B yet");
    a.on_http_call_response(
        last_call(&h),
        Some(200),
        testkit::jwks(&[&k1]).as_bytes(),
        &h.env(),
    );
    // B's next tick picks the keys up from shared data and tells the adapter to resume.
    assert!(b.on_tick(&h.env()));
    let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/x"), ("authorization", &t)]);
    assert!(matches!(
        b.on_request_headers(&mut m, &h.env(), false),
        Outcome::Continue(Some(_))
    ));

    // A failed fetch elsewhere is final: a cold worker then answers 503 at once (no waiting
    // for a fetch that is over).
    let k2 = SigningKey::new("ES256", "k2");
    let h = H::new();
    let (a, b) = (
        auth(&remote_config(json!({}))),
        auth(&remote_config(json!({}))),
    );
    let t = bearer(&k2.token(&std_claims(json!({}))));
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    a.on_http_call_response(last_call(&h), Some(503), b"", &h.env());
    let (out, _) = get(&b, &h, "/x", &[("authorization", &t)]);
    assert_denied(
        &out,
        503,
        "jwks_unavailable",
        "no signing keys for provider corp",
    );

    // A fetch elsewhere that never answers stops holding requests after its timeout.
    let h = H::new();
    let (a, b) = (
        auth(&remote_config(json!({}))),
        auth(&remote_config(json!({}))),
    );
    assert_eq!(
        get(&a, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    assert_eq!(
        get(&b, &h, "/x", &[("authorization", &t)]).0,
        Outcome::Pause
    );
    h.advance(7);
    let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/x"), ("authorization", &t)]);
    assert!(!matches!(
        b.on_request_headers(&mut m, &h.env(), false),
        Outcome::Pause
    ));
}

#[test]
fn es384_rejects_tampered_truncated_and_foreign_signatures() {
    let key = SigningKey::new("ES384", "k384");
    let other = SigningKey::new("ES384", "k384");
    let a = auth(&inline_config(&testkit::jwks(&[&key]), json!({})));
    let h = H::new();
    let good = key.token(&std_claims(json!({})));
    assert!(matches!(
        get(&a, &h, "/api/x", &[("authorization", &bearer(&good))]).0,
        Outcome::Continue(Some(_))
    ));
    let (head, sig) = good.rsplit_once('.').unwrap();
    use base64::Engine;
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    assert_eq!(raw.len(), 96, "ES384 signatures are r || s, 48 bytes each");
    raw[10] ^= 1;
    let flipped = format!(
        "{head}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
    );
    let short = format!(
        "{head}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..95])
    );
    // Same kid, another key: a signature that is valid, but not under the published key.
    let foreign = other.token(&std_claims(json!({"sub": "mallory"})));
    for bad in [flipped, short, foreign] {
        let (out, _) = get(&a, &h, "/api/x", &[("authorization", &bearer(&bad))]);
        assert_denied(&out, 401, "invalid_token", "signature verification failed");
    }
}

#[test]
fn an_ec_key_off_its_curve_is_not_prepared_and_verifies_nothing() {
    for alg in ["ES256", "ES384"] {
        let key = SigningKey::new(alg, "k");
        let mut jwk = key.jwk();
        // Flip a bit of y: the point leaves the curve.
        let y = URL_SAFE.decode(jwk["y"].as_str().unwrap()).unwrap();
        let mut bad_y = y.clone();
        bad_y[5] ^= 0x20;
        jwk["y"] = json!(URL_SAFE.encode(&bad_y));
        let doc = json!({"keys": [jwk, key.jwk()]}).to_string();
        let set = jwks::KeySet::parse(doc.as_bytes()).unwrap();
        let [off, on] = &set.keys[..] else {
            panic!("two keys");
        };
        assert!(
            matches!(&off.material, KeyMaterial::Ec { prepared: None, .. }),
            "{alg}"
        );
        assert!(matches!(
            &on.material,
            KeyMaterial::Ec {
                prepared: Some(_),
                ..
            }
        ));
        let message = b"header.payload";
        let sig = key.sign(message);
        let alg = verify::Alg::parse(alg).unwrap();
        assert!(RingVerifier.verify(alg, &on.material, message, &sig));
        assert!(!RingVerifier.verify(alg, &off.material, message, &sig));
        // Neither curve's key verifies the other algorithm.
        let other = if alg == verify::Alg::Es256 {
            verify::Alg::Es384
        } else {
            verify::Alg::Es256
        };
        assert!(!RingVerifier.verify(other, &on.material, message, &sig));
    }
}
