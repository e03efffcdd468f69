//! Where the controller watches: the whole cluster, or only the namespaces it is given
//! (`--watch-namespaces`, the chart's `watchNamespaces`), where it holds Roles and nothing
//! cluster-wide.
//!
//! kube-rs watches one namespace or all of them. With a list, each kind is watched once per
//! namespace and the streams are merged into one for one store. A store follows a watch
//! through its relists (`Init`, `InitApply`…, `InitDone` replaces the store's content), so
//! merged streams cannot pass those on as they are: one namespace's relist would drop every
//! other namespace's objects. [`Merged`] turns them into what they mean for one store: the
//! first listing of every namespace is one listing (`Init` … `InitDone` once all are
//! listed), and a later relist of one namespace becomes an `Apply` per object it lists and a
//! `Delete` per object of that namespace it no longer lists.

use std::collections::{BTreeMap, BTreeSet};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::crd::NexusRoute;
pub use crate::policy::WatchScope;

/// A kind that can be watched in one namespace or in all.
pub trait Namespaced:
    Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static
where
    Self::DynamicType: Clone + Send + 'static,
{
    fn api(client: &Client, namespace: Option<&str>, dyntype: &Self::DynamicType) -> Api<Self>;
}

impl Namespaced for DynamicObject {
    fn api(client: &Client, namespace: Option<&str>, ar: &ApiResource) -> Api<Self> {
        match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        }
    }
}

impl Namespaced for NexusRoute {
    fn api(client: &Client, namespace: Option<&str>, _: &()) -> Api<Self> {
        typed_api(client, namespace)
    }
}

impl Namespaced for Secret {
    fn api(client: &Client, namespace: Option<&str>, _: &()) -> Api<Self> {
        typed_api(client, namespace)
    }
}

