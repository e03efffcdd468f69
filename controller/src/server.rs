//! One small HTTP server: `/health/{live,ready,startup}` (JSON per component), `/metrics`
//! (Prometheus), `/modules/<sha256>.wasm` (the filter modules EnvoyFilters fetch) and, when the
//! cache service runs, `POST /cache/invalidate` and the sessions service's `/sessions/v1/*`.

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

/// A component's state in the health JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not configured (e.g. Redis when counters are in memory).
    Disabled,
    Down,
}

/// One component of `/health/*`: `{"status": "ok", "detail": "...", "count": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    pub status: Status,
    /// A required component that is down makes `/health/ready` answer 503; an optional one
    /// only makes the overall status `degraded`.
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// When a scheduled check (`health`) last ran, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    /// The last failure a scheduled check saw, kept after recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_in_a_row: Option<u32>,
}

impl Component {
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            required: true,
            detail: Some(detail.into()),
            count: None,
            last_check: None,
            last_error: None,
            failures_in_a_row: None,
        }
    }

    pub fn down(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Down,
            ..Self::ok(detail)
        }
    }

    pub fn disabled(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Disabled,
            required: false,
            ..Self::ok(detail)
        }
    }

    /// Reported, but never fails readiness.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    pub fn with_count(mut self, n: usize) -> Self {
        self.count = Some(n);
        self
    }
}

/// Shared state the endpoints report.
#[derive(Default)]
pub struct State {
    pub metrics: Metrics,
    pub started: AtomicBool,
    pub is_leader: AtomicBool,
    /// Component name → state (`apiserver`, `modules`, `redis`, `ratelimit`, `leader`, ...).
    pub components: Mutex<BTreeMap<String, Component>>,
    pub modules_dir: Option<PathBuf>,
    /// sha256 hex → file, refreshed from `modules_dir` on a miss.
    modules: Mutex<BTreeMap<String, PathBuf>>,
    /// The cache service, once started: `POST /cache/invalidate` and its metrics.
    pub cache: std::sync::OnceLock<Arc<nexus_cache_service::CacheService>>,
    /// The sessions service, once started: `/sessions/v1/*` (the auth filters' lookups).
    pub sessions: std::sync::OnceLock<Arc<nexus_sessions_service::SessionService>>,
    /// The Datapunk request metrics, where an access log feeds them (`nexus up`).
    pub requests: std::sync::OnceLock<Arc<crate::request_metrics::RequestMetrics>>,
    /// The event bus's counters, when it runs (`--amqp-url`): `nexus_events_*` in `/metrics`.
    pub bus: std::sync::OnceLock<Arc<nexus_events::Stats>>,
    /// The audit service, when this process serves one: `nexus_audit_*` in `/metrics`.
    pub audit: std::sync::OnceLock<Arc<crate::audit::Audit>>,
    /// What proxies say they run (`POST /proxies/v1/reports`), for the `Enforced` condition.
    pub reports: Arc<crate::enforcement::reports::ProxyReports>,
    /// Take the sender's mesh identity from `x-forwarded-client-cert` (only behind this
    /// process's own sidecar, which overwrites what a client sent).
    pub trust_xfcc: AtomicBool,
}

impl State {
    pub fn new(modules_dir: Option<PathBuf>) -> Self {
        let s = Self {
            modules_dir,
            ..Self::default()
        };
        if s.modules_dir.is_none() {
            s.set_component("modules", Component::disabled("no --modules directory"));
        }
        s.rescan_modules();
        s
    }

    /// A required component: ok or down, with a detail.
    pub fn set(&self, component: &str, ok: bool, detail: impl Into<String>) {
        let c = if ok {
            Component::ok(detail)
        } else {
            Component::down(detail)
        };
        self.set_component(component, c);
    }

    pub fn set_component(&self, name: &str, component: Component) {
        if let Ok(mut c) = self.components.lock() {
            c.insert(name.to_string(), component);
        }
    }

    /// Hashes every `*.wasm` in the modules directory; none found is `down` (the EnvoyFilters
    /// this replica serves could not load).
    pub fn rescan_modules(&self) -> usize {
        let Some(dir) = &self.modules_dir else {
            return 0;
        };
        let found = scan(dir);
        let n = found.len();
        if let Ok(mut m) = self.modules.lock() {
            *m = found;
        }
        let detail = format!("{n} modules in {}", dir.display());
        let c = if n == 0 {
            Component::down(detail)
        } else {
            Component::ok(detail)
        };
        self.set_component("modules", c.with_count(n));
        n
    }

