//! Opaque tokens checked by the sessions service: the `github` preset against a local server
//! that answers what GitHub documents for its token check (GitHub itself cannot be reached
//! from the test machines), RFC 7662 introspection against a local endpoint, the verdicts
//! kept per token, and every failure of the provider with its exact answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper::Method;
use nexus_config::session::TOKEN_HEADER;
use nexus_sessions_service::http::{route, Reply};
use nexus_sessions_service::introspect::ProviderSettings;
use nexus_sessions_service::storage::MemoryStorage;
use nexus_sessions_service::{Config, SessionService};
use nexus_tests::oauth_providers::{
    github, rfc7662, serve as provider, Seen, APP_ID, APP_SECRET, NOW_MS,
};
use serde_json::{json, Value};

fn service(providers: BTreeMap<String, ProviderSettings>) -> (SessionService, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(NOW_MS));
    let n = now.clone();
    let clock: nexus_cache_service::storage::Clock = Arc::new(move || n.load(Ordering::Relaxed));
    let s = SessionService::with_clock(
        MemoryStorage::new(clock.clone()),
        None,
        Config::default(),
        clock,
    );
    s.introspector().set_providers(providers);
    (s, now)
}

async fn introspect(s: &SessionService, provider: &str, token: &str) -> Reply {
    let header = |name: &str| (name == TOKEN_HEADER).then(|| token.to_string());
    let path = format!("/sessions/v1/introspect/{provider}");
    route(s, &Method::GET, &path, header, b"").await
}

async fn github_service() -> (SessionService, Seen, Arc<AtomicU64>) {
    let (url, seen) = provider(github).await;
    let mut p = ProviderSettings::github(APP_ID, APP_SECRET);
    p.kind = nexus_sessions_service::introspect::Kind::Github {
        api: url,
        memberships: false,
    };
    p.claims_to_headers = [("login".to_string(), "x-nexus-github-login".to_string())].into();
    let (s, now) = service([("github".to_string(), p)].into());
    (s, seen, now)
}

#[tokio::test]
async fn the_github_preset_checks_a_token_as_github_documents_and_maps_the_user() {
    let (s, seen, _) = github_service().await;
    let r = introspect(&s, "github", "gho_live").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"client_id": "octocat", "scopes": ["repo", "read:org"],
               "headers": {"x-nexus-github-login": "octocat"},
               "expires_at_s": NOW_MS / 1000 + 60})
    );
    let (path, auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, format!("/applications/{APP_ID}/token"));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{APP_ID}:{APP_SECRET}"));
    assert_eq!(auth, format!("Basic {basic}"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"access_token": "gho_live"})
    );
    // A token with an expiry is vouched for until then (the filter caps it by its own ttl).
    let r = introspect(&s, "github", "ghu_expiring").await;
    assert_eq!(r.body["expires_at_s"], 1_800_086_400);
}

