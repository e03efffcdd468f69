//! Sign-in sessions in real Envoy: the nexus-auth filter checks a session cookie against the
//! real sessions service (sessions in Redis), sets the identity, sends browsers to sign in and
//! API clients a 401, refuses a tampered cookie, drops a revoked session in two Envoys through
//! the cache-coherency event stream (long before their table's TTL), answers 503 while Redis
//! is down (never a pass), and keeps sessions across a restart of the service.

use std::time::{Duration, Instant};

use nexus_cache_service::storage::RedisNamespace;
use nexus_tests::cache_service::RealReplica;
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::sessions_service::SessionsServer;
use nexus_tests::upstream::Upstream;
use serde_json::{json, Value};

const REDIS: &str = "redis://127.0.0.1:6379/0";
/// How long each Envoy trusts a session without asking the service (`cache_ttl_s`), without
/// a revocation stream.
const CACHE_TTL_S: u64 = 2;
/// With the revocation stream: far longer than the test waits for a revocation.
const STREAM_CACHE_TTL_S: u64 = 300;
const LOOKUPS: &str = "wasmcustom.nexus_auth.session.lookups";

fn config(revocations: bool) -> String {
    let mut sessions = json!({"cluster": "sessions", "sign_in_path": "/_nexus/sign-in",
                              "headers": ["x-nexus-email"], "cache_ttl_s": CACHE_TTL_S});
    if revocations {
        sessions["revocations_cluster"] = json!("nexus-cache");
        sessions["cache_ttl_s"] = json!(STREAM_CACHE_TTL_S);
    }
    json!({
        "sessions": sessions,
        "rules": [{"name": "app", "match": {"path": {"prefix": "/app/"}},
                   "requirement": {"session": {}}}]
    })
    .to_string()
}

/// An Envoy checking sessions at `sessions`, following revocations on the cache service at
/// `cache_port` if given.
fn envoy(api: &Upstream, sessions: &SessionsServer, cache_port: Option<u16>) -> Envoy {
    Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-auth".into(),
            module: nexus_tests::filter_module("nexus_auth").unwrap(),
            config: config(cache_port.is_some()),
        }],
        upstreams: vec![
            ("api".into(), api.port()),
            ("sessions".into(), sessions.port),
        ],
        grpc_clusters: cache_port
            .map(|p| vec![("nexus-cache".to_string(), p)])
            .unwrap_or_default(),
        ..Default::default()
    })
    .unwrap()
}

fn call(envoy: &Envoy, cookie: Option<&str>, accept: &str) -> client::Response {
    let cookie = cookie.map(|id| format!("theme=dark; nexus-session={id}"));
    let mut headers = vec![
        ("x-nexus-upstream", "api"),
        ("accept", accept),
        ("x-nexus-email", "forged@example.com"),
    ];
    if let Some(c) = &cookie {
        headers.push(("cookie", c));
    }
    client::get(envoy.port, "/app/page?x=1", &headers).unwrap()
}

fn body(r: &client::Response) -> Value {
    r.json().unwrap()
}

