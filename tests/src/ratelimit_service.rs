//! The Nexus rate-limit service in-process, on a kernel-chosen 127.0.0.1 port, stoppable
//! mid-test to exercise the filters' failure modes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use nexus_ratelimit_service::limits::parse;
use nexus_ratelimit_service::storage::{MemoryStorage, RedisStorage, Storage};
use nexus_ratelimit_service::{Algorithm, Limits, RateLimiter, UnknownDomain};
use tokio::sync::oneshot;

/// Tests count against real time, so the service runs GCRA: a fixed window would reset at a
/// minute boundary that a test happens to straddle and admit a second burst.
const ALGORITHM: Algorithm = Algorithm::Gcra;

/// Where the service keeps counters.
pub enum Backend {
    Memory,
    Redis(String),
}

/// The service's metrics in Prometheus text.
type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

pub struct RateLimitServer {
    pub port: u16,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RateLimitServer {
    /// Serves the limits in `config_yaml` (one domain, envoyproxy/ratelimit format).
    pub fn start(config_yaml: &str, backend: Backend) -> Result<Self> {
        let limits = Limits::new([parse(config_yaml)?])?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let metrics: Metrics = match backend {
            Backend::Memory => {
                let rl = Arc::new(RateLimiter::new(
                    limits,
                    MemoryStorage::new(),
                    ALGORITHM,
                    UnknownDomain::Allow,
                ));
                runtime.spawn(serve(rl.clone(), incoming, stopped));
                Arc::new(move || rl.metrics.render())
            }
            Backend::Redis(url) => {
                let prefix = format!("nexus-e2e:{}:{port}:", std::process::id());
                let storage = RedisStorage::new(&url, &prefix, Duration::from_millis(200))?;
                let rl = Arc::new(RateLimiter::new(
                    limits,
                    storage,
                    ALGORITHM,
                    UnknownDomain::Allow,
                ));
                runtime.spawn(serve(rl.clone(), incoming, stopped));
                Arc::new(move || rl.metrics.render())
            }
        };
        Ok(Self {
            port,
            metrics,
            stop: Some(stop),
            runtime: Some(runtime),
        })
    }

    /// A counter of the service's metrics (`nexus_ratelimit_lease_calls_total`, ...); 0 when
    /// absent.
    pub fn counter(&self, name: &str) -> u64 {
        (self.metrics)()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Stops serving and closes the port: calls then fail as with a crashed service.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for RateLimitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Both of the service's APIs: `ShouldRateLimit` and leases.
async fn serve<S: Storage>(
    limiter: Arc<RateLimiter<S>>,
    incoming: tokio_stream::wrappers::TcpListenerStream,
    stopped: oneshot::Receiver<()>,
) {
    let _ = tonic::transport::Server::builder()
        .add_service(limiter.clone().into_service())
        .add_service(limiter.into_lease_service())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        })
        .await;
}