    fn module(&self, sha: &str) -> Option<PathBuf> {
        let hit = self.modules.lock().ok()?.get(sha).cloned();
        hit.or_else(|| {
            self.rescan_modules();
            self.modules.lock().ok()?.get(sha).cloned()
        })
    }

    /// `live`: the process answers (always 200). `startup`: 200 once the servers run and the
    /// API server was reached. `ready` (and anything else): 200 unless startup is incomplete or
    /// a required component is down. The body always lists every component.
    /// `nexus_component_up{component,required}`: 1 ok, 0 down, per checked component (a
    /// disabled one has no series), so alerts see what `/health/ready` sees.
    pub fn components_metrics(&self) -> String {
        use std::fmt::Write as _;
        let comps = self
            .components
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let name = "nexus_component_up";
        let mut s = format!(
            "# HELP {name} 1 if the health component is ok, 0 if down.\n# TYPE {name} gauge\n"
        );
        for (component, c) in comps.iter().filter(|(_, c)| c.status != Status::Disabled) {
            let up = u8::from(c.status == Status::Ok);
            let _ = writeln!(
                s,
                "{name}{{component=\"{component}\",required=\"{}\"}} {up}",
                c.required
            );
        }
        s
    }

    fn health(&self, probe: &str) -> (StatusCode, String) {
        let (code, body) = self.health_json(probe);
        (code, body.to_string())
    }

    pub fn health_json(&self, probe: &str) -> (StatusCode, serde_json::Value) {
        let comps = self
            .components
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let started = self.started.load(Ordering::Relaxed);
        let required_down = comps
            .values()
            .any(|c| c.required && c.status == Status::Down);
        let optional_down = comps
            .values()
            .any(|c| !c.required && c.status == Status::Down);
        let ok = match probe {
            "live" => true,
            "startup" => started,
            _ => started && !required_down,
        };
        let status = if !ok {
            if started {
                "down"
            } else {
                "starting"
            }
        } else if probe != "live" && optional_down {
            "degraded"
        } else {
            "ok"
        };
        let body = serde_json::json!({
            "status": status,
            "probe": probe,
            "started": started,
            "leader": self.is_leader.load(Ordering::Relaxed),
            "components": comps,
        });
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
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
            text.push_str(&state.components_metrics());
            text.push_str(&state.reports.render());
            if let Some(requests) = state.requests.get() {
                text.push_str(&requests.render());
            }
            if let Some(bus) = state.bus.get() {
                text.push_str(&bus.render());
            }
            if let Some(audit) = state.audit.get() {
                text.push_str(&audit.render());
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

/// `POST /proxies/v1/reports`: 204 when taken, 400 naming what is wrong, 503 when full.
async fn take_report(
    state: &State,
    peer: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    use crate::enforcement::reports::{xfcc_identity, Received, Refused, MAX_BODY};
    use http_body_util::BodyExt;
    let identity = req
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .filter(|_| state.trust_xfcc.load(Ordering::Relaxed))
        .and_then(xfcc_identity);
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let error = |code, msg: String| {
        let body = serde_json::json!({ "error": msg }).to_string();
        respond(code, "application/json", body)
    };
    let Ok(body) = limited.collect().await.map(|b| b.to_bytes()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a report is at most {MAX_BODY} bytes"),
        );
    };
    let report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a proxy report: {e}")),
    };
    let received = Received {
        report,
        peer,
        identity,
        at: std::time::Instant::now(),
    };
    match state.reports.record(received) {
        Ok(()) => respond(StatusCode::NO_CONTENT, "application/json", Bytes::new()),
        Err(Refused::Invalid(why)) => {
            tracing::debug!(%peer, reason = %why, "proxy report refused");
            error(StatusCode::BAD_REQUEST, why)
        }
        Err(Refused::Full) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many proxies reporting".to_string(),
        ),
    }
}

