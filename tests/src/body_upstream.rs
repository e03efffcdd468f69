//! An in-process upstream that answers with JSON bodies chosen by path, for the guard's
//! tests and benchmark: `/bytes/<n>` is a [`sample_json`] body of about `n` bytes,
//! `/pii` is [`PII_JSON`]; `?chunked` sends either without `content-length`, in three parts
//! 30 ms apart (so Envoy hands the filter more than one body chunk).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A response body holding one of each kind of PII the guard finds.
pub const PII_JSON: &str = r#"{"user": {"name": "Jane Doe", "email": "jane.doe@example.com", "phone": "+14155552671", "ssn": "123-45-6789"}, "payment": {"card": "4111 1111 1111 1111", "iban": "GB82WEST12345698765432"}, "order_id": "4111111111111111", "note": "all good"}"#;

/// A JSON body of at least `bytes` bytes as an API answers: records with names, ids and
/// amounts, one in fifty holding an e-mail address.
pub fn sample_json(bytes: usize) -> String {
    let mut out = String::from("{\"items\": [");
    let mut i = 0;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        let contact = if i % 50 == 0 {
            format!("user{i}@example.com")
        } else {
            format!("user {i}")
        };
        out.push_str(&format!(
            r#"{{"id": {i}, "name": "item number {i}", "contact": "{contact}", "amount": {}.{:02}, "tags": ["alpha", "beta"], "created_at": "2024-05-01T12:00:00Z"}}"#,
            i * 37 % 10_000,
            i % 100
        ));
        i += 1;
    }
    out.push_str("]}");
    out
}

pub struct BodyUpstream {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl BodyUpstream {
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("binding body upstream")?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, counter.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            served,
            _runtime: runtime,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received whole (headers and body) so far: a request Envoy resets before its
    /// body is through (a blocked one) is not counted.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// Benchmarks ask for the same megabyte thousands of times: made once per size.
fn cached_sample(n: usize) -> Bytes {
    static CACHE: OnceLock<Mutex<HashMap<usize, Bytes>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = match cache.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(n)
        .or_insert_with(|| Bytes::from(sample_json(n)))
        .clone()
}

async fn handle(
    req: Request<Incoming>,
    served: Arc<AtomicU64>,
) -> Result<Response<Body>, Infallible> {
    let chunked = req.uri().query().is_some_and(|q| q.contains("chunked"));
    let path = req.uri().path().to_string();
    if req.into_body().collect().await.is_ok() {
        served.fetch_add(1, Ordering::Relaxed);
    }
    let bytes = match path.strip_prefix("/bytes/") {
        Some(n) => cached_sample(n.parse().unwrap_or(1024)),
        None => Bytes::from_static(PII_JSON.as_bytes()),
    };
    let body: Body = if chunked {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let third = bytes.len() / 3;
            for (a, b) in [(0, third), (third, 2 * third), (2 * third, bytes.len())] {
                if tx.send(Ok(Frame::data(bytes.slice(a..b)))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        BodyExt::boxed(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    } else {
        BodyExt::boxed(Full::new(bytes))
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
