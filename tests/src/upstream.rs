//! In-process HTTP upstreams that record what reaches them and echo it back as JSON.
//! A request's `x-upstream-cache-control` becomes the response's `cache-control`; its
//! `x-upstream-delay-ms` holds the response that long (recorded on arrival).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-cased names; repeated headers keep every value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An upstream listening on 127.0.0.1 with a kernel-chosen port; stops with its runtime.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start(name: &str) -> Result<Self> {
        Self::start_on(name, 0)
    }

    /// On a given port (0: the kernel's choice), e.g. one a proxy was already told about.
    pub fn start_on(name: &str, port: u16) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(TcpListener::bind(("127.0.0.1", port)))
            .context("binding upstream")?;
        let addr = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (name_owned, rec) = (name.to_string(), recorded.clone());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (name, rec) = (name_owned.clone(), rec.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(name.clone(), rec.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            name: name.to_string(),
            addr,
            recorded,
            _runtime: runtime,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn handle(
    name: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let echo: BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let json = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": path,
        "headers": echo,
    });
    if let Ok(mut r) = recorded.lock() {
        r.push(Recorded {
            method: parts.method.to_string(),
            path,
            headers: headers.clone(),
            body: body.to_vec(),
        });
    }
    if let Some(ms) = parts
        .headers
        .get("x-upstream-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    // Lets cache tests choose the response's caching headers from the request.
    if let Some(cc) = parts.headers.get("x-upstream-cache-control") {
        resp.headers_mut().insert("cache-control", cc.clone());
    }
    Ok(resp)
}
