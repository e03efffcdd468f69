//! The cache-coherency service (`nexus.cache.v1`) inside `nexus controller`. Every replica
//! serves it, leader or not: entries and events are shared through Redis (memory keeps both on
//! one replica). `POST /cache/invalidate` is routed on the controller's HTTP server.
//!
//! The sessions service starts with it, on the same Redis: its revocations are published as
//! cache invalidations, so every proxy hears them on the stream it already follows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexus_cache_service::storage::RedisNamespace;
use nexus_cache_service::{server, Config};

use crate::server::State;

pub struct Options {
    pub addr: SocketAddr,
    pub redis_url: Option<String>,
    /// Bearer token of `POST /cache/invalidate`; `None`: `NEXUS_CACHE_TOKEN`.
    pub token: Option<String>,
    /// Sent in every stream's `Hello`.
    pub replica: String,
}

/// Binds the gRPC port (an error if taken), serves on it in the background, and hands the
/// service to the HTTP server for `POST /cache/invalidate`.
pub async fn start(options: Options, state: &State) -> anyhow::Result<()> {
    let default = Config::default();
    let config = Config {
        replica: options.replica,
        token: options
            .token
            .filter(|t| !t.is_empty())
            .or(default.token.clone()),
        ..default
    };
    if config.token.is_none() {
        tracing::warn!(
            "NEXUS_CACHE_TOKEN is not set: POST /cache/invalidate refuses every request"
        );
    }
    let cache = server::build(
        options.redis_url.as_deref(),
        &RedisNamespace::default(),
        config,
        Duration::from_millis(100),
    )?;
    if options.redis_url.is_none() {
        tracing::warn!("cache service in memory: entries and events stay on this replica (set REDIS_URL to share them)");
    }
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    tracing::info!(addr = %options.addr, backend = %cache.describe(), "serving the cache-coherency service");
    let _ = state.cache.set(Arc::clone(&cache));
    let sessions = crate::sessions::build(options.redis_url.as_deref(), Arc::clone(&cache))?;
    let _ = state.sessions.set(sessions);
    tokio::spawn(async move {
        if let Err(e) = server::serve_grpc(cache, listener, std::future::pending()).await {
            tracing::error!(error = %e, "cache service stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    async fn post(addr: SocketAddr, auth: &str, body: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /cache/invalidate HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        resp
    }

    #[tokio::test]
    async fn the_http_server_routes_cache_invalidation_and_metrics() {
        let state = Arc::new(State::new(None));
        let http = free_addr();
        tokio::spawn(crate::server::serve(http, state.clone()));
        let options = Options {
            addr: free_addr(),
            redis_url: None,
            token: Some("t0ken".into()),
            replica: "r1".into(),
        };
        start(options, &state).await.unwrap();
        // The HTTP server may still be binding.
        let mut resp = String::new();
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(http).await.is_ok() {
                resp = post(http, "Bearer t0ken", r#"{"tags":["x"]}"#).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with(r#"{"removed":0}"#), "{resp}");
        let resp = post(http, "Bearer nope", r#"{"tags":["x"]}"#).await;
        assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
        // The sessions service started with it, on the same server.
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /sessions/v1/lookup HTTP/1.1\r\nHost: t\r\nx-nexus-session-id: nope-nope-nope-nope\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        assert!(resp.contains(r#""error":"unknown_session""#), "{resp}");
        let metrics = crate::server::handle(&state, "/metrics").await;
        let body = http_body_util::BodyExt::collect(metrics.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("nexus_cache_invalidations_total 1"), "{text}");
    }
}
