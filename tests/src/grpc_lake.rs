//! A gRPC `datapunk.lake.v1.Lake` upstream that counts the calls it answered, answers
//! `UNAVAILABLE` on command, and can be killed (its port closed) mid-test: the primary of the
//! gRPC-primary, REST-fallback tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use nexus_proto::lake::lake_server::{Lake, LakeServer};
use nexus_proto::lake::{GetTableRequest, Table};
use tokio::sync::oneshot;

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    unavailable: AtomicBool,
}

struct Service(Arc<Counters>);

#[tonic::async_trait]
impl Lake for Service {
    async fn get_table(
        &self,
        request: tonic::Request<GetTableRequest>,
    ) -> Result<tonic::Response<Table>, tonic::Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if self.0.unavailable.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("draining"));
        }
        let name = request.into_inner().name;
        Ok(tonic::Response::new(Table {
            name,
            rows: 42,
            served_by: "grpc".to_string(),
        }))
    }

    async fn create_table(
        &self,
        request: tonic::Request<Table>,
    ) -> Result<tonic::Response<Table>, tonic::Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if self.0.unavailable.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("draining"));
        }
        Ok(tonic::Response::new(Table {
            served_by: "grpc".to_string(),
            ..request.into_inner()
        }))
    }
}

pub struct GrpcLake {
    pub port: u16,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GrpcLake {
    /// Serves on a kernel-chosen 127.0.0.1 port (HTTP/2 cleartext).
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = LakeServer::new(Service(counters.clone()));
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
            counters,
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }

    /// Calls that reached the service (answered or refused).
    pub fn calls(&self) -> u64 {
        self.counters.calls.load(Ordering::SeqCst)
    }

    /// Every call from now on gets `UNAVAILABLE` (`true`) or an answer (`false`).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.counters
            .unavailable
            .store(unavailable, Ordering::SeqCst);
    }

    /// Stops serving and closes the port: connections to it are refused.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for GrpcLake {
    fn drop(&mut self) {
        self.kill();
    }
}
