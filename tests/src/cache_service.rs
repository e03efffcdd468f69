//! `nexus.cache.v1.Cache` for tests, in-process on kernel-chosen 127.0.0.1 ports:
//!
//! - [`CacheServer`]: a FAKE: an in-memory shared cache with last-write-wins puts, and
//!   `Subscribe` streams the test drives (send any event, break every stream).
//! - [`RealReplica`]: the real `nexus-cache-service` on Redis; several on one namespace are a
//!   replica set sharing entries and events. [`cache_envoy`] starts an Envoy with the
//!   nexus-cache filter following one of them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nexus_cache_service::http as real_http;
use nexus_cache_service::server;
use nexus_cache_service::storage::RedisNamespace;
use nexus_cache_service::{CacheService as RealService, Config as RealConfig};
use nexus_proto::cache::cache_client::CacheClient;
use nexus_proto::cache::cache_server::{Cache, CacheServer as CacheService};
use nexus_proto::cache::{
    event, Entry, Event, GetRequest, GetResponse, Hello, InvalidateRequest, InvalidateResponse,
    Invalidation, PutRequest, PutResponse, SubscribeRequest, Update,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::envoy::{Envoy, EnvoyConfig, WasmFilter};

type Events = mpsc::Sender<Result<Event, Status>>;

#[derive(Default)]
struct State {
    entries: HashMap<String, (Entry, Instant)>,
    subscribers: Vec<(String, Events)>,
    gets: Vec<String>,
    puts: Vec<PutRequest>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn publish(&self, kind: event::Kind) {
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let event = Event { kind: Some(kind) };
        st.subscribers
            .retain(|(_, tx)| tx.try_send(Ok(event.clone())).is_ok());
    }
}

#[tonic::async_trait]
impl Cache for Fake {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = req.into_inner().key;
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        st.gets.push(key.clone());
        let now = Instant::now();
        let entry = st.entries.get(&key).and_then(|(e, expires)| {
            (*expires > now).then(|| Entry {
                ttl_remaining_ms: (*expires - now).as_millis() as u64,
                ..e.clone()
            })
        });
        Ok(Response::new(GetResponse { entry }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let p = req.into_inner();
        let stored = {
            let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
            st.puts.push(p.clone());
            let newer = st.entries.get(&p.key).is_none_or(|(e, _)| {
                (p.timestamp_ms, p.writer.as_str()) > (e.timestamp_ms, e.writer.as_str())
            });
            if newer {
                let entry = Entry {
                    value: p.value.clone(),
                    tags: p.tags.clone(),
                    timestamp_ms: p.timestamp_ms,
                    writer: p.writer.clone(),
                    ttl_remaining_ms: 0,
                };
                let expires = Instant::now() + Duration::from_millis(p.ttl_ms);
                st.entries.insert(p.key.clone(), (entry, expires));
            }
            newer
        };
        if stored {
            self.publish(event::Kind::Update(Update {
                key: p.key.clone(),
                timestamp_ms: p.timestamp_ms,
                writer: p.writer.clone(),
            }));
        }
        Ok(Response::new(PutResponse {
            stored,
            timestamp_ms: p.timestamp_ms,
            writer: p.writer,
        }))
    }

    async fn invalidate(
        &self,
        req: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        let r = req.into_inner();
        let removed = {
            let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let before = st.entries.len();
            st.entries.retain(|k, (e, _)| {
                !(r.keys.contains(k)
                    || r.prefixes.iter().any(|p| k.starts_with(p.as_str()))
                    || e.tags.iter().any(|t| r.tags.contains(t)))
            });
            (before - st.entries.len()) as u64
        };
        self.publish(event::Kind::Invalidation(Invalidation {
            keys: r.keys,
            prefixes: r.prefixes,
            tags: r.tags,
        }));
        Ok(Response::new(InvalidateResponse { removed }))
    }

    type SubscribeStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<Event, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let hello = Event {
            kind: Some(event::Kind::Hello(Hello {
                replica: "fake".into(),
            })),
        };
        let _ = tx.try_send(Ok(hello));
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribers
            .push((req.into_inner().subscriber, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub struct CacheServer {
    pub port: u16,
    fake: Fake,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl CacheServer {
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let fake = Fake::default();
        let service = CacheService::new(fake.clone());
        runtime.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            port,
            fake,
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }

    /// Removes matching shared entries and sends an `Invalidation` on every stream.
    pub fn invalidate(&self, keys: &[&str], prefixes: &[&str], tags: &[&str]) {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let req = InvalidateRequest {
            keys: owned(keys),
            prefixes: owned(prefixes),
            tags: owned(tags),
        };
        let fake = self.fake.clone();
        if let Some(rt) = &self.runtime {
            let _ = rt.block_on(async move { fake.invalidate(Request::new(req)).await });
        }
    }

    /// Sends `kind` on every open stream.
    pub fn publish(&self, kind: event::Kind) {
        self.fake.publish(kind);
    }

    /// Ends every stream with UNAVAILABLE, as a replica losing Redis or restarting would.
    pub fn break_streams(&self) {
        let subscribers = std::mem::take(
            &mut self
                .fake
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .subscribers,
        );
        for (_, tx) in subscribers {
            let _ = tx.try_send(Err(Status::unavailable("stream broken by the test")));
        }
    }

    /// Open streams (their Hello sent).
    pub fn subscribers(&self) -> usize {
        let mut st = self.fake.0.lock().unwrap_or_else(|e| e.into_inner());
        st.subscribers.retain(|(_, tx)| !tx.is_closed());
        st.subscribers.len()
    }

    /// Waits until at least `n` streams are open.
    pub fn wait_for_subscribers(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.subscribers() < n {
            if Instant::now() > deadline {
                bail!(
                    "{} subscribers after {timeout:?}, wanted {n}",
                    self.subscribers()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn gets(&self) -> Vec<String> {
        self.fake
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gets
            .clone()
    }

    pub fn puts(&self) -> Vec<PutRequest> {
        self.fake
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .puts
            .clone()
    }

    /// Unix milliseconds, for building versions in tests.
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for CacheServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The machine's shared Redis (never flushed: tests use [`unique_namespace`]).
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// Bearer token of every [`RealReplica`]'s `POST /cache/invalidate`.
pub const TOKEN: &str = "nexus-test-cache-token";

/// Keys and channels no other test (or earlier run) uses.
pub fn unique_namespace(label: &str) -> RedisNamespace {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    RedisNamespace::isolated(&format!(
        "nexus-test:{label}:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Fails (never skips) when `redis_url`'s Redis does not answer.
pub fn assert_redis(redis_url: &str) -> Result<()> {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", redis_url, "ping"])
        .output()
        .context("running redis-cli (apt-get install redis-tools)")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "PONG" {
        bail!("Redis is not answering at {redis_url}; start it with: redis-server --daemonize yes --port 6379 --save ''");
    }
    Ok(())
}

/// A REAL `nexus-cache-service` replica in-process (its own runtime): gRPC and
/// `POST /cache/invalidate` on kernel-chosen 127.0.0.1 ports, on Redis under a namespace.
/// Replicas started on the same Redis and namespace share entries and events.
pub struct RealReplica {
    pub name: String,
    /// `nexus.cache.v1.Cache` (point an Envoy's gRPC cluster here).
    pub port: u16,
    /// `POST /cache/invalidate` (bearer [`TOKEN`]).
    pub http_port: u16,
    pub service: Arc<RealService>,
    redis_url: String,
    namespace: RedisNamespace,
    client: CacheClient<Channel>,
    stop: Option<watch::Sender<bool>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RealReplica {
    /// Starts a replica and waits until its event feed is subscribed on Redis.
    pub fn start(redis_url: &str, namespace: &RedisNamespace, name: &str) -> Result<Self> {
        assert_redis(redis_url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let config = RealConfig {
            replica: name.to_string(),
            token: Some(TOKEN.to_string()),
            ..RealConfig::default()
        };
        let (stop, stopped) = watch::channel(false);
        let (service, port, http_port, client) = runtime.block_on(async {
            let service = server::build(
                Some(redis_url),
                namespace,
                config,
                Duration::from_millis(500),
            )?;
            if !service.bus().wait_live(Duration::from_secs(10)).await {
                bail!("replica {name}: not subscribed on {redis_url} within 10 s");
            }
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let (port, http_port) = (grpc.local_addr()?.port(), http.local_addr()?.port());
            let until = |mut rx: watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            tokio::spawn(server::serve_grpc(
                service.clone(),
                grpc,
                until(stopped.clone()),
            ));
            tokio::spawn(real_http::serve(service.clone(), http, until(stopped)));
            let client = CacheClient::connect(format!("http://127.0.0.1:{port}")).await?;
            Ok::<_, anyhow::Error>((service, port, http_port, client))
        })?;
        Ok(Self {
            name: name.to_string(),
            port,
            http_port,
            service,
            redis_url: redis_url.to_string(),
            namespace: namespace.clone(),
            client,
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }

    /// `n` replicas (`replica-1` ...) on one Redis and namespace.
    pub fn start_n(n: usize, redis_url: &str, namespace: &RedisNamespace) -> Result<Vec<Self>> {
        (1..=n)
            .map(|i| Self::start(redis_url, namespace, &format!("replica-{i}")))
            .collect()
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime.as_ref().context("replica stopped")
    }

    /// `Invalidate` over gRPC, on this replica only (the others hear it through Redis).
    /// Answers how many shared entries were removed.
    pub fn invalidate(&self, keys: &[&str], prefixes: &[&str], tags: &[&str]) -> Result<u64> {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let req = InvalidateRequest {
            keys: owned(keys),
            prefixes: owned(prefixes),
            tags: owned(tags),
        };
        let mut client = self.client.clone();
        let resp = self
            .runtime()?
            .block_on(async move { client.invalidate(req).await })?;
        Ok(resp.into_inner().removed)
    }

    /// The shared entry under `key`, if live (gRPC `Get`).
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        let mut client = self.client.clone();
        let req = GetRequest { key: key.into() };
        let resp = self
            .runtime()?
            .block_on(async move { client.get(req).await })?;
        Ok(resp.into_inner().entry)
    }

    /// Keys of the shared entries whose key starts with `prefix`, read from Redis itself.
    pub fn stored_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = self.namespace.entry_prefix();
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &self.redis_url, "--scan", "--pattern"])
            .arg(format!("{entries}{prefix}*"))
            .output()
            .context("running redis-cli")?;
        if !out.status.success() {
            bail!("redis-cli --scan: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&entries).map(str::to_string))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Open `Subscribe` streams.
    pub fn subscribers(&self) -> u64 {
        self.service.metrics.subscribers.load(Ordering::Relaxed)
    }

    /// `Flush` events sent on this replica's streams so far.
    pub fn flushes_sent(&self) -> u64 {
        self.service.metrics.flushes_sent.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` streams are open.
    pub fn wait_for_subscribers(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.subscribers() < n {
            if Instant::now() > deadline {
                bail!(
                    "{}: {} subscribers after {timeout:?}, wanted {n}",
                    self.name,
                    self.subscribers()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for RealReplica {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Envoy (`concurrency` 2) with the nexus-cache filter (`config`: its JSON, whose service
/// cluster must be `nexus-cache`) following `replica`, routing `x-nexus-upstream: lake` to
/// `upstream_port`. Returns once both workers' streams are open and their L1 is in use: a
/// probe path (`/lake/.probe-<port>`) answers `hit-local` several times in a row.
pub fn cache_envoy(config: &str, replica: &RealReplica, upstream_port: u16) -> Result<Envoy> {
    let before = replica.subscribers();
    let envoy = Envoy::start(&EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-cache".into(),
            module: crate::filter_module("nexus_cache")?,
            config: config.into(),
        }],
        upstreams: vec![("lake".into(), upstream_port)],
        grpc_clusters: vec![("nexus-cache".into(), replica.port)],
        concurrency: 2,
        ..Default::default()
    })?;
    replica.wait_for_subscribers(before + 2, Duration::from_secs(10))?;
    // A worker whose stream has not had its Hello keeps off the L1 (answers hit-shared).
    let probe = format!("/lake/.probe-{}", envoy.port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 8 {
        if Instant::now() > deadline {
            bail!("{probe} never answered hit-local 8 times in a row within 10 s");
        }
        if cache_label(&envoy, &probe, &[])? == "hit-local" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(envoy)
}

/// `x-nexus-cache` of a GET through `envoy` to the `lake` upstream ("" when absent); fails
/// unless the status is 200.
pub fn cache_label(envoy: &Envoy, path: &str, extra: &[(&str, &str)]) -> Result<String> {
    let mut headers = vec![("x-nexus-upstream", "lake")];
    headers.extend_from_slice(extra);
    let resp = crate::client::get(envoy.port, path, &headers)?;
    if resp.status != 200 {
        bail!("GET {path}: status {} ({})", resp.status, resp.text());
    }
    Ok(resp.header("x-nexus-cache").unwrap_or("").to_string())
}
