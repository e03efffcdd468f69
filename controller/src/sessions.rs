//! The sessions service (`nexus_sessions_service`) inside every Nexus process that hosts the
//! cache service: on Redis when there is one (sessions then outlive every process), in
//! memory otherwise. Its endpoints are routed on the HTTP server (`server.rs`).

use std::sync::Arc;
use std::time::Duration;

use nexus_cache_service::CacheService;
use nexus_sessions_service::storage::{MemoryStorage, RedisStorage};
use nexus_sessions_service::{Config, SessionService};

/// `NEXUS_SESSION_TTL_SECONDS` overrides the absolute session lifetime (default 86400).
/// Browser sign-in is on when a route's provider has `signIn` ([`follow_providers`], or
/// `nexus up`'s routes).
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
    tracing::info!(backend = %service.describe(), ttl_s = service.config().ttl.as_secs(), "serving the sessions service (absolute expiry)");
    Ok(Arc::new(service))
}

/// Every replica's sessions service checks opaque tokens for the filters that reach it (the
/// Service balances over replicas), and a standby reconciles nothing: so each replica follows
/// the routes and Secrets in its scope and compiles the providers itself.
pub async fn follow_providers(
    client: kube::Client,
    scope: crate::policy::WatchScope,
    sessions: Arc<SessionService>,
) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::{reflector, watcher, WatchStreamExt};

    let (routes, route_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let config = watcher::Config::default();
    let route_events = reflector(
        route_writer,
        scope.watch::<crate::crd::NexusRoute>(&client, &(), config.clone()),
    )
    .default_backoff()
    .map(|_| ());
    let secret_events = reflector(secret_writer, scope.watch::<Secret>(&client, &(), config))
        .default_backoff()
        .map(|_| ());
    let mut events = std::pin::pin!(futures::stream::select(route_events, secret_events));
    while events.next().await.is_some() {
        // A burst (the initial lists, an edit of many routes) becomes one recompile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while futures::FutureExt::now_or_never(events.next())
            .flatten()
            .is_some()
        {}
        let lookup = crate::controller::Secrets::from_store(&secrets);
        let compiled = compile_declaring(&routes.state(), &lookup);
        let providers: std::collections::BTreeMap<_, _> = compiled
            .iter()
            .flat_map(|c| c.introspection.clone())
            .collect();
        tracing::debug!(providers = providers.len(), "opaque-token providers");
        sessions.introspector().set_providers(providers);
        if let Err(e) = sessions.set_sign_in(sign_in_of(&compiled)) {
            tracing::error!(error = %e, "browser sign-in is off");
        }
    }
}

/// Every valid route that declares a provider the sessions service serves (opaque tokens,
/// sign-in), compiled, oldest first (the merge order of the filters' configuration).
pub fn compile_declaring(
    routes: &[Arc<crate::crd::NexusRoute>],
    secrets: &dyn crate::model::SecretLookup,
) -> Vec<crate::model::CompiledRoute> {
    let declares = |r: &crate::crd::NexusRoute| {
        r.spec.auth.as_ref().is_some_and(|a| {
            a.providers
                .iter()
                .any(|p| p.introspection.is_some() || p.github.is_some() || p.sign_in.is_some())
        })
    };
    let mut out: Vec<_> = routes
        .iter()
        .filter(|r| declares(r))
        .filter_map(|r| crate::model::compile(r, secrets).ok())
        .collect();
    out.sort_by(|a, b| {
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    out
}

/// The provider browsers sign in with: one per sessions service, the oldest route's (as the
/// session cookie's settings are).
pub fn sign_in_of(
    compiled: &[crate::model::CompiledRoute],
) -> Option<nexus_sessions_service::signin::OidcSettings> {
    compiled.iter().find_map(|c| c.sign_in.clone())
}

/// The opaque-token providers of every valid route that declares one, by their rendered key.
pub fn providers_of(
    routes: &[Arc<crate::crd::NexusRoute>],
    secrets: &dyn crate::model::SecretLookup,
) -> std::collections::BTreeMap<String, nexus_sessions_service::introspect::ProviderSettings> {
    compile_declaring(routes, secrets)
        .into_iter()
        .flat_map(|c| c.introspection)
        .collect()
}
