//! The `oauth2` requirement: opaque tokens checked by the sessions service, the answers kept
//! per token, and every refusal with its exact response.

use super::*;
use nexus_config::session::TOKEN_HEADER;

const TOKEN: &str = "gho_16C7e42F292c6912E7710c838347Ae178B4a";

fn oauth2_auth() -> Auth {
    auth(&json!({
        "introspection": {"cluster": "nexus_sessions", "providers": {
            "github": {"headers": ["x-nexus-github-login"], "cache_ttl_s": 60,
                       "negative_cache_ttl_s": 5}}},
        "rules": [{"name": "repos", "match": {"path": {"prefix": "/repos/"}},
                   "requirement": {"oauth2": {"providers": ["github"]}}},
                  {"name": "admin", "match": {"path": {"prefix": "/admin/"}},
                   "requirement": {"oauth2": {"scopes": ["admin:org"]}}}]
    }))
}

fn active(expires_at_s: u64) -> Vec<u8> {
    json!({"client_id": "octocat", "scopes": ["repo", "read:org"],
           "headers": {"x-nexus-github-login": "octocat", "x-not-allowed": "1"},
           "expires_at_s": expires_at_s})
    .to_string()
    .into_bytes()
}

/// A request with the token, then the service's answer, then the re-decision.
fn introspected(a: &Auth, h: &H, status: Option<u32>, body: &[u8]) -> (Outcome, MemHeaders) {
    let b = bearer(TOKEN);
    let (out, _) = get(a, h, "/repos/x", &[("authorization", &b)]);
    assert_eq!(out, Outcome::Pause);
    assert!(a.on_http_call_response(last_call(h), status, body, &h.env()));
    let mut m = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/repos/x"),
        ("authorization", &b),
    ]);
    let out = a.on_request_headers(&mut m, &h.env(), false);
    (out, m)
}

#[test]
fn an_active_token_is_introspected_once_and_sets_the_identity() {
    let (a, h) = (oauth2_auth(), H::new());
    let (out, m) = introspected(&a, &h, Some(200), &active(NOW + 3600));
    let call = h.callouts.calls.borrow()[0].clone();
    assert_eq!(call.cluster, "nexus_sessions");
    assert!(call
        .headers
        .contains(&(":path".into(), "/sessions/v1/introspect/github".into())));
    assert!(call.headers.contains(&(TOKEN_HEADER.into(), TOKEN.into())));
    let id = Identity {
        client_id: "octocat".into(),
        method: "oauth2:github".into(),
    };
    assert_eq!(out, Outcome::Continue(Some(id.clone())));
    assert_eq!(m.get(HEADER_CLIENT_ID).as_deref(), Some("octocat"));
    assert_eq!(m.get(HEADER_AUTH_METHOD).as_deref(), Some("oauth2:github"));
    assert_eq!(m.get("x-nexus-github-login").as_deref(), Some("octocat"));
    assert_eq!(m.get("x-not-allowed"), None);
    // The upstream never sees the token.
    assert_eq!(m.get("authorization"), None);
    // Then from the shared table, on any worker: no second call.
    let b = bearer(TOKEN);
    let (out, _) = get(&oauth2_auth(), &h, "/repos/y", &[("authorization", &b)]);
    assert_eq!(out, Outcome::Continue(Some(id)));
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    assert_eq!(h.metrics.value("nexus_auth.allowed.oauth2"), 2);
}

#[test]
fn an_answer_is_kept_until_the_tokens_exp_or_the_ttl_whichever_first() {
    // exp in 10 s, ttl 60 s: asked again after 10 s.
    let (a, h) = (oauth2_auth(), H::new());
    introspected(&a, &h, Some(200), &active(NOW + 10));
    let b = bearer(TOKEN);
    h.advance(9);
    assert!(matches!(
        get(&a, &h, "/repos/x", &[("authorization", &b)]).0,
        Outcome::Continue(Some(_))
    ));
    h.advance(1);
    assert_eq!(
        get(&a, &h, "/repos/x", &[("authorization", &b)]).0,
        Outcome::Pause
    );
    // exp in a day, ttl 60 s: asked again after 60 s.
    let (a, h) = (oauth2_auth(), H::new());
    introspected(&a, &h, Some(200), &active(NOW + 86_400));
    h.advance(59);
    assert!(matches!(
        get(&a, &h, "/repos/x", &[("authorization", &b)]).0,
        Outcome::Continue(Some(_))
    ));
    h.advance(1);
    assert_eq!(
        get(&a, &h, "/repos/x", &[("authorization", &b)]).0,
        Outcome::Pause
    );
    assert_eq!(h.callouts.calls.borrow().len(), 2);
}

