//! A JWKS server for auth tests: serves a document that tests can rotate, and can be taken
//! "down" (it then answers 503) to exercise stale-key serving and cold-start failures.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    doc: Mutex<String>,
    down: AtomicBool,
    hits: AtomicUsize,
}

/// Serves `GET <any path>` with the current JWKS document on 127.0.0.1.
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl JwksServer {
    pub fn start(doc: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("binding the JWKS server")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        state.set(doc);
        let st = state.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(st.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            _runtime: runtime,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `doc` from now on (key rotation).
    pub fn set_document(&self, doc: &str) {
        self.state.set(doc);
    }

    /// While down, every request gets a 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Requests served so far (including failed ones).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl State {
    fn set(&self, doc: &str) {
        if let Ok(mut d) = self.doc.lock() {
            *d = doc.to_string();
        }
    }
}

async fn serve(
    st: Arc<State>,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    if st.down.load(Ordering::SeqCst) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return Ok(r);
    }
    let doc = st.doc.lock().map(|d| d.clone()).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(doc)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
