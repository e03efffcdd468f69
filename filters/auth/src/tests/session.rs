//! The `session` requirement: lookups, the shared table, revocation, sign-in redirects and
//! every refusal with its exact response.

use super::*;
use nexus_config::session::{revocation_key, LOOKUP_HEADER, LOOKUP_PATH};

const SID: &str = "s3ss10n-1d-0f-a11ce-aaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn session_auth() -> Auth {
    auth(&json!({
        "sessions": {"cluster": "nexus_sessions", "sign_in_path": "/_nexus/sign-in",
                     "headers": ["x-nexus-email"], "cache_ttl_s": 5},
        "rules": [{"name": "app", "match": {"path": {"prefix": "/app/"}},
                   "requirement": {"session": {}}},
                  {"name": "admin", "match": {"path": {"prefix": "/admin/"}},
                   "requirement": {"session": {"scopes": ["admin"]}}}]
    }))
}

fn cookie() -> String {
    format!("theme=dark; nexus-session={SID}")
}

fn identity_json(expires_at_s: u64) -> Vec<u8> {
    json!({"client_id": "alice@example.com", "scopes": ["openid", "email"],
           "headers": {"x-nexus-email": "alice@example.com", "x-not-allowed": "1"},
           "expires_at_s": expires_at_s})
    .to_string()
    .into_bytes()
}

/// A request with the session cookie, then the service's answer, then the re-decision.
fn looked_up(a: &Auth, h: &H, status: Option<u32>, body: &[u8]) -> (Outcome, MemHeaders) {
    let c = cookie();
    let (out, _) = get(a, h, "/app/x", &[("cookie", &c)]);
    assert_eq!(out, Outcome::Pause);
    assert!(a.on_http_call_response(last_call(h), status, body, &h.env()));
    let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/app/x"), ("cookie", &c)]);
    let out = a.on_request_headers(&mut m, &h.env(), false);
    (out, m)
}

#[test]
fn a_live_session_is_looked_up_once_and_sets_the_identity() {
    let (a, h) = (session_auth(), H::new());
    let (out, m) = looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
    let call = h.callouts.calls.borrow()[0].clone();
    assert_eq!(call.cluster, "nexus_sessions");
    assert!(call.headers.contains(&(":path".into(), LOOKUP_PATH.into())));
    assert!(call.headers.contains(&(LOOKUP_HEADER.into(), SID.into())));
    let id = Identity {
        client_id: "alice@example.com".into(),
        method: "session".into(),
    };
    assert_eq!(out, Outcome::Continue(Some(id.clone())));
    assert_eq!(
        m.get(HEADER_CLIENT_ID).as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(m.get(HEADER_AUTH_METHOD).as_deref(), Some("session"));
    assert_eq!(m.get("x-nexus-email").as_deref(), Some("alice@example.com"));
    // Only the configured headers: a session cannot set arbitrary request headers.
    assert_eq!(m.get("x-not-allowed"), None);
    // Then from the shared table, on any worker: no second lookup.
    let c = cookie();
    let (out, _) = get(&session_auth(), &h, "/app/y", &[("cookie", &c)]);
    assert_eq!(out, Outcome::Continue(Some(id)));
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    assert_eq!(h.metrics.value("nexus_auth.allowed.session"), 2);
}

#[test]
fn the_shared_table_is_asked_again_after_its_ttl() {
    let (a, h) = (session_auth(), H::new());
    looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
    h.advance(5);
    let c = cookie();
    let (out, _) = get(&a, &h, "/app/x", &[("cookie", &c)]);
    assert_eq!(out, Outcome::Pause);
    assert_eq!(h.callouts.calls.borrow().len(), 2);
}

#[test]
fn a_revoked_session_is_asked_for_again_at_once() {
    let (a, h) = (session_auth(), H::new());
    looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
    let key = revocation_key(&testkit::sha256_hex(SID));
    let other = revocation_key(&testkit::sha256_hex("someone-elses-session-id"));
    let keys = [
        key.as_str(),
        other.as_str(),
        "/lake/tables",
        "nexus-session:zz",
    ];
    assert_eq!(a.revoke_sessions(keys, &h.env()), 1);
    let (out, _) = looked_up(&a, &h, Some(404), br#"{"error":"unknown_session"}"#);
    assert_denied(
        &out,
        401,
        "invalid_session",
        "the session is unknown, expired or revoked",
    );
    assert_eq!(h.callouts.calls.borrow().len(), 2);
}

#[test]
fn an_unknown_session_is_401_and_remembered() {
    let (a, h) = (session_auth(), H::new());
    let (out, _) = looked_up(&a, &h, Some(404), b"");
    let (status, body, challenge) = denied(&out);
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "invalid_session", "detail": "the session is unknown, expired or revoked"})
    );
    assert_eq!(challenge, None);
    let c = cookie();
    let (again, _) = get(&a, &h, "/app/x", &[("cookie", &c)]);
    assert_eq!(denied(&again).0, 401);
    assert_eq!(h.callouts.calls.borrow().len(), 1);
}