/// Serves until the process exits.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http server listening");
    loop {
        let (stream, peer) = match listener.accept().await {
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
                    let sessions = state
                        .sessions
                        .get()
                        .filter(|_| nexus_sessions_service::http::serves(req.uri().path()));
                    let report = req.method() == hyper::Method::POST
                        && req.uri().path() == nexus_config::report::REPORTS_PATH;
                    let resp = if let Some(sessions) = sessions {
                        nexus_sessions_service::http::handle(sessions, req).await
                    } else if report {
                        take_report(&state, peer.ip().to_canonical(), req).await
                    } else if req.method() == hyper::Method::GET {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};

    async fn get(state: &State, path: &str) -> (StatusCode, Value) {
        let resp = handle(state, path).await;
        let code = resp.status();
        assert_eq!(
            resp.headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap())
    }

    fn modules_dir(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            std::fs::write(dir.path().join(format!("m{i}.wasm")), format!("\0asm{i}")).unwrap();
        }
        dir
    }

    fn healthy(dir: &Path) -> State {
        let s = State::new(Some(dir.to_path_buf()));
        s.set("apiserver", true, "apiserver 1.20");
        s.set_component("redis", Component::disabled("counters in memory"));
        s.started.store(true, Ordering::Relaxed);
        s
    }

    #[tokio::test]
    async fn all_ok_is_200_with_per_component_json() {
        let dir = modules_dir(3);
        let s = healthy(dir.path());
        for probe in ["live", "ready", "startup"] {
            let (code, body) = get(&s, &format!("/health/{probe}")).await;
            assert_eq!(code, StatusCode::OK, "{probe}: {body}");
            assert_eq!(body["status"], "ok", "{body}");
        }
        let (_, body) = get(&s, "/health/ready").await;
        assert_eq!(
            body["components"]["apiserver"],
            json!({"status": "ok", "required": true, "detail": "apiserver 1.20"})
        );
        assert_eq!(body["components"]["modules"]["status"], "ok");
        assert_eq!(body["components"]["modules"]["count"], 3);
        assert_eq!(body["components"]["redis"]["status"], "disabled");
        assert_eq!(body["components"]["redis"]["required"], false);
        assert_eq!(body["leader"], false);
        assert_eq!(body["started"], true);
    }

    #[test]
    fn components_are_gauges_for_alerts_and_disabled_ones_have_no_series() {
        let dir = modules_dir(1);
        let s = healthy(dir.path());
        s.set_component("cache", Component::down("no listener").optional());
        let text = s.components_metrics();
        for line in [
            "nexus_component_up{component=\"apiserver\",required=\"true\"} 1",
            "nexus_component_up{component=\"cache\",required=\"false\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert!(!text.contains("redis"), "{text}");
    }

    #[tokio::test]
    async fn before_startup_only_live_is_200() {
        let dir = modules_dir(1);
        let s = healthy(dir.path());
        s.started.store(false, Ordering::Relaxed);
        assert_eq!(get(&s, "/health/live").await.0, StatusCode::OK);
        let (code, body) = get(&s, "/health/startup").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "starting");
        assert_eq!(
            get(&s, "/health/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_required_component_down_fails_ready_only() {
        let dir = modules_dir(2);
        let s = healthy(dir.path());
        s.set("apiserver", false, "connection refused");
        let (code, body) = get(&s, "/health/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "down");
        assert_eq!(body["components"]["apiserver"]["status"], "down");
        assert_eq!(
            body["components"]["apiserver"]["detail"],
            "connection refused"
        );
        assert_eq!(get(&s, "/health/live").await.0, StatusCode::OK);
        assert_eq!(get(&s, "/health/startup").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn redis_down_is_degraded_but_ready() {
        let dir = modules_dir(2);
        let s = healthy(dir.path());
        s.set_component(
            "redis",
            Component::down("redis did not answer within 100ms").optional(),
        );
        let (code, body) = get(&s, "/health/ready").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["components"]["redis"]["status"], "down");
        assert_eq!(
            body["components"]["redis"]["detail"],
            "redis did not answer within 100ms"
        );
        assert_eq!(get(&s, "/health/live").await.1["status"], "ok");
    }

    #[tokio::test]
    async fn no_modules_is_down() {
        let dir = modules_dir(0);
        let s = healthy(dir.path());
        let (code, body) = get(&s, "/health/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["components"]["modules"]["status"], "down");
        assert_eq!(body["components"]["modules"]["count"], 0);
        // A module appearing later is found on the next rescan.
        std::fs::write(dir.path().join("late.wasm"), "\0asm").unwrap();
        s.rescan_modules();
        assert_eq!(get(&s, "/health/ready").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn without_a_modules_dir_modules_are_disabled() {
        let s = State::new(None);
        s.started.store(true, Ordering::Relaxed);
        let (code, body) = get(&s, "/health/ready").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["components"]["modules"]["status"], "disabled");
    }
}
