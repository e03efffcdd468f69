//! The sessions service: every scenario on memory and on the machine's Redis
//! (`every_backend!`), then what only Redis shows (a restart keeps sessions, an outage is a
//! 503), the HTTP answers, and revocation reaching the cache-coherency event stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use nexus_cache_service::bus::MemoryBus;
use nexus_cache_service::storage::{system_clock, MemoryStorage as CacheMemory};
use nexus_cache_service::CacheService;
use nexus_config::session::{revocation_key, SessionIdentity, LOOKUP_HEADER, LOOKUP_PATH};
use nexus_proto::cache::event;
use nexus_sessions_service::http::{route, Reply, CREATE_PATH, REVOKE_PATH};
use nexus_sessions_service::storage::{MemoryStorage, RedisStorage, SessionStorage};
use nexus_sessions_service::{id_hash, Config, NewSession, SessionService};
use serde_json::json;

const TOKEN: &str = "adm1n-t0ken";

fn config() -> Config {
    Config {
        ttl: Duration::from_secs(86_400),
        admin_token: Some(TOKEN.into()),
    }
}

fn alice() -> NewSession {
    NewSession {
        client_id: "alice@example.com".into(),
        scopes: vec!["openid".into()],
        headers: [("x-nexus-email".to_string(), "alice@example.com".to_string())].into(),
    }
}

fn now_s() -> u64 {
    system_clock()() / 1000
}

fn memory() -> MemoryStorage {
    MemoryStorage::new(system_clock())
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "nexus-test:session:{}:{}:{}:",
        std::process::id(),
        system_clock()(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails (never skips) when the machine's Redis is not there.
fn shared_redis(prefix: &str) -> RedisStorage {
    let ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false);
    assert!(ok, "Redis is not answering on 127.0.0.1:6379");
    RedisStorage::new("redis://127.0.0.1:6379/0", prefix, Duration::from_secs(2)).unwrap()
}

fn redis() -> RedisStorage {
    shared_redis(&unique_prefix())
}

macro_rules! every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod on_memory {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::memory()).await; } )*
        }
        mod on_redis {
            $( #[tokio::test] async fn $scenario() { super::$scenario(super::redis()).await; } )*
        }
    };
}

every_backend!(
    a_created_session_is_found_by_its_id,
    an_unknown_id_is_no_session,
    a_revoked_session_is_gone,
    an_expired_session_is_gone,
);

async fn a_created_session_is_found_by_its_id(s: impl SessionStorage) {
    let service = SessionService::new(s, None, config());
    let (id, made) = service.create(alice()).await.unwrap();
    assert_eq!(id.len(), 43, "32 random bytes, base64url");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let expires = made.expires_at_s;
    assert!((now_s() + 86_399..=now_s() + 86_400).contains(&expires));
    let found = service.lookup(&id).await.unwrap().unwrap();
    assert_eq!(
        found,
        SessionIdentity {
            client_id: "alice@example.com".into(),
            scopes: vec!["openid".into()],
            headers: [("x-nexus-email".to_string(), "alice@example.com".to_string())].into(),
            expires_at_s: expires,
        }
    );
    let (other, _) = service.create(alice()).await.unwrap();
    assert_ne!(id, other);
}

async fn an_unknown_id_is_no_session(s: impl SessionStorage) {
    let service = SessionService::new(s, None, config());
    assert_eq!(
        service.lookup("no-such-session-id-at-all").await.unwrap(),
        None
    );
}

async fn a_revoked_session_is_gone(s: impl SessionStorage) {
    let service = SessionService::new(s, None, config());
    let (id, _) = service.create(alice()).await.unwrap();
    assert!(service.revoke(&id).await.unwrap());
    assert_eq!(service.lookup(&id).await.unwrap(), None);
    assert!(!service.revoke(&id).await.unwrap());
}

async fn an_expired_session_is_gone(s: impl SessionStorage) {
    let gone = SessionIdentity {
        client_id: "bob".into(),
        expires_at_s: now_s() - 1,
        ..Default::default()
    };
    s.put(&id_hash("expired-session-id-0001"), &gone)
        .await
        .unwrap();
    assert_eq!(
        s.get(&id_hash("expired-session-id-0001")).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn sessions_in_redis_survive_a_restart_of_the_service() {
    let prefix = unique_prefix();
    let (id, made) = SessionService::new(shared_redis(&prefix), None, config())
        .create(alice())
        .await
        .unwrap();
    // A new process: new storage, new connection, same Redis.
    let again = SessionService::new(shared_redis(&prefix), None, config());
    assert_eq!(again.lookup(&id).await.unwrap(), Some(made));
    // The store holds the id's hash, never the id.
    let keys = Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{prefix}*")])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    assert_eq!(keys.trim(), format!("{prefix}{}", id_hash(&id)));
}

#[tokio::test]
async fn redis_down_is_a_503_never_a_session() {
    let mut private = nexus_ratelimit_service::testkit::PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}/0", private.port);
    let storage = RedisStorage::new(&url, "nexus:session:", Duration::from_millis(300)).unwrap();
    let service = SessionService::new(storage, None, config());
    let (id, _) = service.create(alice()).await.unwrap();
    assert_eq!(lookup(&service, &id).await.status, 200);
    private.stop();
    let r = lookup(&service, &id).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body["error"], "unavailable");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("the session store cannot be read: "),
        "{detail}"
    );
}