#[test]
fn an_expired_session_is_401() {
    let (a, h) = (session_auth(), H::new());
    let (out, _) = looked_up(&a, &h, Some(200), &identity_json(NOW));
    assert_denied(&out, 401, "invalid_session", "unknown, expired or revoked");
}

#[test]
fn a_session_lacking_a_scope_is_403() {
    let (a, h) = (session_auth(), H::new());
    looked_up(&a, &h, Some(200), &identity_json(NOW + 60));
    let c = cookie();
    let (out, _) = get(&a, &h, "/admin/x", &[("cookie", &c)]);
    let (status, body, _) = denied(&out);
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": "insufficient_scope", "detail": "the session of alice@example.com lacks scope admin"})
    );
}

#[test]
fn a_tampered_cookie_is_refused_without_a_lookup() {
    let (a, h) = (session_auth(), H::new());
    for bad in [
        "short",
        "has spaces in it but is long",
        "dot.dot.dot.dot.dot.dot.dot",
    ] {
        let c = format!("nexus-session={bad}");
        let (out, _) = get(
            &a,
            &h,
            "/app/x",
            &[("cookie", &c), ("accept", "application/json")],
        );
        let (status, body, _) = denied(&out);
        assert_eq!(status, 401, "{bad}");
        assert_eq!(
            body,
            json!({"error": "invalid_session", "detail": "the nexus-session cookie is not a session id"})
        );
    }
    assert!(h.callouts.calls.borrow().is_empty());
}

#[test]
fn an_unreachable_store_is_503_never_a_pass() {
    let cases: [(Option<u32>, &[u8], &str); 4] = [
        (
            Some(503),
            br#"{"error":"unavailable"}"#,
            "the sessions service answered status 503",
        ),
        (
            None,
            b"",
            "the sessions service did not answer within 500 ms",
        ),
        (
            Some(200),
            b"<html>oops</html>",
            "the sessions service answered garbage",
        ),
        (
            Some(200),
            br#"{"client_id":7}"#,
            "the sessions service answered garbage",
        ),
    ];
    for (status, body, detail) in cases {
        let (a, h) = (session_auth(), H::new());
        let (out, m) = looked_up(&a, &h, status, body);
        assert_denied(&out, 503, "sessions_unavailable", detail);
        assert_eq!(m.get(HEADER_CLIENT_ID), None);
        // Remembered for a second (an outage is not a lookup storm), then asked again.
        let c = cookie();
        assert_eq!(denied(&get(&a, &h, "/app/x", &[("cookie", &c)]).0).0, 503);
        h.advance(1);
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
    }
    let (a, h) = (session_auth(), H::new());
    h.callouts.refuse.set(true);
    let c = cookie();
    let (out, _) = get(&a, &h, "/app/x", &[("cookie", &c)]);
    assert_denied(
        &out,
        503,
        "sessions_unavailable",
        "cannot reach the sessions service (cluster nexus_sessions)",
    );
}

