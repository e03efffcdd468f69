//! The audit service: `POST /audit/v1/records` with one JSON object per line (what the
//! filters batch), appended to the chain in the order received. A batch is appended whole or
//! refused whole (400 naming the line; 503 when the store failed), and answered only once it
//! is stored (on disk for a file, in Redis for a [`RedisChain`]), so a filter that got 200 may
//! forget it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::chain::Head;
use super::log::ChainedLog;
use super::mirror::Mirror;
use super::redis_chain::RedisChain;

/// Where filters post their batches.
pub const RECORDS_PATH: &str = "/audit/v1/records";
/// Larger batches are refused (413); the filters' batches are far smaller.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Where the chain is kept.
pub enum Store {
    /// A file (`nexus up`), each entry copied to a Redis stream when there is a Redis.
    File {
        log: Mutex<ChainedLog>,
        mirror: Option<Mirror>,
    },
    /// A Redis stream every replica appends to (the controller in a cluster).
    Redis(Box<RedisChain>),
}

/// The running service's state.
pub struct Audit {
    pub store: Store,
    /// Records appended since start.
    pub appended: AtomicU64,
    /// Batches refused (malformed, or the disk failed).
    pub refused: AtomicU64,
}

impl Audit {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store,
            appended: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A file store, copied to `mirror` when given.
    pub fn file(log: ChainedLog, mirror: Option<Mirror>) -> Arc<Self> {
        Self::new(Store::File {
            log: Mutex::new(log),
            mirror,
        })
    }

    /// Appends one batch (NDJSON); the new head as JSON, or the status and reason of a refusal.
    pub async fn append_batch(
        self: &Arc<Self>,
        body: Bytes,
    ) -> Result<Value, (StatusCode, String)> {
        let records = parse_batch(&body).inspect_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
        })?;
        self.append_records(records).await
    }

    /// Appends this process's own records (configuration changes) without waiting: the
    /// reconciler does not stall on Redis. A failure is logged and counted as a refused batch.
    pub fn record(self: &Arc<Self>, records: Vec<Value>) {
        if records.is_empty() {
            return;
        }
        let audit = self.clone();
        tokio::spawn(async move {
            let _ = audit.append_records(records).await;
        });
    }

    async fn append_records(
        self: &Arc<Self>,
        records: Vec<Value>,
    ) -> Result<Value, (StatusCode, String)> {
        let n = records.len() as u64;
        let stored = match &self.store {
            Store::File { .. } => {
                let audit = self.clone();
                tokio::task::spawn_blocking(move || audit.append_to_file(records))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            Store::Redis(chain) => chain.append(records).await.map(|(head, _)| head),
        };
        let head = stored.map_err(|e| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "appending to the audit log failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("appending failed: {e}; nothing of this batch was appended"),
            )
        })?;
        self.appended.fetch_add(n, Ordering::Relaxed);
        tracing::info!(appended = n, seq = head.seq, hash = %head.hash, "audit batch appended");
        Ok(json!({ "appended": n, "seq": head.seq, "hash": head.hash }))
    }

    fn append_to_file(&self, records: Vec<Value>) -> Result<Head, String> {
        let Store::File { log, mirror } = &self.store else {
            return Err("not a file store".to_string());
        };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let (head, lines) = log.append(records).map_err(|e| e.to_string())?;
        // Under the log's lock: the copies queue in the order the entries were chained.
        if let Some(m) = mirror {
            m.send(lines);
        }
        Ok(head)
    }

    /// `nexus_audit_*` in Prometheus text.
    pub fn render(&self) -> String {
        let (conflicts, losses) = match &self.store {
            Store::Redis(chain) => (
                chain.conflicts.load(Ordering::Relaxed),
                chain.losses.load(Ordering::Relaxed),
            ),
            Store::File { .. } => (0, 0),
        };
        format!(
            "# HELP nexus_audit_records_appended_total Audit records appended to the chain.\n\
             # TYPE nexus_audit_records_appended_total counter\n\
             nexus_audit_records_appended_total {}\n\
             # HELP nexus_audit_batches_refused_total Audit batches refused (malformed, or the store failed).\n\
             # TYPE nexus_audit_batches_refused_total counter\n\
             nexus_audit_batches_refused_total {}\n\
             # HELP nexus_audit_append_conflicts_total Appends linked again after another replica appended first.\n\
             # TYPE nexus_audit_append_conflicts_total counter\n\
             nexus_audit_append_conflicts_total {conflicts}\n\
             # HELP nexus_audit_chain_losses_total Times the chain in Redis was behind the head this replica had seen.\n\
             # TYPE nexus_audit_chain_losses_total counter\n\
             nexus_audit_chain_losses_total {losses}\n",
            self.appended.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// Every non-empty line must be a JSON object.
fn parse_batch(body: &[u8]) -> Result<Vec<Value>, (StatusCode, String)> {
    let mut records = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v @ Value::Object(_)) => records.push(v),
            Ok(_) => return Err(bad(i, "not a JSON object")),
            Err(e) => return Err(bad(i, &e.to_string())),
        }
    }
    if records.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "no records".to_string()));
    }
    Ok(records)
}

fn bad(line: usize, why: &str) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        format!(
            "line {}: {why}; nothing of this batch was appended",
            line + 1
        ),
    )
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(audit: Arc<Audit>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != RECORDS_PATH {
        return respond(StatusCode::NOT_FOUND, json!({ "error": "not_found" }));
    }
    if req.method() != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": "method_not_allowed", "detail": "POST a batch" }),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BATCH_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            audit.refused.fetch_add(1, Ordering::Relaxed);
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": "batch_refused", "detail": e.to_string() }),
            );
        }
    };
    match audit.append_batch(body).await {
        Ok(head) => respond(StatusCode::OK, head),
        Err((status, detail)) => respond(
            status,
            json!({ "error": "batch_refused", "detail": detail }),
        ),
    }
}

/// Serves `audit` on `addr` until the runtime stops.
pub async fn serve(addr: SocketAddr, audit: Arc<Audit>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let audit = audit.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let audit = audit.clone();
                    async move { Ok::<_, Infallible>(handle(audit, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_appended_whole_or_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::file(ChainedLog::open(&path).unwrap(), None);
        let head = audit
            .append_batch(Bytes::from_static(
                b"{\"event\":\"a\"}\n\n{\"event\":\"b\"}\n",
            ))
            .await
            .unwrap();
        assert_eq!(head["appended"], 2);
        assert_eq!(head["seq"], 2);
        let (status, why) = audit
            .append_batch(Bytes::from_static(b"{\"event\":\"c\"}\n[1]\n"))
            .await
            .unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            why,
            "line 2: not a JSON object; nothing of this batch was appended"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(audit.appended.load(Ordering::Relaxed), 2);
        assert_eq!(audit.refused.load(Ordering::Relaxed), 1);
    }
}