#[test]
fn an_inactive_token_is_401_and_remembered_briefly() {
    let (a, h) = (oauth2_auth(), H::new());
    let (out, m) = introspected(&a, &h, Some(404), br#"{"error":"inactive_token"}"#);
    let (status, body, challenge) = denied(&out);
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "invalid_token",
               "detail": "the token is not active (introspected by provider github)"})
    );
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"the token is not active (introspected by provider github)\"")
    );
    assert_eq!(m.get(HEADER_CLIENT_ID), None);
    let b = bearer(TOKEN);
    h.advance(4);
    assert_eq!(
        denied(&get(&a, &h, "/repos/x", &[("authorization", &b)]).0).0,
        401
    );
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    h.advance(1);
    assert_eq!(
        get(&a, &h, "/repos/x", &[("authorization", &b)]).0,
        Outcome::Pause
    );
}

#[test]
fn a_token_lacking_a_scope_is_403() {
    let (a, h) = (oauth2_auth(), H::new());
    introspected(&a, &h, Some(200), &active(NOW + 60));
    let b = bearer(TOKEN);
    let (out, _) = get(&a, &h, "/admin/x", &[("authorization", &b)]);
    assert_denied(
        &out,
        403,
        "insufficient_scope",
        "token lacks scope admin:org",
    );
}

#[test]
fn no_token_is_401_without_a_call() {
    let (a, h) = (oauth2_auth(), H::new());
    let (out, _) = get(&a, &h, "/repos/x", &[]);
    assert_denied(
        &out,
        401,
        "missing_credentials",
        "rule repos requires credentials and the request carries none",
    );
    assert!(h.callouts.calls.borrow().is_empty());
}

#[test]
fn a_service_that_cannot_confirm_is_503_never_a_pass() {
    let timeout = br#"{"error":"introspection_unavailable","detail":"provider github: https://api.github.com/applications/Iv1.x/token did not answer within 2s"}"#;
    let cases: [(Option<u32>, &[u8], &str); 4] = [
        (
            Some(503),
            timeout,
            "the sessions service answered status 503: provider github: https://api.github.com/applications/Iv1.x/token did not answer within 2s",
        ),
        (None, b"", "the sessions service did not answer within 3000 ms"),
        (
            Some(200),
            b"<html>",
            "the sessions service answered garbage (expected value at line 1 column 1)",
        ),
        (Some(500), b"oops", "the sessions service answered status 500"),
    ];
    for (status, body, detail) in cases {
        let (a, h) = (oauth2_auth(), H::new());
        let (out, m) = introspected(&a, &h, status, body);
        let (code, json, _) = denied(&out);
        assert_eq!(code, 503);
        assert_eq!(
            json,
            json!({"error": "introspection_unavailable", "detail": detail})
        );
        assert_eq!(m.get(HEADER_CLIENT_ID), None);
    }
    let (a, h) = (oauth2_auth(), H::new());
    h.callouts.refuse.set(true);
    let b = bearer(TOKEN);
    let (out, _) = get(&a, &h, "/repos/x", &[("authorization", &b)]);
    assert_denied(
        &out,
        503,
        "introspection_unavailable",
        "cannot reach the sessions service (cluster nexus_sessions)",
    );
}

#[test]
fn an_introspection_never_answered_is_given_up_on_a_tick() {
    let (a, h) = (oauth2_auth(), H::new());
    let b = bearer(TOKEN);
    assert_eq!(
        get(&a, &h, "/repos/x", &[("authorization", &b)]).0,
        Outcome::Pause
    );
    assert_eq!(
        get(&a, &h, "/repos/y", &[("authorization", &b)]).0,
        Outcome::Pause
    );
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    assert!(a.needs_ticks());
    h.advance(6);
    assert!(a.on_tick(&h.env()));
    let mut m = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/repos/x"),
        ("authorization", &b),
    ]);
    let out = a.on_request_headers(&mut m, &h.env(), false);
    assert_denied(&out, 503, "introspection_unavailable", "gave no answer");
}

#[test]
fn forged_identity_headers_never_reach_the_upstream() {
    let (a, h) = (oauth2_auth(), H::new());
    let (_, m) = get(&a, &h, "/repos/x", &[("x-nexus-github-login", "root")]);
    assert_eq!(m.get("x-nexus-github-login"), None);
}

#[test]
fn an_oauth2_rule_needs_introspection() {
    let err = Auth::from_json(
        br#"{"rules":[{"name":"a","requirement":{"oauth2":{"providers":["github"]}}}]}"#,
    )
    .err()
    .unwrap();
    assert_eq!(err.0[0].path, "$.rules[0].requirement.oauth2");
    let err = Auth::from_json(
        br#"{"introspection":{"cluster":"c","providers":{"gh":{}}},
             "rules":[{"name":"a","requirement":{"oauth2":{"providers":["github"]}}}]}"#,
    )
    .err()
    .unwrap();
    assert_eq!(err.0[0].path, "$.rules[0].requirement.oauth2.providers[0]");
    assert_eq!(err.0[0].message, "unknown provider \"github\" (known: gh)");
}
