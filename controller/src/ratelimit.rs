//! The rate-limit service inside `nexus controller`. Every replica serves it, leader or not (they
//! share counters through Redis), with limits taken from the rate-limit ConfigMaps the leader
//! renders: the service and the filters read the very same configuration.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use nexus_config::ratelimit::RateLimitConfig;
use nexus_ratelimit_service::server::SharedLimiter;
use nexus_ratelimit_service::Limits;

use crate::render::{FIELD_MANAGER, LABEL_MANAGED_BY};

/// Keeps `limiter`'s limits equal to the managed rate-limit ConfigMaps (all in the
/// controller's `namespace`), until the watch ends.
pub async fn follow_configmaps(client: Client, namespace: String, limiter: SharedLimiter) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut live: BTreeMap<(String, String), RateLimitConfig> = BTreeMap::new();
    let mut initial: Option<BTreeMap<(String, String), RateLimitConfig>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => initial = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(cm)) => {
                if let (Some(set), Some((key, cfg))) = (initial.as_mut(), parse(&cm)) {
                    set.insert(key, cfg);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => live = initial.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(cm)) => match parse(&cm) {
                Some((key, cfg)) => {
                    live.insert(key, cfg);
                }
                None => {
                    live.remove(&key_of(&cm));
                }
            },
            Ok(watcher::Event::Delete(cm)) => {
                live.remove(&key_of(&cm));
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit ConfigMap watch failed; retrying");
                continue;
            }
        }
        match Limits::new(live.values().cloned()) {
            Ok(limits) => {
                let domains: Vec<&str> = limits.domains().collect();
                tracing::info!(?domains, "rate limits updated");
                limiter.set_limits(limits);
            }
            Err(e) => tracing::error!(error = %e, "rate limits not updated"),
        }
    }
}

fn key_of(cm: &ConfigMap) -> (String, String) {
    (cm.namespace().unwrap_or_default(), cm.name_any())
}

/// A managed ConfigMap's `config.yaml`; a bad one is logged and skipped (the others still apply).
fn parse(cm: &ConfigMap) -> Option<((String, String), RateLimitConfig)> {
    let text = cm.data.as_ref()?.get("config.yaml")?;
    match nexus_ratelimit_service::limits::parse(text) {
        Ok(cfg) => Some((key_of(cm), cfg)),
        Err(e) => {
            tracing::error!(configmap = %cm.name_any(), error = %format!("{e:#}"), "invalid rate-limit config");
            None
        }
    }
}
