//! The sessions service (`nexus_sessions_service`) inside every Nexus process that hosts the
//! cache service: on Redis when there is one (sessions then outlive every process), in
//! memory otherwise. Its endpoints are routed on the HTTP server (`server.rs`).

use std::sync::Arc;
use std::time::Duration;

use nexus_cache_service::CacheService;
use nexus_sessions_service::signin::OidcSettings;
use nexus_sessions_service::storage::{MemoryStorage, RedisStorage};
use nexus_sessions_service::{Config, SessionService};

/// `NEXUS_SESSION_TTL_SECONDS` overrides the absolute session lifetime (default 86400).
/// `NEXUS_SIGN_IN_CONFIG` names a JSON file of `nexus_sessions_service::signin::OidcSettings`
/// (issuer, client id, redirect URI, ...) and `NEXUS_SIGN_IN_CLIENT_SECRET_FILE` the file
/// holding the client secret (a mounted Secret in a cluster): browser sign-in is then on.
pub fn build(
    redis_url: Option<&str>,
    cache: Arc<CacheService>,
) -> anyhow::Result<Arc<SessionService>> {
    let mut config = Config::default();
    if let Ok(v) = std::env::var("NEXUS_SESSION_TTL_SECONDS") {
        let secs: u64 = v
            .parse()
            .map_err(|e| anyhow::anyhow!("NEXUS_SESSION_TTL_SECONDS={v:?}: {e}"))?;
        anyhow::ensure!(secs > 0, "NEXUS_SESSION_TTL_SECONDS must be at least 1");
        config.ttl = Duration::from_secs(secs);
    }
    if config.admin_token.is_none() {
        tracing::warn!(
            "NEXUS_SESSIONS_TOKEN is not set: the sessions admin API refuses every call"
        );
    }
    let timeout = Duration::from_millis(100);
    let service = match redis_url {
        Some(url) => SessionService::new(
            RedisStorage::new(
                url,
                nexus_sessions_service::storage::DEFAULT_PREFIX,
                timeout,
            )?,
            Some(cache),
            config,
        ),
        None => SessionService::new(
            MemoryStorage::new(nexus_cache_service::storage::system_clock()),
            Some(cache),
            config,
        ),
    };
    let service = match sign_in_settings()? {
        Some(settings) => {
            tracing::info!(issuer = %settings.issuer, client_id = %settings.client_id, "browser sign-in on");
            service.with_sign_in(settings)?
        }
        None => service,
    };
    tracing::info!(backend = %service.describe(), ttl_s = service.config().ttl.as_secs(), "serving the sessions service (absolute expiry)");
    Ok(Arc::new(service))
}

/// The sign-in provider from `NEXUS_SIGN_IN_CONFIG` and its secret from
/// `NEXUS_SIGN_IN_CLIENT_SECRET_FILE` (never from the environment itself, nor logged).
fn sign_in_settings() -> anyhow::Result<Option<OidcSettings>> {
    let Ok(path) = std::env::var("NEXUS_SIGN_IN_CONFIG") else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("NEXUS_SIGN_IN_CONFIG={path}: {e}"))?;
    let mut settings: OidcSettings = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("NEXUS_SIGN_IN_CONFIG={path}: {e}"))?;
    let secret_path = std::env::var("NEXUS_SIGN_IN_CLIENT_SECRET_FILE").map_err(|_| {
        anyhow::anyhow!("NEXUS_SIGN_IN_CONFIG is set: NEXUS_SIGN_IN_CLIENT_SECRET_FILE must name the client secret's file")
    })?;
    settings.client_secret = std::fs::read_to_string(&secret_path)
        .map_err(|e| anyhow::anyhow!("NEXUS_SIGN_IN_CLIENT_SECRET_FILE={secret_path}: {e}"))?
        .trim()
        .to_string();
    Ok(Some(settings))
}
