//! The Nexus sessions service: sign-in sessions the nexus-auth filter checks, hosted by the
//! controller binary (`nexus controller`, `nexus up`) next to the cache-coherency service.
//!
//! - [`storage`]: where sessions live: [`storage::MemoryStorage`] and
//!   [`storage::RedisStorage`] (absolute expiry, ttl 86400 s by default).
//! - [`SessionService`]: creating (a random opaque id), looking up and revoking sessions. A
//!   revocation deletes the session and then publishes a cache invalidation of its
//!   [`revocation_key`] through the cache service, so every proxy following the coherency
//!   event stream drops its copy (the filter's own table lives at most `cache_ttl_s`).
//! - [`http`]: the lookup the filters call, and the admin calls (create, revoke).
//! - [`introspect`]: opaque OAuth2 tokens checked for the filters (RFC 7662, `github`).
//!
//! The contract with the filter (paths, headers, the identity's JSON) is
//! `nexus_config::session`.

pub mod http;
mod id_token;
pub mod introspect;
mod oidc_http;
pub mod signin;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use nexus_cache_service::storage::{system_clock, Clock, StorageError};
use nexus_cache_service::CacheService;
use nexus_config::session::{revocation_key, SessionIdentity};
use nexus_proto::cache::InvalidateRequest;
use ring::rand::{SecureRandom, SystemRandom};

use storage::SessionStorage;

/// Sessions last this long unless configured: the Datapunk design's `ttl: 86400`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute lifetime of a session from its creation (use does not extend it).
    pub ttl: Duration,
    /// Bearer token of the admin calls (create, revoke); none refuses them.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            admin_token: std::env::var("NEXUS_SESSIONS_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }
}

/// Who a new session is for (the identity sign-in derived).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub client_id: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

pub struct SessionService {
    storage: Box<dyn SessionStorage>,
    /// Where revocations are published (every proxy follows its event stream).
    cache: Option<Arc<CacheService>>,
    config: Config,
    clock: Clock,
    random: SystemRandom,
    /// Replaced whole when the routes name another provider (`set_sign_in`); sign-ins in
    /// progress survive, their `state` lives in the store.
    sign_in: std::sync::RwLock<Option<Arc<signin::SignIn>>>,
    introspector: introspect::Introspector,
}

impl SessionService {
    pub fn new(
        storage: impl SessionStorage,
        cache: Option<Arc<CacheService>>,
        config: Config,
    ) -> Self {
        Self::with_clock(storage, cache, config, system_clock())
    }

    pub fn with_clock(
        storage: impl SessionStorage,
        cache: Option<Arc<CacheService>>,
        config: Config,
        clock: Clock,
    ) -> Self {
        Self {
            storage: Box::new(storage),
            cache,
            config,
            introspector: introspect::Introspector::new(clock.clone()),
            clock,
            random: SystemRandom::new(),
            sign_in: std::sync::RwLock::new(None),
        }
    }

    /// Signs browsers in with this OpenID provider (`/_nexus/sign-in`, `/_nexus/callback`,
    /// `/_nexus/logout`).
    pub fn with_sign_in(self, settings: signin::OidcSettings) -> anyhow::Result<Self> {
        self.set_sign_in(Some(settings))?;
        Ok(self)
    }

    /// The provider browsers sign in with from now on (`None`: sign-in answers 404). The same
    /// settings again change nothing.
    pub fn set_sign_in(&self, settings: Option<signin::OidcSettings>) -> anyhow::Result<()> {
        let current = self.sign_in();
        if current.as_ref().map(|s| s.settings()) == settings.as_ref() {
            return Ok(());
        }
        let next = settings.map(signin::SignIn::new).transpose()?.map(Arc::new);
        if let Ok(mut slot) = self.sign_in.write() {
            *slot = next;
        }
        Ok(())
    }

    pub fn sign_in(&self) -> Option<Arc<signin::SignIn>> {
        self.sign_in.read().ok().and_then(|s| s.clone())
    }

    /// The providers of opaque tokens and their verdicts.
    pub fn introspector(&self) -> &introspect::Introspector {
        &self.introspector
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn describe(&self) -> String {
        self.storage.describe()
    }

    pub fn storage(&self) -> &dyn SessionStorage {
        self.storage.as_ref()
    }

    /// Makes a session: a new opaque id (32 random bytes, base64url: 43 characters) and the
    /// identity stored under its hash until `now + ttl`.
    pub async fn create(&self, new: NewSession) -> Result<(String, SessionIdentity), StorageError> {
        let mut bytes = [0u8; 32];
        self.random
            .fill(&mut bytes)
            .map_err(|_| StorageError("no randomness for a session id".into()))?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now_s = (self.clock)() / 1000;
        let session = SessionIdentity {
            client_id: new.client_id,
            scopes: new.scopes,
            headers: new.headers,
            expires_at_s: now_s + self.config.ttl.as_secs(),
        };
        self.storage.put(&id_hash(&id), &session).await?;
        Ok((id, session))
    }

    /// The live session of `id`, if any.
    pub async fn lookup(&self, id: &str) -> Result<Option<SessionIdentity>, StorageError> {
        self.storage.get(&id_hash(id)).await
    }

    /// Ends the session of `id` in the store, then in every proxy's table. Whether there was
    /// one. An error leaves the session possibly alive: the caller must say so (503).
    pub async fn revoke(&self, id: &str) -> Result<bool, StorageError> {
        let hash = id_hash(id);
        let existed = self.storage.delete(&hash).await?;
        if let Some(cache) = &self.cache {
            let req = InvalidateRequest {
                keys: vec![revocation_key(&hash)],
                ..Default::default()
            };
            cache.invalidate(req).await.map_err(|f| {
                StorageError(format!("revocation not published to the proxies: {f:?}"))
            })?;
        }
        Ok(existed)
    }
}

/// Lower-case hex SHA-256 of a session id: its storage key and revocation key.
pub fn id_hash(id: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, id.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
