//! The service over one storage and one bus: validation, events, metrics, and the tonic
//! `nexus.cache.v1.Cache` implementation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use nexus_proto::cache::cache_server::{Cache, CacheServer};
use nexus_proto::cache::{
    event, Event, GetRequest, GetResponse, Hello, InvalidateRequest, InvalidateResponse,
    Invalidation, PutRequest, PutResponse, SubscribeRequest, Update,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::bus::{flush, Bus};
use crate::metrics::{Metrics, SubscriberGauge};
use crate::storage::{newer, system_clock, Clock, Storage, StorageError, Watermark};

#[derive(Debug, Clone)]
pub struct Config {
    /// This replica's name, sent in every stream's `Hello`.
    pub replica: String,
    /// Larger values are refused (INVALID_ARGUMENT): the shared cache is for responses, not blobs.
    pub max_value_bytes: usize,
    /// Longer TTLs are shortened to this.
    pub max_ttl: Duration,
    /// Bearer token of `POST /cache/invalidate`; without one, that endpoint refuses everyone.
    pub token: Option<String>,
    /// How long an invalidation's watermarks refuse puts of responses fetched before it. Must
    /// outlast the longest time from a filter deciding to fetch to its `Put` arriving (upstream
    /// timeout plus the `Put` timeout, seconds); a put older than this is no longer checked.
    pub watermark_ttl: Duration,
    /// Added to this service's clock when it records a watermark: how far a proxy's clock may
    /// run ahead of this service's without a response fetched before an invalidation slipping
    /// past it. 0 by default (`NEXUS_CACHE_CLOCK_SKEW_MS`); see the README.
    pub clock_skew_allowance: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            replica: default_replica(),
            max_value_bytes: 1 << 20,
            max_ttl: Duration::from_secs(24 * 3600),
            token: std::env::var("NEXUS_CACHE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            watermark_ttl: Duration::from_secs(3600),
            clock_skew_allowance: Duration::from_millis(
                std::env::var("NEXUS_CACHE_CLOCK_SKEW_MS")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
}

/// `POD_NAME`, else `<hostname>-<pid>`.
pub fn default_replica() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "nexus".into());
        format!("{host}-{}", std::process::id())
    })
}

/// A request that cannot be served as asked: where in it (a JSON path like `keys[1]`, `.` for
/// the whole), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub detail: String,
}

