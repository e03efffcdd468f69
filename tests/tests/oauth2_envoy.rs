//! Opaque OAuth2 tokens in real Envoy: nexus-router → nexus-auth (an `oauth2` rule) →
//! nexus-ratelimit, the token checked by the real sessions service with the `github` preset
//! against a local server answering GitHub's documented token-check responses (GitHub cannot
//! be reached from here). The identity is the GitHub user, the token never reaches the
//! upstream, a token is asked about once per proxy table lifetime, per-client limits count the
//! user, and a sessions service that is down is a 503, never a pass.

use std::collections::BTreeMap;

use nexus_sessions_service::introspect::{Kind, ProviderSettings};
use nexus_tests::client;
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::oauth_providers::{self, APP_ID, APP_SECRET};
use nexus_tests::sessions_service::SessionsServer;
use nexus_tests::upstream::Upstream;
use serde_json::{json, Value};

const REDIS: &str = "redis://127.0.0.1:6379/0";

const ROUTES: &str = r#"{"rules": [
  {"name": "repos", "category": "data_operations", "match": {"path": {"prefix": "/repos/"}}}]}"#;

const LIMITS: &str = r#"{"domain": "nexus-oauth2-e2e", "descriptors": [{"key": "route", "value": "repos",
  "descriptors": [{"key": "client_id", "rate_limit": {"unit": "minute", "requests_per_unit": 3}}]}]}"#;

fn auth_config() -> String {
    json!({
        "introspection": {"cluster": "sessions", "providers": {
            "github": {"headers": ["x-nexus-github-login"], "cache_ttl_s": 60}}},
        "rules": [{"name": "repos", "match": {"path": {"prefix": "/repos/"}},
                   "requirement": {"oauth2": {"providers": ["github"]}}}]
    })
    .to_string()
}

fn envoy(api: &Upstream, sessions_port: u16) -> Envoy {
    let filter = |name: &str, lib: &str, config: String| WasmFilter {
        name: name.into(),
        module: nexus_tests::filter_module(lib).unwrap(),
        config,
    };
    Envoy::start(&EnvoyConfig {
        filters: vec![
            filter("nexus-router", "nexus_router", ROUTES.into()),
            filter("nexus-auth", "nexus_auth", auth_config()),
            filter(
                "nexus-ratelimit",
                "nexus_ratelimit",
                format!(r#"{{"limits": {LIMITS}}}"#),
            ),
        ],
        // The router sends data_operations to `lake`.
        upstreams: vec![
            ("lake".into(), api.port()),
            ("sessions".into(), sessions_port),
        ],
        ..Default::default()
    })
    .unwrap()
}

fn call(envoy: &Envoy, token: Option<&str>) -> client::Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    // A forged identity header: only the provider's answer may set it.
    let mut headers = vec![("x-nexus-github-login", "root")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    client::get(envoy.port, "/repos/nexus", &headers).unwrap()
}

fn body(r: &client::Response) -> Value {
    r.json().unwrap()
}

#[test]
fn a_github_token_is_checked_once_and_its_user_is_the_client() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (github_url, asked) = runtime.block_on(oauth_providers::serve(oauth_providers::github));
    let sessions = SessionsServer::start(REDIS, None, None).unwrap();
    let mut github = ProviderSettings::github(APP_ID, APP_SECRET);
    github.kind = Kind::Github {
        api: github_url,
        memberships: false,
    };
    github.claims_to_headers = BTreeMap::from([("login".into(), "x-nexus-github-login".into())]);
    sessions
        .service
        .introspector()
        .set_providers(BTreeMap::from([("github".to_string(), github)]));
    let api = Upstream::start("api").unwrap();
    let e = envoy(&api, sessions.port);

    let r = call(&e, None);
    assert_eq!(r.status, 401);
    assert_eq!(body(&r)["error"], "missing_credentials");

    let r = call(&e, Some("gho_live"));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = api.requests().pop().unwrap();
    assert_eq!(seen.header("x-nexus-client-id"), Some("octocat"));
    assert_eq!(seen.header("x-nexus-auth-method"), Some("oauth2:github"));
    assert_eq!(seen.header("x-nexus-github-login"), Some("octocat"));
    assert_eq!(seen.header("authorization"), None);
    // Asked once; the next requests are answered from the proxy's table.
    assert_eq!(call(&e, Some("gho_live")).status, 200);
    assert_eq!(asked.lock().unwrap().len(), 1);

    // The per-client limit (3 a minute) counts the GitHub user, not the token or the route.
    assert_eq!(call(&e, Some("gho_live")).status, 200);
    assert_eq!(call(&e, Some("gho_live")).status, 429);
    let hubot: Vec<u16> = (0..4).map(|_| call(&e, Some("gho_hubot")).status).collect();
    assert_eq!(hubot, [200, 200, 200, 429]);

    let r = call(&e, Some("gho_revoked0000000000000000000000000000"));
    assert_eq!(r.status, 401);
    assert_eq!(
        body(&r),
        json!({"error": "invalid_token",
               "detail": "the token is not active (introspected by provider github)"})
    );
    assert_eq!(asked.lock().unwrap().len(), 3);

    // The sessions service is gone: a token the table does not hold is refused.
    drop(sessions);
    let r = call(&e, Some("gho_new0000000000000000000000000000000"));
    assert_eq!(r.status, 503);
    assert_eq!(
        body(&r),
        json!({"error": "introspection_unavailable",
               "detail": "the sessions service answered status 503"})
    );
    assert_eq!(api.requests().len(), 6);
}