/// Asks until the answer is not 200 or `within` has passed; the last answer and how many
/// requests passed before it.
fn until_refused(envoy: &Envoy, id: &str, within: Duration) -> (client::Response, u32) {
    let start = Instant::now();
    let mut passed = 0;
    loop {
        let r = call(envoy, Some(id), "application/json");
        if r.status != 200 || start.elapsed() > within {
            return (r, passed);
        }
        passed += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether, within 10 s, a request with session `id` is answered without a lookup.
fn served_from_table(e: &Envoy, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let before = e.stat(LOOKUPS).unwrap();
        assert_eq!(call(e, Some(id), "application/json").status, 200);
        if e.stat(LOOKUPS).unwrap() == before {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_session_cookie_passes_with_its_identity_and_revocation_reaches_two_envoys() {
    let replica = RealReplica::start(REDIS, &RedisNamespace::default(), "sessions-e2e").unwrap();
    let sessions = SessionsServer::start(REDIS, None, Some(replica.service.clone())).unwrap();
    let api = Upstream::start("api").unwrap();
    let stream = Some(replica.port);
    let (a, b) = (
        envoy(&api, &sessions, stream),
        envoy(&api, &sessions, stream),
    );
    let id = sessions
        .create(
            "alice@example.com",
            &[("x-nexus-email", "alice@example.com")],
        )
        .unwrap();

    for e in [&a, &b] {
        let r = call(e, Some(&id), "text/html");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(req.header("x-nexus-client-id"), Some("alice@example.com"));
        assert_eq!(req.header("x-nexus-auth-method"), Some("session"));
        assert_eq!(req.header("x-nexus-email"), Some("alice@example.com"));
    }

    // No session: a browser is sent to sign in, an API client gets JSON.
    let r = call(&a, None, "text/html,application/xhtml+xml");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("/_nexus/sign-in?rd=/app/page%3Fx%3D1")
    );
    let r = call(&a, None, "application/json");
    assert_eq!(r.status, 401);
    assert_eq!(
        body(&r),
        json!({"error": "missing_credentials", "detail": "rule app requires credentials and the request carries none"})
    );
    // A forged header never reaches the upstream, and a tampered id is no session.
    assert_eq!(api.requests().len(), 2);
    let mut tampered = id.clone();
    tampered.replace_range(0..1, if id.starts_with('A') { "B" } else { "A" });
    let r = call(&a, Some(&tampered), "application/json");
    assert_eq!(
        (r.status, body(&r)),
        (
            401,
            json!({"error": "invalid_session", "detail": "the session is unknown, expired or revoked"})
        )
    );
    let r = call(&a, Some("not a session id!"), "application/json");
    assert_eq!(
        (r.status, body(&r)),
        (
            401,
            json!({"error": "invalid_session", "detail": "the nexus-session cookie is not a session id"})
        )
    );

    // Revoked: refused by both Envoys through the event stream, though each holds the session
    // in its table for 300 s more. First, each answers from its table (no lookup): its
    // stream is live (until then every request asks the service).
    for e in [&a, &b] {
        assert!(served_from_table(e, &id), "{}", e.log());
    }
    assert!(sessions.revoke(&id).unwrap());
    let bound = Duration::from_secs(3);
    for e in [&a, &b] {
        let (r, _) = until_refused(e, &id, bound);
        assert_eq!(
            (r.status, body(&r)),
            (
                401,
                json!({"error": "invalid_session", "detail": "the session is unknown, expired or revoked"})
            )
        );
    }
}

#[test]
fn redis_down_is_a_503_never_a_pass() {
    let mut redis = nexus_ratelimit_service::testkit::PrivateRedis::start();
    let sessions = SessionsServer::start(&redis.url(), None, None).unwrap();
    let api = Upstream::start("api").unwrap();
    let e = envoy(&api, &sessions, None);
    let (known, fresh) = (
        sessions.create("bob", &[]).unwrap(),
        sessions.create("carol", &[]).unwrap(),
    );
    assert_eq!(call(&e, Some(&known), "application/json").status, 200);
    redis.stop();
    let r = call(&e, Some(&fresh), "text/html");
    assert_eq!(
        (r.status, body(&r)),
        (
            503,
            json!({"error": "sessions_unavailable", "detail": "the sessions service answered status 503"})
        )
    );
    // The session this Envoy already knew passes from its table until the table's bound
    // (`cache_ttl_s`), then is refused too; the unconfirmed session never passed.
    let (r, passed) = until_refused(&e, &known, Duration::from_secs(CACHE_TTL_S + 2));
    assert_eq!(r.status, 503, "{}", r.text());
    let seen = api.requests();
    assert_eq!(seen.len(), 1 + passed as usize);
    assert!(seen
        .iter()
        .all(|q| q.header("x-nexus-client-id") == Some("bob")));
}

#[test]
fn sessions_survive_a_restart_of_the_service_and_of_envoy() {
    let prefix = format!("nexus-test:session-restart:{}:", std::process::id());
    let first = SessionsServer::start(REDIS, Some(&prefix), None).unwrap();
    let id = first.create("dave", &[]).unwrap();
    drop(first);
    let second = SessionsServer::start(REDIS, Some(&prefix), None).unwrap();
    let api = Upstream::start("api").unwrap();
    let e = envoy(&api, &second, None);
    let r = call(&e, Some(&id), "application/json");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(api.requests()[0].header("x-nexus-client-id"), Some("dave"));
    assert!(second.revoke(&id).unwrap());
}
