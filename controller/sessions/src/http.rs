//! The sessions service over HTTP, on the controller's HTTP port. Answers are JSON.
//!
//! - `GET /sessions/v1/lookup` with `x-nexus-session-id: <id>` (the filters' call, see
//!   `nexus_config::session`): 200 the identity, 404 `unknown_session`, 503 `unavailable`.
//! - `POST /sessions/v1/sessions` with `Authorization: Bearer <admin token>` and
//!   `{"client_id": "...", "scopes": [...], "headers": {...}}`: 201 `{"id", "expires_at_s"}`.
//! - `POST /sessions/v1/revoke` with the admin token and `{"id": "..."}`: 200
//!   `{"revoked": true|false}` once the store and every proxy's event stream have it.
//! - `GET /sessions/v1/introspect/<provider>` with `x-nexus-token: <token>` (the filters'
//!   call): 200 the token's identity, 404 `inactive_token`, 503 `introspection_unavailable`
//!   naming what the provider did (see [`crate::introspect`]).
//!
//! 400 names what is wrong with a body, 401 a missing or wrong token, 503 a store that cannot
//! be reached (never a guess).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use nexus_cache_service::http::bearer;
use nexus_config::session::{INTROSPECT_PATH_PREFIX, LOOKUP_HEADER, LOOKUP_PATH, TOKEN_HEADER};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::introspect::Verdict;
use crate::{NewSession, SessionService};

pub const CREATE_PATH: &str = "/sessions/v1/sessions";
pub const REVOKE_PATH: &str = "/sessions/v1/revoke";

/// Bodies larger than this are refused (an identity, not a payload).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Browser sign-in (see [`crate::signin`]), when a provider is configured.
/// Every browser endpoint is under it: the gateway routes it to this service.
pub const BROWSER_PREFIX: &str = "/_nexus/";
pub const SIGN_IN_PATH: &str = "/_nexus/sign-in";
pub const CALLBACK_PATH: &str = "/_nexus/callback";
pub const LOGOUT_PATH: &str = "/_nexus/logout";

/// Whether `path` is one of this service's.
pub fn serves(path: &str) -> bool {
    path.starts_with("/sessions/v1/") || path.starts_with("/_nexus/")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Besides `content-type` and `cache-control` (`location`, `set-cookie`).
    pub headers: Vec<(String, String)>,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        headers: Vec::new(),
    }
}

fn error(status: u16, error: &str, detail: impl Into<String>) -> Reply {
    reply(status, json!({"error": error, "detail": detail.into()}))
}

/// One request: `target` is the path with its query, `header` reads a request header.
pub async fn route(
    service: &SessionService,
    method: &Method,
    target: &str,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path.starts_with("/_nexus/") {
        return browser(service, method, path, query, header("cookie")).await;
    }
    if let Some(provider) = path.strip_prefix(INTROSPECT_PATH_PREFIX) {
        return match method {
            &Method::GET => introspect(service, provider, header(TOKEN_HEADER)).await,
            _ => error(
                405,
                "method_not_allowed",
                format!("{method} is not served on {path}"),
            ),
        };
    }
    match (method, path) {
        (&Method::GET, LOOKUP_PATH) => lookup(service, header(LOOKUP_HEADER)).await,
        (&Method::POST, CREATE_PATH | REVOKE_PATH) => {
            if let Err(r) = admin(service, header("authorization")) {
                return r;
            }
            if path == CREATE_PATH {
                create(service, body).await
            } else {
                revoke(service, body).await
            }
        }
        (_, LOOKUP_PATH | CREATE_PATH | REVOKE_PATH) => error(
            405,
            "method_not_allowed",
            format!("{method} is not served on {path}"),
        ),
        _ => error(404, "not_found", format!("no sessions endpoint {path}")),
    }
}