#[test]
fn a_lookup_never_answered_is_given_up_on_a_tick() {
    let (a, h) = (session_auth(), H::new());
    let c = cookie();
    assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
    // A second request for the same session waits for the same lookup.
    assert_eq!(get(&a, &h, "/app/y", &[("cookie", &c)]).0, Outcome::Pause);
    assert_eq!(h.callouts.calls.borrow().len(), 1);
    assert!(!a.on_tick(&h.env()));
    h.advance(4);
    assert!(a.on_tick(&h.env()));
    let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/app/x"), ("cookie", &c)]);
    let out = a.on_request_headers(&mut m, &h.env(), false);
    assert_denied(&out, 503, "sessions_unavailable", "gave no answer");
}

#[test]
fn browsers_are_sent_to_sign_in_and_api_clients_get_401() {
    let (a, h) = (session_auth(), H::new());
    let html = [("accept", "text/html,application/xhtml+xml")];
    let (out, _) = get(&a, &h, "/app/x?a=1&b=é", &html);
    let Outcome::Respond(r) = out else {
        panic!("expected a redirect")
    };
    assert_eq!(r.status, 302);
    assert!(r.headers.contains(&(
        "location".into(),
        "/_nexus/sign-in?rd=/app/x%3Fa%3D1%26b%3D%C3%A9".into()
    )));
    assert!(r
        .headers
        .contains(&("cache-control".into(), "no-store".into())));
    // An unknown session sends a browser to sign in again too.
    looked_up(&a, &h, Some(404), b"");
    let c = cookie();
    let (out, _) = get(&a, &h, "/app/x", &[("cookie", &c), html[0]]);
    assert_eq!(denied(&out).0, 302);
    // API clients: JSON.
    let (out, _) = get(&a, &h, "/app/x", &[("accept", "application/json")]);
    assert_denied(
        &out,
        401,
        "missing_credentials",
        "rule app requires credentials",
    );
}

#[test]
fn a_forged_session_header_never_reaches_the_upstream() {
    let (a, h) = (session_auth(), H::new());
    let (_, m) = get(&a, &h, "/app/x", &[("x-nexus-email", "root@example.com")]);
    assert_eq!(m.get("x-nexus-email"), None);
}

mod revocation_feed {
    use super::*;
    use nexus_proto::cache::{event, Event, Flush, Hello, Invalidation};
    use prost::Message;

    fn feed_auth() -> Auth {
        auth(&json!({
            "sessions": {"cluster": "nexus_sessions", "cache_ttl_s": 300,
                         "revocations_cluster": "nexus_cache"},
            "rules": [{"name": "app", "requirement": {"session": {}}}]
        }))
    }

    fn event(kind: event::Kind) -> Vec<u8> {
        Event { kind: Some(kind) }.encode_to_vec()
    }

    fn hello() -> Vec<u8> {
        event(event::Kind::Hello(Hello::default()))
    }

    /// Opens the stream as token 900 and makes it live.
    fn live(a: &Auth, h: &H) {
        let FeedAction::Open { cluster, request } = a.revocation_feed_tick(0) else {
            panic!("the first tick opens the stream")
        };
        assert_eq!(cluster, "nexus_cache");
        assert!(!request.is_empty());
        a.revocation_feed_opened(Some(900), 0);
        assert_eq!(a.revocation_feed_tick(10), FeedAction::Nothing);
        assert_eq!(
            a.revocation_feed_message(900, &hello(), &h.env()),
            Some(false)
        );
    }

    fn lookups(h: &H) -> usize {
        h.callouts.calls.borrow().len()
    }

