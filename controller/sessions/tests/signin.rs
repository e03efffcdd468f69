//! Browser sign-in against a small OpenID provider run in the test (discovery, PKCE-checking
//! token endpoint, RS256 ID tokens): the whole flow, then every bad input with its exact answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};
use nexus_auth::testkit::{self, SigningKey};
use nexus_sessions_service::http::{route, Reply};
use nexus_sessions_service::signin::{form, parse_query, OidcSettings};
use nexus_sessions_service::storage::MemoryStorage;
use nexus_sessions_service::{Config, SessionService};
use serde_json::{json, Value};

const CLIENT: &str = "nexus-portal";
const SECRET: &str = "s3cret with spaces&symbols";

/// Code → (PKCE challenge, nonce, used).
type Codes = Arc<Mutex<BTreeMap<String, (String, String, bool)>>>;

struct Provider {
    issuer: String,
    codes: Codes,
    /// The nonce the next ID token carries (None: the one the sign-in sent).
    forced_nonce: Arc<Mutex<Option<String>>>,
}

impl Provider {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let key = Arc::new(SigningKey::new("RS256", "k1"));
        let codes: Codes = Arc::default();
        let forced_nonce = Arc::new(Mutex::new(None));
        let (iss, c, f) = (issuer.clone(), codes.clone(), forced_nonce.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (iss, c, f, key) = (iss.clone(), c.clone(), f.clone(), key.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (iss, c, f, key) = (iss.clone(), c.clone(), f.clone(), key.clone());
                        async move { Ok::<_, Infallible>(answer(req, &iss, &c, &f, &key).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            issuer,
            codes,
            forced_nonce,
        }
    }

    /// What the provider does when the user signs in and consents: a code for the request.
    fn consent(&self, authorize: &BTreeMap<String, String>) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let code = format!("code-{}", N.fetch_add(1, Ordering::Relaxed));
        self.codes.lock().unwrap().insert(
            code.clone(),
            (
                authorize["code_challenge"].clone(),
                authorize["nonce"].clone(),
                false,
            ),
        );
        code
    }
}

fn json_response(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    iss: &str,
    codes: &Codes,
    forced: &Arc<Mutex<Option<String>>>,
    key: &SigningKey,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/.well-known/openid-configuration" => json_response(
            200,
            json!({
            "issuer": iss, "authorization_endpoint": format!("{iss}/auth"),
            "token_endpoint": format!("{iss}/token"), "jwks_uri": format!("{iss}/jwks")}),
        ),
        "/jwks" => json_response(200, serde_json::from_str(&testkit::jwks(&[key])).unwrap()),
        "/token" => {
            let auth = req.headers()["authorization"].to_str().unwrap().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let q = parse_query(&String::from_utf8_lossy(&body));
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{CLIENT}:{}",
                form(&[("x", SECRET)]).trim_start_matches("x=")
            ));
            if auth != format!("Basic {basic}") {
                return json_response(401, json!({"error": "invalid_client"}));
            }
            let mut codes = codes.lock().unwrap();
            let Some((challenge, nonce, used)) = codes.get_mut(&q["code"]) else {
                return json_response(400, json!({"error": "invalid_grant"}));
            };
            let digest = ring::digest::digest(&ring::digest::SHA256, q["code_verifier"].as_bytes());
            let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            if *used || expected != *challenge {
                return json_response(400, json!({"error": "invalid_grant"}));
            }
            *used = true;
            let nonce = forced.lock().unwrap().clone().unwrap_or(nonce.clone());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = testkit::claims(
                iss,
                CLIENT,
                "user-1",
                now,
                json!({"email": "alice@example.com", "nonce": nonce}),
            );
            json_response(
                200,
                json!({"id_token": key.token(&claims), "token_type": "Bearer"}),
            )
        }
        _ => json_response(404, json!({"error": "not_found"})),
    }
}

/// A clock the test moves (unix milliseconds).
fn clock() -> (Arc<AtomicU64>, nexus_cache_service::storage::Clock) {
    let now = Arc::new(AtomicU64::new(
        nexus_cache_service::storage::system_clock()(),
    ));
    let n = now.clone();
    (now, Arc::new(move || n.load(Ordering::Relaxed)))
}

async fn service(p: &Provider, clock: nexus_cache_service::storage::Clock) -> SessionService {
    let settings = OidcSettings {
        issuer: p.issuer.clone(),
        client_id: CLIENT.into(),
        client_secret: SECRET.into(),
        redirect_uri: "http://127.0.0.1:8080/_nexus/callback".into(),
        claims_to_headers: [("email".to_string(), "x-nexus-email".to_string())].into(),
        ..OidcSettings::google("", "", "")
    };
    let storage = MemoryStorage::new(clock.clone());
    SessionService::with_clock(storage, None, Config::default(), clock)
        .with_sign_in(settings)
        .unwrap()
}

async fn get(s: &SessionService, target: &str, cookie: Option<&str>) -> Reply {
    let cookie = cookie.map(str::to_string);
    let header = move |h: &str| (h == "cookie").then(|| cookie.clone()).flatten();
    route(s, &Method::GET, target, header, b"").await
}

fn header<'r>(r: &'r Reply, name: &str) -> &'r str {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Sign-in start: the provider's authorization request's parameters.
async fn start(s: &SessionService, p: &Provider, rd: &str) -> BTreeMap<String, String> {
    let r = get(s, &format!("/_nexus/sign-in?rd={rd}"), None).await;
    assert_eq!(r.status, 302, "{r:?}");
    let location = header(&r, "location");
    let (endpoint, query) = location.split_once('?').unwrap();
    assert_eq!(endpoint, format!("{}/auth", p.issuer));
    parse_query(query)
}