/// Sign-in, its callback, and logout.
async fn browser(
    service: &SessionService,
    method: &Method,
    path: &str,
    query: &str,
    cookie: Option<String>,
) -> Reply {
    let Some(sign_in) = service.sign_in() else {
        return error(404, "not_found", "no sign-in provider is configured");
    };
    match (method, path) {
        (&Method::GET, SIGN_IN_PATH) => {
            let rd = crate::signin::parse_query(query).remove("rd");
            sign_in.start(service, rd.as_deref()).await
        }
        (&Method::GET, CALLBACK_PATH) => sign_in.callback(service, query).await,
        (&Method::GET | &Method::POST, LOGOUT_PATH) => {
            sign_in.logout(service, cookie.as_deref()).await
        }
        _ => error(
            404,
            "not_found",
            format!("no sign-in endpoint {method} {path}"),
        ),
    }
}

async fn lookup(service: &SessionService, id: Option<String>) -> Reply {
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return error(
            400,
            "bad_request",
            format!("missing {LOOKUP_HEADER} header"),
        );
    };
    match service.lookup(&id).await {
        Ok(Some(identity)) => reply(200, json!(identity)),
        Ok(None) => error(
            404,
            "unknown_session",
            "no such session (unknown, expired or revoked)",
        ),
        Err(e) => error(
            503,
            "unavailable",
            format!("the session store cannot be read: {e}"),
        ),
    }
}

async fn introspect(service: &SessionService, provider: &str, token: Option<String>) -> Reply {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return error(400, "bad_request", format!("missing {TOKEN_HEADER} header"));
    };
    match service.introspector().introspect(provider, &token).await {
        Verdict::Active(identity) => reply(200, json!(identity)),
        Verdict::Inactive => error(
            404,
            "inactive_token",
            format!("provider {provider} says the token is not active"),
        ),
        Verdict::Unavailable(why) => error(503, "introspection_unavailable", why),
    }
}

fn admin(service: &SessionService, authorization: Option<String>) -> Result<(), Reply> {
    let Some(expected) = service.config().admin_token.as_deref() else {
        return Err(error(
            401,
            "unauthorized",
            "no admin token is configured on the server (NEXUS_SESSIONS_TOKEN)",
        ));
    };
    let Some(given) = authorization.as_deref().and_then(bearer) else {
        return Err(error(
            401,
            "unauthorized",
            "missing bearer token (Authorization: Bearer <token>)",
        ));
    };
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(error(401, "unauthorized", "wrong bearer token"))
    }
}

async fn create(service: &SessionService, body: &[u8]) -> Reply {
    let new: NewSession = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => return error(400, "bad_request", e.to_string()),
    };
    if new.client_id.is_empty() {
        return error(400, "bad_request", "client_id must not be empty");
    }
    match service.create(new).await {
        Ok((id, s)) => reply(201, json!({"id": id, "expires_at_s": s.expires_at_s})),
        Err(e) => error(
            503,
            "unavailable",
            format!("the session store cannot be written: {e}"),
        ),
    }
}

async fn revoke(service: &SessionService, body: &[u8]) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        id: String,
    }
    let b: Body = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(400, "bad_request", e.to_string()),
    };
    match service.revoke(&b.id).await {
        Ok(revoked) => reply(200, json!({"revoked": revoked})),
        Err(e) => error(
            503,
            "unavailable",
            format!("the session may still be live: {e}"),
        ),
    }
}

/// Routes a hyper request (the controller's HTTP server calls this for [`serves`] paths).
pub async fn handle(service: &SessionService, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return respond(error(400, "bad_request", format!("unreadable body: {e}"))),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    respond(route(service, &parts.method, &target, header, &body).await)
}

pub fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reply.body.to_string())));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    for (name, value) in &reply.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

/// Serves the sessions endpoints on `listener` until `shutdown` completes (the controller's
/// HTTP server routes to [`handle`] instead; this is for tests and embedding).
pub async fn serve(
    service: std::sync::Arc<SessionService>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    nexus_cache_service::http::serve_with(listener, shutdown, move |req| {
        let service = service.clone();
        async move { handle(&service, req).await }
    })
    .await
}
