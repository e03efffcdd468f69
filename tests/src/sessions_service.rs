//! The real sessions service for tests, in-process on a kernel-chosen 127.0.0.1 port: its
//! store on a Redis (a unique key prefix per instance), its revocations published through a
//! cache-coherency service (a [`crate::cache_service::RealReplica`]'s), and an Envoy with the
//! nexus-auth filter checking sessions against it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use nexus_cache_service::CacheService;
use nexus_sessions_service::storage::RedisStorage;
use nexus_sessions_service::{Config, NewSession, SessionService};
use tokio::sync::watch;

/// The admin bearer token of test instances.
pub const TOKEN: &str = "sessions-admin-token";

pub struct SessionsServer {
    pub port: u16,
    pub service: Arc<SessionService>,
    stop: watch::Sender<bool>,
    runtime: tokio::runtime::Runtime,
}

impl SessionsServer {
    /// Sessions in `redis_url` under `prefix` (None: a new unique one).
    pub fn start(
        redis_url: &str,
        prefix: Option<&str>,
        cache: Option<Arc<CacheService>>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let prefix = prefix.map_or_else(unique_prefix, str::to_string);
        let storage = RedisStorage::new(redis_url, &prefix, Duration::from_millis(300))?;
        let config = Config {
            admin_token: Some(TOKEN.into()),
            ..Config::default()
        };
        let service = Arc::new(SessionService::new(storage, cache, config));
        let (stop, stopped) = watch::channel(false);
        let port = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let until = async move {
                let mut rx = stopped;
                let _ = rx.wait_for(|s| *s).await;
            };
            tokio::spawn(nexus_sessions_service::http::serve(
                service.clone(),
                listener,
                until,
            ));
            Ok::<_, anyhow::Error>(port)
        })?;
        Ok(Self {
            port,
            service,
            stop,
            runtime,
        })
    }

    /// A new session for `client_id`: its id.
    pub fn create(&self, client_id: &str, headers: &[(&str, &str)]) -> Result<String> {
        let new = NewSession {
            client_id: client_id.into(),
            scopes: vec!["openid".into()],
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        };
        let (id, _) = self.runtime.block_on(self.service.create(new))?;
        Ok(id)
    }

    pub fn revoke(&self, id: &str) -> Result<bool> {
        Ok(self.runtime.block_on(self.service.revoke(id))?)
    }
}

impl Drop for SessionsServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "nexus-test:session:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
