//! One small HTTP server: `/health/{live,ready,startup}` (JSON per component), `/metrics`
//! (Prometheus), `/modules/<sha256>.wasm` (the filter modules EnvoyFilters fetch) and, when the
//! cache service runs, `POST /cache/invalidate`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

use crate::telemetry::Metrics;

/// Shared state the endpoints report.
#[derive(Default)]
pub struct State {
    pub metrics: Metrics,
    pub started: AtomicBool,
    pub is_leader: AtomicBool,
    /// Component → (healthy, detail).
    pub components: Mutex<BTreeMap<String, (bool, String)>>,
    pub modules_dir: Option<PathBuf>,
    /// sha256 hex → file, refreshed from `modules_dir` on a miss.
    modules: Mutex<BTreeMap<String, PathBuf>>,
    /// The cache service, once started: `POST /cache/invalidate` and its metrics.
    pub cache: std::sync::OnceLock<Arc<nexus_cache_service::CacheService>>,
}

impl State {
    pub fn new(modules_dir: Option<PathBuf>) -> Self {
        let s = Self {
            modules_dir,
            ..Self::default()
        };
        s.rescan_modules();
        s
    }

    pub fn set(&self, component: &str, ok: bool, detail: impl Into<String>) {
        if let Ok(mut c) = self.components.lock() {
            c.insert(component.to_string(), (ok, detail.into()));
        }
    }

    /// Hashes every `*.wasm` in the modules directory.
    pub fn rescan_modules(&self) -> usize {
        let Some(dir) = &self.modules_dir else {
            return 0;
        };
        let found = scan(dir);
        let n = found.len();
        if let Ok(mut m) = self.modules.lock() {
            *m = found;
        }
        self.set("modules", true, format!("{n} modules in {}", dir.display()));
        n
    }

    fn module(&self, sha: &str) -> Option<PathBuf> {
        let hit = self.modules.lock().ok()?.get(sha).cloned();
        hit.or_else(|| {
            self.rescan_modules();
            self.modules.lock().ok()?.get(sha).cloned()
        })
    }

    fn health(&self, probe: &str) -> (StatusCode, String) {
        let comps = self
            .components
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let started = self.started.load(Ordering::Relaxed);
        let ok = match probe {
            "live" => true,
            "startup" => started,
            _ => started && comps.values().all(|(ok, _)| *ok),
        };
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unavailable" },
            "components": comps.iter().map(|(k, (ok, d))| (k.clone(), serde_json::json!({
                "status": if *ok { "ok" } else { "unavailable" }, "detail": d }))).collect::<serde_json::Map<_, _>>(),
            "leader": self.is_leader.load(Ordering::Relaxed),
        });
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body.to_string())
    }
}

fn scan(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "wasm") {
            if let Ok(bytes) = std::fs::read(&p) {
                let hex: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                out.insert(hex, p);
            }
        }
    }
    out
}

fn respond(code: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub async fn handle(state: &State, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/health/live" | "/health/ready" | "/health/startup" => {
            let (code, body) = state.health(path.trim_start_matches("/health/"));
            respond(code, "application/json", body)
        }
        "/metrics" => {
            let mut text = state
                .metrics
                .render(state.is_leader.load(Ordering::Relaxed));
            if let Some(cache) = state.cache.get() {
                text.push_str(&cache.metrics.render());
            }
            respond(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => {
            if let Some(sha) = path
                .strip_prefix("/modules/")
                .and_then(|p| p.strip_suffix(".wasm"))
            {
                let valid = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
                if valid {
                    if let Some(file) = state.module(&sha.to_ascii_lowercase()) {
                        if let Ok(bytes) = tokio::fs::read(&file).await {
                            return respond(StatusCode::OK, "application/wasm", bytes);
                        }
                    }
                }
            }
            respond(StatusCode::NOT_FOUND, "text/plain", "not found\n")
        }
    }
}

/// Serves until the process exits.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http server listening");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let cache_invalidation = req.method() == hyper::Method::POST
                        && req.uri().path() == nexus_cache_service::http::PATH;
                    let resp = if req.method() == hyper::Method::GET {
                        handle(&state, req.uri().path()).await
                    } else if let (true, Some(cache)) = (cache_invalidation, state.cache.get()) {
                        nexus_cache_service::http::handle(cache, req).await
                    } else {
                        respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n")
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
