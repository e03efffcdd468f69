//! Local stand-ins for OAuth2 providers' token checks (the real ones cannot be reached from
//! the test machines): GitHub's documented "check a token" answers and an RFC 7662
//! introspection endpoint, each recording what it was asked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};

/// The app whose tokens [`github`] knows.
pub const APP_ID: &str = "Iv1.8a61f9b3a7aba766";
pub const APP_SECRET: &str = "1c8e0a7f0c3b9d2e4f6a8b0c2d4e6f8a0b2c4d6e";
/// "Now" of the tests that set a clock (2027-01-15T08:00:00Z), in unix milliseconds.
pub const NOW_MS: u64 = 1_800_000_000_000;

/// What a provider was asked: path, `Authorization`, body.
pub type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A local HTTP server answering `answer(path, authorization, body)` = (status, body, delay in
/// ms), recording every request; its URL (`http://127.0.0.1:PORT`).
pub async fn serve(answer: fn(&str, &str, &str) -> (u16, String, u64)) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(nexus_cache_service::http::serve_with(
        listener,
        std::future::pending(),
        move |req: Request<hyper::body::Incoming>| {
            let s = s.clone();
            async move {
                let path = req.uri().path().to_string();
                let auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8(body.to_vec()).unwrap();
                let (status, text, delay_ms) = answer(&path, &auth, &body);
                s.lock().unwrap().push((path, auth, body));
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let mut r = Response::new(Full::new(Bytes::from(text)));
                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                r
            }
        },
    ));
    (url, seen)
}

/// GitHub's documented answers to `POST /applications/{client_id}/token` ("Check a token",
/// docs.github.com/rest/apps/oauth-applications#check-a-token): the token's record for
/// `gho_live` (octocat's, no expiry), `gho_hubot` (hubot's), `ghu_expiring` (expires 2027-01-16T08:00:00Z) and `ghu_expired`; 422
/// for an empty token; 404 for any other. `GET /user/orgs` and `/user/teams` with the user's
/// token answer [`github_memberships`].
pub fn github(path: &str, authorization: &str, body: &str) -> (u16, String, u64) {
    if path.starts_with("/user/") {
        return github_memberships(path, authorization);
    }
    let token = serde_json::from_str::<Value>(body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let login = if token == "gho_hubot" {
        "hubot"
    } else {
        "octocat"
    };
    let found = |expires_at: Value| {
        json!({"id": 1, "url": format!("https://api.github.com/authorizations/1"),
               "scopes": ["repo", "read:org"], "token": token, "token_last_eight": "Ae178B4a",
               "hashed_token": "25f94a2a5c7fbaf499c665bc73d67c1c87e496da8985131633ee0a95819db2e8",
               "app": {"url": "http://my-github-app.com", "name": "my github app", "client_id": APP_ID},
               "note": null, "note_url": null, "updated_at": "2011-09-06T20:39:23Z",
               "created_at": "2011-09-06T17:26:27Z", "fingerprint": null,
               "expires_at": expires_at,
               "user": {"login": login, "id": 1, "type": "User", "site_admin": false}})
        .to_string()
    };
    match token.as_str() {
        "gho_live" | "gho_hubot" => (200, found(Value::Null), 0),
        "ghu_expiring" => (200, found(json!("2027-01-16T08:00:00Z")), 0),
        "ghu_expired" => (200, found(json!("2020-01-01T00:00:00Z")), 0),
        "" => (422, json!({"message": "Validation Failed",
            "errors": [{"resource": "Token", "field": "access_token", "code": "missing_field"}],
            "documentation_url": "https://docs.github.com/rest/apps/oauth-applications#check-a-token"}).to_string(), 0),
        _ => (404, json!({"message": "Not Found",
            "documentation_url": "https://docs.github.com/rest/apps/oauth-applications#check-a-token"}).to_string(), 0),
    }
}

/// GitHub's "list organizations for the authenticated user" and "list teams for the
/// authenticated user" answers (docs.github.com/rest/orgs/orgs, /rest/teams/teams), trimmed:
/// octocat (`gho_live`) is in `datapunk` (team `lake-admins`) and `octo-org`; hubot
/// (`gho_hubot`) in `octo-org` alone; any other token is 401.
pub fn github_memberships(path: &str, authorization: &str) -> (u16, String, u64) {
    let org = |login: &str| json!({"login": login, "id": 1, "url": format!("https://api.github.com/orgs/{login}")});
    let team = |org_login: &str, slug: &str| {
        json!({"id": 1, "name": slug, "slug": slug, "permission": "admin",
               "organization": org(org_login)})
    };
    let (orgs, teams) = match authorization {
        "Bearer gho_live" => (
            json!([org("datapunk"), org("octo-org")]),
            json!([team("datapunk", "lake-admins")]),
        ),
        "Bearer gho_hubot" => (json!([org("octo-org")]), json!([])),
        _ => return (401, json!({"message": "Bad credentials"}).to_string(), 0),
    };
    match path {
        "/user/orgs" => (200, orgs.to_string(), 0),
        "/user/teams" => (200, teams.to_string(), 0),
        _ => (404, json!({"message": "Not Found"}).to_string(), 0),
    }
}

/// An RFC 7662 introspection endpoint; the token names the behaviour: `active-user`,
/// `active-machine` (no `sub`, no `exp`), `inactive`, `server-error` (500), `garbage`,
/// `no-active` (no `active` member), `slow` (answers after 1.5 s).
pub fn rfc7662(_path: &str, _authorization: &str, body: &str) -> (u16, String, u64) {
    let token = body
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .unwrap_or_default();
    let exp = NOW_MS / 1000 + 3600;
    match token {
        "active-user" => (
            200,
            json!({"active": true, "scope": "lake:read lake:write",
            "client_id": "cli-portal", "sub": "alice", "username": "alice", "exp": exp})
            .to_string(),
            0,
        ),
        "active-machine" => (
            200,
            json!({"active": true, "scope": "lake:read",
            "client_id": "batch-7"})
            .to_string(),
            0,
        ),
        "inactive" => (200, json!({"active": false}).to_string(), 0),
        "server-error" => (500, "internal error".into(), 0),
        "garbage" => (200, "<html>maintenance</html>".into(), 0),
        "no-active" => (200, json!({"scope": "x"}).to_string(), 0),
        "slow" => (
            200,
            json!({"active": true, "sub": "late"}).to_string(),
            1_500,
        ),
        _ => (200, json!({"active": false}).to_string(), 0),
    }
}