fn typed_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl WatchScope {
    /// The watch events of `K` over the scope, as one stream a store can follow: one
    /// cluster-wide watch, or one per namespace merged by [`Merged`].
    pub fn watch<K: Namespaced>(
        &self,
        client: &Client,
        dyntype: &K::DynamicType,
        config: watcher::Config,
    ) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
    where
        K::DynamicType: Clone + Send + 'static,
    {
        let apis: Vec<Api<K>> = match self {
            WatchScope::Cluster => vec![K::api(client, None, dyntype)],
            WatchScope::Namespaces { routes, .. } => routes
                .iter()
                .map(|ns| K::api(client, Some(ns), dyntype))
                .collect(),
        };
        let sources = apis.len();
        let streams = apis
            .into_iter()
            .enumerate()
            .map(move |(i, api)| watcher(api, config.clone()).map(move |e| (i, e)).boxed());
        futures::stream::select_all(streams)
            .scan(Merged::new(sources), |merged, (i, event)| {
                let out: Vec<_> = match event {
                    Ok(e) => merged.on(i, e).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::future::ready(Some(futures::stream::iter(out)))
            })
            .flatten()
    }
}

/// Several watches' events as one watch's (see the module doc). One source passes through.
pub struct Merged<K> {
    sources: Vec<Source<K>>,
    /// Until every source has listed once, the merged stream is in its first listing.
    first_listing: bool,
    init_sent: bool,
}

struct Source<K> {
    /// What this source has said exists, by name.
    known: BTreeMap<String, K>,
    /// Names listed in a relist under way.
    relisting: Option<BTreeSet<String>>,
    listed_once: bool,
}

impl<K: Resource + Clone> Merged<K> {
    pub fn new(sources: usize) -> Self {
        let sources = (0..sources)
            .map(|_| Source {
                known: BTreeMap::new(),
                relisting: None,
                listed_once: false,
            })
            .collect();
        Merged {
            sources,
            first_listing: true,
            init_sent: false,
        }
    }

    /// The events one store should see for `event` of source `i`.
    pub fn on(&mut self, i: usize, event: Event<K>) -> Vec<Event<K>> {
        if self.sources.len() == 1 {
            return vec![event];
        }
        let Some(source) = self.sources.get_mut(i) else {
            return Vec::new();
        };
        match event {
            Event::Init => {
                source.relisting = Some(BTreeSet::new());
                if self.first_listing && !self.init_sent {
                    self.init_sent = true;
                    vec![Event::Init]
                } else {
                    Vec::new()
                }
            }
            Event::InitApply(obj) => {
                let name = obj.name_any();
                if let Some(listed) = source.relisting.as_mut() {
                    listed.insert(name.clone());
                }
                source.known.insert(name, obj.clone());
                if self.first_listing {
                    vec![Event::InitApply(obj)]
                } else {
                    vec![Event::Apply(obj)]
                }
            }
            Event::InitDone => self.listed(i),
            Event::Apply(obj) => {
                source.known.insert(obj.name_any(), obj.clone());
                // During the first listing the store takes objects from the listing only.
                if self.first_listing {
                    vec![Event::InitApply(obj)]
                } else {
                    vec![Event::Apply(obj)]
                }
            }
            Event::Delete(obj) => {
                source.known.remove(&obj.name_any());
                vec![Event::Delete(obj)]
            }
        }
    }

    /// Source `i` finished a listing: the first listing ends once every source has listed;
    /// a later one deletes what the source no longer lists.
    fn listed(&mut self, i: usize) -> Vec<Event<K>> {
        let Some(source) = self.sources.get_mut(i) else {
            return Vec::new();
        };
        let listed = source.relisting.take().unwrap_or_default();
        source.listed_once = true;
        if self.first_listing {
            if self.sources.iter().all(|s| s.listed_once) {
                self.first_listing = false;
                return vec![Event::InitDone];
            }
            return Vec::new();
        }
        let gone: Vec<String> = (source.known.keys())
            .filter(|n| !listed.contains(*n))
            .cloned()
            .collect();
        gone.iter()
            .filter_map(|n| source.known.remove(n))
            .map(Event::Delete)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": ns },
        }))
        .unwrap()
    }

    fn describe(events: &[Event<ConfigMap>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Init => "Init".to_string(),
                Event::InitDone => "InitDone".to_string(),
                Event::InitApply(o) => format!("InitApply {}", o.name_any()),
                Event::Apply(o) => format!("Apply {}", o.name_any()),
                Event::Delete(o) => format!("Delete {}", o.name_any()),
            })
            .collect()
    }

    #[test]
    fn the_first_listing_of_every_namespace_is_one_listing() {
        let mut m = Merged::new(2);
        let mut seen = Vec::new();
        seen.extend(m.on(0, Event::Init));
        seen.extend(m.on(1, Event::Init));
        seen.extend(m.on(0, Event::InitApply(cm("a", "x"))));
        seen.extend(m.on(0, Event::InitDone));
        seen.extend(m.on(1, Event::InitApply(cm("b", "y"))));
        seen.extend(m.on(1, Event::InitDone));
        assert_eq!(
            describe(&seen),
            ["Init", "InitApply x", "InitApply y", "InitDone"]
        );
    }

    #[test]
    fn a_later_relist_of_one_namespace_keeps_the_others_and_deletes_what_went() {
        let mut m = Merged::new(2);
        for (i, ns, name) in [(0, "a", "x"), (1, "b", "y")] {
            m.on(i, Event::Init);
            m.on(i, Event::InitApply(cm(ns, name)));
            m.on(i, Event::InitDone);
        }
        m.on(0, Event::Apply(cm("a", "z")));
        // Namespace a's watch restarts; x is gone meanwhile, z is still there.
        let mut seen = Vec::new();
        seen.extend(m.on(0, Event::Init));
        seen.extend(m.on(0, Event::InitApply(cm("a", "z"))));
        seen.extend(m.on(0, Event::InitDone));
        assert_eq!(describe(&seen), ["Apply z", "Delete x"]);
    }

    #[test]
    fn one_source_passes_through() {
        let mut m = Merged::new(1);
        let seen: Vec<_> = [Event::Init, Event::InitApply(cm("a", "x")), Event::InitDone]
            .into_iter()
            .flat_map(|e| m.on(0, e))
            .collect();
        assert_eq!(describe(&seen), ["Init", "InitApply x", "InitDone"]);
    }
}
