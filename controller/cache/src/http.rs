//! `POST /cache/invalidate` for operators and pipelines: a JSON body
//! `{"keys":[...],"prefixes":[...],"tags":[...]}` (each optional), authenticated with
//! `Authorization: Bearer <token>`. Answers, always JSON:
//!
//! - 200 `{"removed":N}`
//! - 400 `{"error":"bad_request","path":"keys[1]","detail":"..."}` (`path` is `.` for the body)
//! - 401 `{"error":"unauthorized","detail":"..."}` (with `WWW-Authenticate: Bearer`)
//! - 413 `{"error":"payload_too_large","detail":"..."}` over [`MAX_BODY_BYTES`]
//! - 503 `{"error":"unavailable","detail":"..."}` while Redis is down
//!
//! [`invalidate`] is the handler (the controller's HTTP server routes to it); [`serve`] serves it
//! on its own.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nexus_proto::cache::InvalidateRequest;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::service::{CacheService, Failure};

pub const PATH: &str = "/cache/invalidate";

/// Bodies larger than this are refused (a list of keys, not a payload).
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// JSON.
    pub body: String,
}

impl Reply {
    fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            body: body.to_string(),
        }
    }

    fn unauthorized(detail: &str) -> Self {
        Self::json(401, json!({"error": "unauthorized", "detail": detail}))
    }

    fn bad_request(path: &str, detail: &str) -> Self {
        Self::json(
            400,
            json!({"error": "bad_request", "path": path, "detail": detail}),
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Handles one `POST /cache/invalidate`: `authorization` is the header's value, if any.
pub async fn invalidate(cache: &CacheService, authorization: Option<&str>, body: &[u8]) -> Reply {
    let Some(expected) = cache.config().token.as_deref() else {
        return Reply::unauthorized(
            "no token is configured on the server (NEXUS_CACHE_TOKEN): HTTP invalidation is off",
        );
    };
    let Some(given) = authorization.and_then(bearer) else {
        return Reply::unauthorized("missing bearer token (Authorization: Bearer <token>)");
    };
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Reply::unauthorized("wrong bearer token");
    }
    let parsed: Body =
        match serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)) {
            Ok(b) => b,
            Err(e) => return Reply::bad_request(&e.path().to_string(), &e.inner().to_string()),
        };
    let req = InvalidateRequest {
        keys: parsed.keys,
        prefixes: parsed.prefixes,
        tags: parsed.tags,
    };
    match cache.invalidate(req).await {
        Ok(r) => Reply::json(200, json!({"removed": r.removed})),
        Err(Failure::Invalid(i)) => Reply::bad_request(&i.path, &i.detail),
        Err(Failure::Unavailable(m)) => {
            Reply::json(503, json!({"error": "unavailable", "detail": m}))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Routes a hyper request: `POST /cache/invalidate`, else 404/405. The controller's server
/// calls [`invalidate`] directly; this is for [`serve`] and anyone embedding the service.
pub async fn handle(cache: &CacheService, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return respond(Reply::json(404, json!({"error": "not_found"})));
    }
    if req.method() != Method::POST {
        return respond(Reply::json(
            405,
            json!({"error": "method_not_allowed", "detail": "POST only"}),
        ));
    }
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return respond(Reply::json(
                413,
                json!({"error": "payload_too_large", "detail": format!("the body may have at most {MAX_BODY_BYTES} bytes")}),
            ));
        }
        Err(e) => {
            return respond(Reply::bad_request(".", &format!("unreadable body: {e}")));
        }
    };
    respond(invalidate(cache, authorization.as_deref(), &body).await)
}

pub fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if reply.status == 401 {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"nexus-cache\""),
        );
    }
    r
}

/// Serves `POST /cache/invalidate` on `listener` until `shutdown` completes.
pub async fn serve(
    cache: Arc<CacheService>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with(listener, shutdown, move |req| {
        let cache = cache.clone();
        async move { handle(&cache, req).await }
    })
    .await
}

/// Serves HTTP/1 on `listener` until `shutdown` completes, each request answered by
/// `handler` (the cache's and the sessions service's endpoints, served on their own).
pub async fn serve_with<H, F>(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