async fn lookup(service: &SessionService, id: &str) -> Reply {
    let id = id.to_string();
    let header = move |h: &str| (h == LOOKUP_HEADER).then(|| id.clone());
    route(service, &Method::GET, LOOKUP_PATH, header, b"").await
}

async fn post(service: &SessionService, path: &str, auth: Option<&str>, body: &str) -> Reply {
    let auth = auth.map(str::to_string);
    let header = move |h: &str| (h == "authorization").then(|| auth.clone()).flatten();
    route(service, &Method::POST, path, header, body.as_bytes()).await
}

#[tokio::test]
async fn http_answers_are_exact() {
    let service = SessionService::new(memory(), None, config());
    let bearer = format!("Bearer {TOKEN}");
    let made = post(
        &service,
        CREATE_PATH,
        Some(&bearer),
        r#"{"client_id":"alice","scopes":["a"]}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{made:?}");
    let id = made.body["id"].as_str().unwrap().to_string();
    let found = lookup(&service, &id).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.body["client_id"], "alice");
    assert_eq!(found.body["scopes"], json!(["a"]));

    let unknown = lookup(&service, "forged-session-id-forged-session-id").await;
    assert_eq!(
        (unknown.status, unknown.body),
        (
            404,
            json!({"error": "unknown_session", "detail": "no such session (unknown, expired or revoked)"})
        )
    );
    let none = route(&service, &Method::GET, LOOKUP_PATH, |_: &str| None, b"").await;
    assert_eq!(
        (none.status, none.body),
        (
            400,
            json!({"error": "bad_request", "detail": "missing x-nexus-session-id header"})
        )
    );
    let no_token = post(&service, CREATE_PATH, None, r#"{"client_id":"x"}"#).await;
    assert_eq!(
        (no_token.status, no_token.body),
        (
            401,
            json!({"error": "unauthorized", "detail": "missing bearer token (Authorization: Bearer <token>)"})
        )
    );
    let wrong = post(
        &service,
        REVOKE_PATH,
        Some("Bearer nope"),
        &format!(r#"{{"id":"{id}"}}"#),
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.body["detail"].clone()),
        (401, json!("wrong bearer token"))
    );
    let bad = post(&service, CREATE_PATH, Some(&bearer), r#"{"client":"x"}"#).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `client`"),
        "{bad:?}"
    );
    let empty = post(&service, CREATE_PATH, Some(&bearer), r#"{"client_id":""}"#).await;
    assert_eq!(
        empty.body,
        json!({"error": "bad_request", "detail": "client_id must not be empty"})
    );
    let get_create = route(&service, &Method::GET, CREATE_PATH, |_: &str| None, b"").await;
    assert_eq!(get_create.status, 405);

    let revoked = post(
        &service,
        REVOKE_PATH,
        Some(&bearer),
        &format!(r#"{{"id":"{id}"}}"#),
    )
    .await;
    assert_eq!(
        (revoked.status, revoked.body),
        (200, json!({"revoked": true}))
    );
    assert_eq!(lookup(&service, &id).await.status, 404);

    let no_admin = SessionService::new(
        memory(),
        None,
        Config {
            admin_token: None,
            ..config()
        },
    );
    let refused = post(
        &no_admin,
        CREATE_PATH,
        Some(&bearer),
        r#"{"client_id":"x"}"#,
    )
    .await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn a_revocation_reaches_the_coherency_event_stream() {
    let cache = Arc::new(CacheService::new(
        CacheMemory::new(),
        MemoryBus::new(),
        nexus_cache_service::Config::default(),
    ));
    let mut events = cache.bus().subscribe();
    let service = SessionService::new(memory(), Some(cache.clone()), config());
    let (id, _) = service.create(alice()).await.unwrap();
    assert!(service.revoke(&id).await.unwrap());
    let ev = events.recv().await.unwrap();
    let Some(event::Kind::Invalidation(inv)) = ev.kind else {
        panic!("expected an invalidation, got {ev:?}");
    };
    assert_eq!(inv.keys, vec![revocation_key(&id_hash(&id))]);
    assert!(
        !inv.keys[0].contains(&id),
        "the event names the hash, never the id"
    );
}