    #[test]
    fn until_the_stream_is_live_every_request_asks_the_service() {
        let (a, h) = (feed_auth(), H::new());
        looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
        let c = cookie();
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
        assert_eq!(lookups(&h), 2);
    }

    #[test]
    fn a_revocation_event_drops_the_session_at_once() {
        let (a, h) = (feed_auth(), H::new());
        live(&a, &h);
        looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
        let c = cookie();
        assert!(matches!(
            get(&a, &h, "/app/x", &[("cookie", &c)]).0,
            Outcome::Continue(Some(_))
        ));
        assert_eq!(lookups(&h), 1);
        let revoked = event(event::Kind::Invalidation(Invalidation {
            keys: vec![revocation_key(&testkit::sha256_hex(SID))],
            ..Default::default()
        }));
        assert_eq!(
            a.revocation_feed_message(900, &revoked, &h.env()),
            Some(false)
        );
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
        assert_eq!(lookups(&h), 2);
        assert_eq!(h.metrics.value("nexus_auth.session.revoked"), 1);
    }

    #[test]
    fn a_flush_or_a_broken_stream_empties_and_distrusts_the_table() {
        let (a, h) = (feed_auth(), H::new());
        live(&a, &h);
        looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
        let flush = event(event::Kind::Flush(Flush {
            reason: "redis pub/sub reconnected".into(),
        }));
        a.revocation_feed_message(900, &flush, &h.env());
        let c = cookie();
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
        // Broken: not trusted, reconnected after the backoff; its Hello empties the table.
        looked_up(&a, &h, Some(200), &identity_json(NOW + 3600));
        assert!(a.revocation_feed_closed(900, 1_000));
        assert!(!a.revocation_feed_closed(900, 1_000), "already closed");
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
        assert_eq!(a.revocation_feed_tick(1_050), FeedAction::Nothing);
        assert!(matches!(
            a.revocation_feed_tick(1_100),
            FeedAction::Open { .. }
        ));
        a.revocation_feed_opened(Some(901), 1_100);
        a.revocation_feed_message(901, &hello(), &h.env());
        assert_eq!(h.metrics.value("nexus_auth.session.table_cleared"), 3);
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
    }

    #[test]
    fn an_answer_to_a_lookup_sent_before_a_revocation_is_not_kept() {
        let (a, h) = (feed_auth(), H::new());
        live(&a, &h);
        let c = cookie();
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
        // The revocation arrives while the lookup (which may have read the store before it)
        // is on the wire.
        let revoked = event(event::Kind::Invalidation(Invalidation {
            keys: vec![revocation_key(&testkit::sha256_hex(SID))],
            ..Default::default()
        }));
        a.revocation_feed_message(900, &revoked, &h.env());
        let body = identity_json(NOW + 3600);
        assert!(a.on_http_call_response(last_call(&h), Some(200), &body, &h.env()));
        let mut m = MemHeaders::new(&[(":method", "GET"), (":path", "/app/x"), ("cookie", &c)]);
        let waited = a.on_request_headers(&mut m, &h.env(), false);
        assert!(matches!(waited, Outcome::Continue(Some(_))), "{waited:?}");
        // Not kept: the next request asks again.
        assert_eq!(get(&a, &h, "/app/x", &[("cookie", &c)]).0, Outcome::Pause);
        assert_eq!(lookups(&h), 2);
    }

    #[test]
    fn garbage_on_the_stream_asks_to_resubscribe_and_other_streams_are_not_ours() {
        let (a, h) = (feed_auth(), H::new());
        live(&a, &h);
        assert_eq!(
            a.revocation_feed_message(900, b"\xff\xff\xff", &h.env()),
            Some(true)
        );
        assert_eq!(a.revocation_feed_message(77, &hello(), &h.env()), None);
        assert!(!a.revocation_feed_closed(77, 0));
        assert_eq!(session_auth().revocation_feed_tick(0), FeedAction::Nothing);
    }
}
