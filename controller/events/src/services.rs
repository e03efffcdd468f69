//! The [`Handler`] of a Nexus process: commands carried out by the services it hosts (the
//! cache-coherency service, the rate-limit service) and, for `route.reconcile`, by whatever
//! the controller plugs in. A command for a service this process does not run is refused
//! with that reason, so it lands in the dead-letter queue instead of vanishing.

use std::sync::Arc;

use nexus_cache_service::service::Failure;
use nexus_cache_service::CacheService;
use nexus_config::ratelimit::reset_key;
use nexus_proto::cache::InvalidateRequest;
use nexus_ratelimit_service::server::SharedLimiter;
use serde_json::json;

use crate::command::{Command, Handler, HandlerError, ReconcileArgs, ResetArgs};
use crate::event::{CacheSelection, Event, FlushData, SessionData};
use crate::publisher::Events;

/// Reconciles the named routes (all when none is named) now; the answer's text goes in the
/// reply. Plugged in by the controller.
pub type Reconcile = Arc<dyn Fn(ReconcileArgs) -> Result<String, String> + Send + Sync>;

/// The descriptor key the nexus-ratelimit filter puts the client in, and the rule in.
pub(crate) const CLIENT_KEY: &str = "client_id";
pub(crate) const RULE_KEY: &str = nexus_config::ratelimit::ROUTE_KEY;

#[derive(Clone, Default)]
pub struct Services {
    pub cache: Option<Arc<CacheService>>,
    /// The sessions service: `session.revoke` ends a session in its store and, through the
    /// cache service's event stream, in every proxy's session table.
    pub sessions: Option<Arc<nexus_sessions_service::SessionService>>,
    pub limiter: Option<SharedLimiter>,
    pub reconcile: Option<Reconcile>,
    /// Where `nexus.cache.invalidated` / `nexus.cache.flushed` go after a command took effect.
    pub events: Option<Events>,
}

#[async_trait::async_trait]
impl Handler for Services {
    async fn handle(&self, command: &Command) -> Result<serde_json::Value, HandlerError> {
        match command {
            Command::CacheInvalidate(s) => self.invalidate(s).await,
            Command::CacheFlush(a) => self.flush(a.reason.clone()).await,
            Command::RatelimitReset(a) => self.reset(a).await,
            Command::RouteReconcile(a) => match &self.reconcile {
                Some(r) => r(a.clone())
                    .map(|done| json!({ "reconciled": done }))
                    .map_err(HandlerError::Unavailable),
                None => Err(refused(
                    "this process does not reconcile routes (not the controller)",
                )),
            },
            Command::SessionRevoke(a) => self.revoke(&a.session).await,
        }
    }
}

fn refused(why: &str) -> HandlerError {
    HandlerError::Refused(why.to_string())
}

fn failure(f: Failure) -> HandlerError {
    match f {
        Failure::Invalid(i) => HandlerError::Refused(format!("{}: {}", i.path, i.detail)),
        Failure::Unavailable(m) => HandlerError::Unavailable(m),
    }
}

impl Services {
    fn cache(&self) -> Result<&CacheService, HandlerError> {
        self.cache
            .as_deref()
            .ok_or_else(|| refused("this process runs no cache service"))
    }

    fn announce(&self, event: Event) {
        if let Some(e) = &self.events {
            e.publish(event);
        }
    }

    async fn invalidate(&self, s: &CacheSelection) -> Result<serde_json::Value, HandlerError> {
        let req = InvalidateRequest {
            keys: s.keys.clone(),
            prefixes: s.prefixes.clone(),
            tags: s.tags.clone(),
        };
        let resp = self.cache()?.invalidate(req).await.map_err(failure)?;
        self.announce(Event::CacheInvalidated(s.clone()));
        Ok(json!({ "removed": resp.removed }))
    }

    async fn flush(&self, reason: Option<String>) -> Result<serde_json::Value, HandlerError> {
        let reason = reason.unwrap_or_else(|| "cache.flush command".to_string());
        self.cache()?.flush(reason.clone()).await.map_err(failure)?;
        self.announce(Event::CacheFlushed(FlushData { reason }));
        Ok(json!({ "flushed": true }))
    }

    async fn revoke(&self, session: &str) -> Result<serde_json::Value, HandlerError> {
        let sessions = self
            .sessions
            .as_ref()
            .ok_or_else(|| refused("this process runs no sessions service"))?;
        let existed = sessions
            .revoke(session)
            .await
            .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
        self.announce(Event::SessionRevoked(SessionData {
            session: session.to_string(),
        }));
        Ok(json!({ "revoked": existed }))
    }

    async fn reset(&self, a: &ResetArgs) -> Result<serde_json::Value, HandlerError> {
        let limiter = self
            .limiter
            .as_ref()
            .ok_or_else(|| refused("this process runs no rate-limit service"))?;
        let mut entries = Vec::new();
        if let Some(rule) = &a.rule {
            entries.push((RULE_KEY.to_string(), rule.clone()));
        }
        if let Some(client) = &a.client {
            entries.push((CLIENT_KEY.to_string(), client.clone()));
        }
        let deleted = limiter
            .reset(&entries)
            .await
            .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
        // Then every proxy forgets the 429s it remembered for those counters (their
        // over-limit caches follow the cache service's event stream): only after the counters
        // are gone, or a request in between would be refused and remembered again.
        let proxies_told = match &self.cache {
            Some(cache) => {
                let req = InvalidateRequest {
                    keys: vec![reset_key(&entries)],
                    ..Default::default()
                };
                cache.invalidate(req).await.map_err(failure)?;
                true
            }
            None => false,
        };
        Ok(json!({ "deleted": deleted, "proxies_told": proxies_told }))
    }
}