impl Invalid {
    fn new(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// What may fail in a call, before it becomes a gRPC status or an HTTP answer.
#[derive(Debug)]
pub enum Failure {
    Invalid(Invalid),
    Unavailable(String),
}

impl From<Failure> for Status {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Invalid(i) => Status::invalid_argument(format!("{}: {}", i.path, i.detail)),
            Failure::Unavailable(m) => Status::unavailable(m),
        }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

pub struct CacheService {
    storage: Box<dyn Storage>,
    bus: Box<dyn Bus>,
    config: Config,
    /// Stamps invalidation watermarks.
    clock: Clock,
    pub metrics: Arc<Metrics>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CacheService {
    pub fn new(storage: impl Storage, bus: impl Bus, config: Config) -> Self {
        Self {
            storage: Box::new(storage),
            bus: Box::new(bus),
            config,
            clock: system_clock(),
            metrics: Arc::default(),
        }
    }

    /// The clock that stamps invalidation watermarks (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    pub fn bus(&self) -> &dyn Bus {
        self.bus.as_ref()
    }

    pub fn describe(&self) -> String {
        format!(
            "storage {}, events {}",
            self.storage.describe(),
            self.bus.describe()
        )
    }

    fn invalid(&self, path: &str, detail: impl Into<String>) -> Failure {
        Metrics::inc(&self.metrics.invalid_requests);
        Failure::Invalid(Invalid::new(path, detail))
    }

    fn unavailable(&self, what: &str, e: StorageError) -> Failure {
        Metrics::inc(&self.metrics.storage_errors);
        Failure::Unavailable(format!("cache {what} unavailable: {e}"))
    }

    pub async fn get(&self, req: &GetRequest) -> Result<GetResponse, Failure> {
        if req.key.is_empty() {
            return Err(self.invalid("key", "must not be empty"));
        }
        let entry = self
            .storage
            .get(&req.key)
            .await
            .map_err(|e| self.unavailable("storage", e))?;
        Metrics::inc(if entry.is_some() {
            &self.metrics.gets_hit
        } else {
            &self.metrics.gets_miss
        });
        Ok(GetResponse { entry })
    }

    pub async fn put(&self, mut req: PutRequest) -> Result<PutResponse, Failure> {
        if req.key.is_empty() {
            return Err(self.invalid("key", "must not be empty"));
        }
        if req.value.len() > self.config.max_value_bytes {
            return Err(self.invalid(
                "value",
                format!(
                    "{} bytes is more than the maximum of {}",
                    req.value.len(),
                    self.config.max_value_bytes
                ),
            ));
        }
        if req.ttl_ms == 0 {
            return Err(self.invalid("ttl_ms", "must be positive"));
        }
        if let Some(i) = req.tags.iter().position(String::is_empty) {
            return Err(self.invalid(&format!("tags[{i}]"), "must not be empty"));
        }
        req.ttl_ms = req.ttl_ms.min(millis(self.config.max_ttl));
        let resp = self
            .storage
            .put(&req)
            .await
            .map_err(|e| self.unavailable("storage", e))?;
        if !resp.stored {
            // Refused although newer than what is stored: an invalidation's watermark.
            Metrics::inc(
                if newer(
                    req.timestamp_ms,
                    &req.writer,
                    resp.timestamp_ms,
                    &resp.writer,
                ) {
                    &self.metrics.puts_invalidated
                } else {
                    &self.metrics.puts_rejected
                },
            );
            return Ok(resp);
        }
        Metrics::inc(&self.metrics.puts_stored);
        // Stored but not announced: other replicas' local copies would stay stale, so the
        // caller hears of it (a retry is harmless: the same version is not stored twice).
        self.publish(Event {
            kind: Some(event::Kind::Update(Update {
                key: req.key,
                timestamp_ms: resp.timestamp_ms,
                writer: resp.writer.clone(),
            })),
        })
        .await?;
        Ok(resp)
    }

    pub async fn invalidate(&self, req: InvalidateRequest) -> Result<InvalidateResponse, Failure> {
        if let Err(i) = check_invalidation(&req) {
            Metrics::inc(&self.metrics.invalid_requests);
            return Err(Failure::Invalid(i));
        }
        Metrics::inc(&self.metrics.invalidations);
        let selection = Invalidation {
            keys: req.keys,
            prefixes: req.prefixes,
            tags: req.tags,
        };
        let watermark = Watermark {
            at_ms: (self.clock)().saturating_add(millis(self.config.clock_skew_allowance)),
            ttl_ms: millis(self.config.watermark_ttl).max(1),
        };
        let removed = self
            .storage
            .invalidate(&selection, watermark)
            .await
            .map_err(|e| self.unavailable("storage", e))?;
        Metrics::add(&self.metrics.entries_removed, removed);
        // Published even when nothing was removed here: local copies may outlive shared ones.
        self.publish(Event {
            kind: Some(event::Kind::Invalidation(selection)),
        })
        .await?;
        Ok(InvalidateResponse { removed })
    }

    /// Tells every proxy of every replica to drop its whole local (L1) cache: the
    /// `cache.flush` command. Shared (L2) entries stay: they are only as old as their TTL, and
    /// a selective invalidation removes them.
    pub async fn flush(&self, reason: impl Into<String>) -> Result<(), Failure> {
        self.publish(flush(reason)).await
    }

    async fn publish(&self, event: Event) -> Result<(), Failure> {
        match self.bus.publish(&event).await {
            Ok(()) => {
                Metrics::inc(&self.metrics.events_published);
                Ok(())
            }
            Err(e) => {
                tracing::error!("event not published: {e}");
                Err(self.unavailable("event bus", e))
            }
        }
    }

    /// `Hello`, then every event of this replica's feed. The feed is joined before `Hello` is
    /// sent, so nothing published after the subscriber heard `Hello` is missed; and `Hello`
    /// waits until the feed is live (Redis subscribed), so it means what it says.
    pub fn subscribe(&self) -> EventStream {
        struct Feed {
            hello: Option<Event>,
            live: tokio::sync::watch::Receiver<bool>,
            events: tokio::sync::broadcast::Receiver<Event>,
            gauge: SubscriberGauge,
        }
        let feed = Feed {
            live: self.bus.live(),
            events: self.bus.subscribe(),
            hello: Some(Event {
                kind: Some(event::Kind::Hello(Hello {
                    replica: self.config.replica.clone(),
                })),
            }),
            gauge: SubscriberGauge::open(self.metrics.clone()),
        };
        futures::stream::unfold(feed, |mut feed| async move {
            if let Some(hello) = feed.hello.take() {
                // The bus is gone only when the service is: end the stream.
                feed.live.wait_for(|up| *up).await.ok()?;
                return Some((Ok(hello), feed));
            }
            let event = match feed.events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(n)) => flush(format!(
                    "this stream fell {n} events behind; they were dropped"
                )),
                Err(RecvError::Closed) => return None,
            };
            if matches!(event.kind, Some(event::Kind::Flush(_))) {
                Metrics::inc(&feed.gauge.0.flushes_sent);
            }
            Some((Ok(event), feed))
        })
        .boxed()
    }

    /// The tonic service for this cache.
    pub fn into_service(self: Arc<Self>) -> CacheServer<GrpcService> {
        CacheServer::new(GrpcService(self))
    }
}

/// At least one selector, none empty (an empty prefix would select every entry).
pub fn check_invalidation(req: &InvalidateRequest) -> Result<(), Invalid> {
    if req.keys.is_empty() && req.prefixes.is_empty() && req.tags.is_empty() {
        return Err(Invalid::new(
            ".",
            "an invalidation needs at least one of keys, prefixes or tags",
        ));
    }
    for (field, values) in [
        ("keys", &req.keys),
        ("prefixes", &req.prefixes),
        ("tags", &req.tags),
    ] {
        if let Some(i) = values.iter().position(String::is_empty) {
            return Err(Invalid::new(format!("{field}[{i}]"), "must not be empty"));
        }
    }
    Ok(())
}

pub struct GrpcService(pub Arc<CacheService>);

#[tonic::async_trait]
impl Cache for GrpcService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Ok(Response::new(self.0.get(request.get_ref()).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.0.put(request.into_inner()).await?))
    }

    async fn invalidate(
        &self,
        request: Request<InvalidateRequest>,
    ) -> Result<Response<InvalidateResponse>, Status> {
        Ok(Response::new(
            self.0.invalidate(request.into_inner()).await?,
        ))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(self.0.subscribe()))
    }
}