#[tokio::test]
async fn github_s_404_422_and_a_past_expiry_are_inactive_tokens() {
    let (s, seen, _) = github_service().await;
    for token in ["gho_revoked0000000000000000000000000000", "ghu_expired"] {
        let r = introspect(&s, "github", token).await;
        assert_eq!(r.status, 404, "{token}");
        assert_eq!(
            r.body,
            json!({"error": "inactive_token", "detail": "provider github says the token is not active"})
        );
    }
    // GitHub answers 422 to a token it cannot even read; the header cannot carry an empty
    // token to the service, so this asks the preset directly.
    let v = s.introspector().introspect("github", "").await;
    assert_eq!(v, nexus_sessions_service::introspect::Verdict::Inactive);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn rfc7662_maps_active_scope_client_id_exp_and_sub() {
    let (url, seen) = provider(rfc7662).await;
    let mut p =
        ProviderSettings::rfc7662(&format!("{url}/oauth2/introspect"), "nexus", "s3cret&more");
    p.claims_to_headers = [("client_id".to_string(), "x-nexus-oauth-client".to_string())].into();
    let (s, _) = service([("corp".to_string(), p)].into());
    let r = introspect(&s, "corp", "active-user").await;
    assert_eq!(
        r.body,
        json!({"client_id": "alice", "scopes": ["lake:read", "lake:write"],
               "headers": {"x-nexus-oauth-client": "cli-portal"},
               "expires_at_s": NOW_MS / 1000 + 3600})
    );
    let (path, auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/oauth2/introspect");
    let basic = base64::engine::general_purpose::STANDARD.encode("nexus:s3cret%26more");
    assert_eq!(auth, format!("Basic {basic}"));
    assert_eq!(body, "token=active-user&token_type_hint=access_token");
    // No sub: the client is the client_id (a client-credentials token), vouched for a ttl.
    let r = introspect(&s, "corp", "active-machine").await;
    assert_eq!(r.body["client_id"], "batch-7");
    assert_eq!(r.body["expires_at_s"], NOW_MS / 1000 + 60);
    let r = introspect(&s, "corp", "inactive").await;
    assert_eq!(
        (r.status, r.body),
        (
            404,
            json!({"error": "inactive_token", "detail": "provider corp says the token is not active"})
        )
    );
}

#[tokio::test]
async fn verdicts_are_kept_per_token_bounded_by_ttl_and_negative_ttl() {
    let (url, seen) = provider(rfc7662).await;
    let p = ProviderSettings::rfc7662(&format!("{url}/i"), "nexus", "s");
    let (s, now) = service([("corp".to_string(), p)].into());
    let asked = || seen.lock().unwrap().len();
    introspect(&s, "corp", "active-user").await;
    introspect(&s, "corp", "active-user").await;
    assert_eq!(asked(), 1);
    now.fetch_add(59_999, Ordering::Relaxed);
    introspect(&s, "corp", "active-user").await;
    assert_eq!(asked(), 1);
    now.fetch_add(1, Ordering::Relaxed);
    introspect(&s, "corp", "active-user").await;
    assert_eq!(asked(), 2);
    // Inactive: remembered for the negative ttl (5 s), then asked again.
    introspect(&s, "corp", "inactive").await;
    now.fetch_add(4_999, Ordering::Relaxed);
    introspect(&s, "corp", "inactive").await;
    assert_eq!(asked(), 3);
    now.fetch_add(1, Ordering::Relaxed);
    introspect(&s, "corp", "inactive").await;
    assert_eq!(asked(), 4);
}

#[tokio::test]
async fn a_provider_that_fails_is_503_with_what_it_did_and_never_kept() {
    let (url, seen) = provider(rfc7662).await;
    let endpoint = format!("{url}/i");
    let mut p = ProviderSettings::rfc7662(&endpoint, "nexus", "s");
    p.timeout = Duration::from_millis(300);
    let (s, _) = service([("corp".to_string(), p)].into());
    let cases = [
        (
            "server-error",
            format!("provider corp: {endpoint} answered status 500"),
        ),
        (
            "garbage",
            format!(
                "provider corp: {endpoint} answered garbage (expected value at line 1 column 1)"
            ),
        ),
        (
            "no-active",
            format!("provider corp: {endpoint} answered without a boolean \"active\""),
        ),
        (
            "slow",
            format!("provider corp: {endpoint} did not answer within 300ms"),
        ),
    ];
    for (token, detail) in &cases {
        let r = introspect(&s, "corp", token).await;
        assert_eq!(
            (r.status, r.body),
            (
                503,
                json!({"error": "introspection_unavailable", "detail": detail})
            ),
            "{token}"
        );
    }
    // Nothing was kept: asked again.
    introspect(&s, "corp", "server-error").await;
    assert_eq!(seen.lock().unwrap().len(), cases.len() + 1);
    let r = introspect(&s, "nope", "t").await;
    assert_eq!(
        (r.status, r.body),
        (
            503,
            json!({"error": "introspection_unavailable", "detail": "no introspection provider \"nope\" here"})
        )
    );
    let r = route(
        &s,
        &Method::GET,
        "/sessions/v1/introspect/corp",
        |_: &str| None,
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.body),
        (
            400,
            json!({"error": "bad_request", "detail": "missing x-nexus-token header"})
        )
    );
}

#[tokio::test]
async fn github_memberships_become_scopes_and_claims_read_with_the_users_token() {
    let (url, seen) = provider(github).await;
    let mut p = ProviderSettings::github(APP_ID, APP_SECRET);
    p.kind = nexus_sessions_service::introspect::Kind::Github {
        api: url,
        memberships: true,
    };
    p.claims_to_headers = [
        ("orgs".to_string(), "x-nexus-github-orgs".to_string()),
        ("teams".to_string(), "x-nexus-github-teams".to_string()),
    ]
    .into();
    let (s, _) = service([("github".to_string(), p)].into());
    let r = introspect(&s, "github", "gho_live").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["scopes"],
        json!([
            "repo",
            "read:org",
            "org:datapunk",
            "org:octo-org",
            "team:datapunk/lake-admins"
        ])
    );
    assert_eq!(
        r.body["headers"],
        json!({"x-nexus-github-orgs": "datapunk,octo-org", "x-nexus-github-teams": "datapunk/lake-admins"})
    );
    // The memberships are asked with the user's own token, not the app's credentials.
    let asked: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(path, auth, _)| (path.clone(), auth.clone()))
        .collect();
    assert_eq!(
        asked[1],
        ("/user/orgs".to_string(), "Bearer gho_live".to_string())
    );
    assert_eq!(
        asked[2],
        ("/user/teams".to_string(), "Bearer gho_live".to_string())
    );
    // hubot is in no team: `oauth2: {scopes: [team:datapunk/lake-admins]}` refuses him (403).
    let r = introspect(&s, "github", "gho_hubot").await;
    assert_eq!(
        r.body["scopes"],
        json!(["repo", "read:org", "org:octo-org"])
    );
    assert_eq!(
        r.body["headers"],
        json!({"x-nexus-github-orgs": "octo-org", "x-nexus-github-teams": ""})
    );
}