#[tokio::test]
async fn the_code_flow_makes_a_session_and_logout_ends_it() {
    let p = Provider::start().await;
    let (_, c) = clock();
    let s = service(&p, c).await;
    let auth = start(&s, &p, "%2Fapp%2Fpage%3Fx%3D1").await;
    assert_eq!(auth["response_type"], "code");
    assert_eq!(auth["client_id"], CLIENT);
    assert_eq!(auth["code_challenge_method"], "S256");
    assert_eq!(auth["scope"], "openid email profile");
    assert_eq!(
        auth["redirect_uri"],
        "http://127.0.0.1:8080/_nexus/callback"
    );
    assert_eq!(auth["state"].len(), 43);
    let code = p.consent(&auth);
    let back = callback(&s, &code, &auth).await;
    assert_eq!(back.status, 302, "{back:?}");
    assert_eq!(header(&back, "location"), "/app/page?x=1");
    let cookie = header(&back, "set-cookie");
    let id = cookie
        .strip_prefix("nexus-session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(
        cookie,
        format!("nexus-session={id}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"),
        "host-only, HttpOnly, Lax; not Secure on loopback HTTP"
    );
    let session = s.lookup(id).await.unwrap().unwrap();
    assert_eq!(session.client_id, "alice@example.com");
    assert_eq!(session.headers["x-nexus-email"], "alice@example.com");

    let out = get(
        &s,
        "/_nexus/logout",
        Some(&format!("a=b; nexus-session={id}")),
    )
    .await;
    assert_eq!((out.status, header(&out, "location")), (302, "/"));
    assert_eq!(
        header(&out, "set-cookie"),
        "nexus-session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    );
    assert_eq!(s.lookup(id).await.unwrap(), None);
}

/// The browser back at the callback with `code` for the sign-in `auth` started.
async fn callback(s: &SessionService, code: &str, auth: &BTreeMap<String, String>) -> Reply {
    let target = format!("/_nexus/callback?code={code}&state={}", auth["state"]);
    get(s, &target, None).await
}

fn refusal(r: &Reply) -> (u16, Value) {
    (r.status, r.body.clone())
}

fn assert_refused(r: &Reply, status: u16, error: &str, detail: &str) {
    assert_eq!(
        refusal(r),
        (status, json!({"error": error, "detail": detail}))
    );
}

#[tokio::test]
async fn bad_state_code_and_nonce_are_refused_exactly() {
    let p = Provider::start().await;
    let (now, c) = clock();
    let s = service(&p, c).await;
    // Forged state.
    let r = get(&s, "/_nexus/callback?code=x&state=forged-state", None).await;
    assert_refused(
        &r,
        400,
        "invalid_state",
        "unknown, expired or already used state",
    );
    // Replayed state (and so a code used twice through it).
    let auth = start(&s, &p, "/").await;
    let code = p.consent(&auth);
    let target = format!("/_nexus/callback?code={code}&state={}", auth["state"]);
    assert_eq!(get(&s, &target, None).await.status, 302);
    assert_eq!(
        refusal(&get(&s, &target, None).await).1["error"],
        "invalid_state"
    );
    // A code used twice under a fresh state: the provider refuses it.
    let fresh = start(&s, &p, "/").await;
    let r = callback(&s, &code, &fresh).await;
    assert_refused(
        &r,
        401,
        "code_exchange_failed",
        "the provider refused the code (invalid_grant, status 400)",
    );
    // Expired state: past its 600 s.
    let late = start(&s, &p, "/").await;
    let late_code = p.consent(&late);
    now.fetch_add(601_000, Ordering::Relaxed);
    let r = callback(&s, &late_code, &late).await;
    assert_eq!(refusal(&r).1["error"], "invalid_state");
    // An ID token carrying another sign-in's nonce.
    let auth = start(&s, &p, "/").await;
    let code = p.consent(&auth);
    *p.forced_nonce.lock().unwrap() = Some("someone-elses-nonce".into());
    let r = callback(&s, &code, &auth).await;
    assert_refused(
        &r,
        401,
        "invalid_id_token",
        "the ID token's nonce is not this sign-in's",
    );
    // The provider said no; no state at all; an open redirect asked for.
    let r = get(&s, "/_nexus/callback?error=access_denied&state=x", None).await;
    assert_refused(
        &r,
        401,
        "sign_in_refused",
        "the provider answered error=access_denied",
    );
    let r = get(&s, "/_nexus/callback?code=x", None).await;
    assert_refused(&r, 400, "invalid_state", "the callback carries no state");
    let auth = start(&s, &p, "https%3A%2F%2Fevil.example%2F").await;
    *p.forced_nonce.lock().unwrap() = None;
    let code = p.consent(&auth);
    let r = callback(&s, &code, &auth).await;
    assert_eq!(header(&r, "location"), "/");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_502() {
    let (_, c) = clock();
    let settings = OidcSettings {
        issuer: "http://127.0.0.1:9".into(),
        ..OidcSettings::google(CLIENT, SECRET, "https://portal.example.com/_nexus/callback")
    };
    let s = SessionService::with_clock(MemoryStorage::new(c.clone()), None, Config::default(), c)
        .with_sign_in(settings)
        .unwrap();
    let r = get(&s, "/_nexus/sign-in", None).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body["error"], "provider_unavailable");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("http://127.0.0.1:9/.well-known/openid-configuration: "),
        "{detail}"
    );
}
