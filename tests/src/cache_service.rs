//! A fake `nexus.cache.v1.Cache` in-process, on a kernel-chosen 127.0.0.1 port: an in-memory
//! shared cache with last-write-wins puts, and `Subscribe` streams the test drives (send any
//! event, break every stream).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use nexus_proto::cache::cache_server::{Cache, CacheServer as CacheService};
use nexus_proto::cache::{
    event, Entry, Event, GetRequest, GetResponse, Hello, InvalidateRequest, InvalidateResponse,
    Invalidation, PutRequest, PutResponse, SubscribeRequest, Update,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

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
