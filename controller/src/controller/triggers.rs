//! Which changes wake which routes' reconciles, and which do not.
//!
//! Reconciles are what the controller pays for, so only changes that can change a plan wake
//! one: a route's spec (its generation) or its deletion, not its status or metadata; a
//! Secret a route references; a route sharing a host (a conflict may have moved); and an
//! object the controller owns changed by someone else. The controller's own writes come
//! back on the watches too and are recognised by their resourceVersion.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::crd::NexusRoute;
use crate::model;
use crate::render::{LABEL_GROUP, LABEL_GROUP_NAMESPACE};

/// What of a route can change its plan: its generation (the API server bumps it on every
/// spec change, never on status) and whether it is being deleted.
pub fn plan_inputs(route: &NexusRoute) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    route.metadata.generation.hash(&mut h);
    route.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// resourceVersions the controller's own applies returned, so their watch events wake
/// nobody. Bounded: the oldest are forgotten first (a forgotten one costs one reconcile).
pub struct OwnWrites {
    recent: Mutex<(HashSet<String>, VecDeque<String>)>,
    capacity: usize,
}

impl Default for OwnWrites {
    fn default() -> Self {
        OwnWrites {
            recent: Mutex::new((HashSet::new(), VecDeque::new())),
            capacity: 16_384,
        }
    }
}

impl OwnWrites {
    pub fn record(&self, resource_version: &str) {
        let Ok(mut guard) = self.recent.lock() else {
            return;
        };
        let (set, order) = &mut *guard;
        if set.insert(resource_version.to_string()) {
            order.push_back(resource_version.to_string());
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    /// Whether this version is one the controller wrote (each is seen once).
    pub fn is_own(&self, resource_version: Option<&str>) -> bool {
        let (Some(rv), Ok(mut guard)) = (resource_version, self.recent.lock()) else {
            return false;
        };
        guard.0.remove(rv)
    }
}

/// The owning route of a generated object someone else changed; group objects have many
/// owners: the first by uid re-renders the group for all.
pub fn owner_of<K: Resource>(own: &OwnWrites, obj: &K) -> Option<ObjectRef<NexusRoute>> {
    if own.is_own(obj.meta().resource_version.as_deref()) {
        return None;
    }
    let mut owners: Vec<_> = obj.owner_references().to_vec();
    owners.sort_by(|a, b| a.uid.cmp(&b.uid));
    let owner = owners.into_iter().find(|o| o.kind == "NexusRoute")?;
    let r = ObjectRef::<NexusRoute>::new(&owner.name);
    Some(match obj.meta().namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    })
}

/// [`owner_of`] for the dynamically typed Istio objects.
pub fn owner_of_dynamic(own: &OwnWrites, obj: &DynamicObject) -> Option<ObjectRef<NexusRoute>> {
    owner_of(own, obj)
}

/// A member of the group a group object (EnvoyFilter, rate-limit ConfigMap) belongs to, by
/// its labels (group objects cross namespaces, so they carry no owner references): the
/// first by uid, whose reconcile re-renders the group for all.
pub fn group_member_of<K: Resource>(
    store: &Store<NexusRoute>,
    own: &OwnWrites,
    obj: &K,
) -> Option<ObjectRef<NexusRoute>> {
    if own.is_own(obj.meta().resource_version.as_deref()) {
        return None;
    }
    let labels = obj.labels();
    let (name, ns) = (labels.get(LABEL_GROUP)?, labels.get(LABEL_GROUP_NAMESPACE)?);
    store
        .state()
        .iter()
        .filter(|r| {
            let key = model::group_key(r);
            key.namespace == *ns && key.name() == *name
        })
        .min_by(|a, b| a.uid().cmp(&b.uid()))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
}

/// Routes whose `auth.apiKeys.secretRef` names this Secret.
pub fn routes_for_secret(store: &Store<NexusRoute>, secret: &Secret) -> Vec<ObjectRef<NexusRoute>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str())
                && r.spec
                    .auth
                    .as_ref()
                    .and_then(|a| a.api_keys.as_ref())
                    .map(|k| k.secret_ref.name.as_str())
                    == Some(name.as_str())
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Other routes sharing a host with `route` (the winner or loser of a conflict with it):
/// when it changes or goes away, they are re-checked.
pub fn routes_sharing_hosts(
    store: &Store<NexusRoute>,
    route: &NexusRoute,
) -> Vec<ObjectRef<NexusRoute>> {
    let hosts = |r: &NexusRoute| -> BTreeSet<String> {
        if r.spec.hosts.is_empty() {
            BTreeSet::from(["*".to_string()])
        } else {
            r.spec.hosts.iter().cloned().collect()
        }
    };
    let mine = hosts(route);
    store
        .state()
        .iter()
        .filter(|r| r.uid() != route.uid() && r.spec.target.kind == route.spec.target.kind)
        .filter(|r| !hosts(r).is_disjoint(&mine))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_writes_are_recognised_once_and_bounded() {
        let own = OwnWrites {
            capacity: 2,
            ..Default::default()
        };
        own.record("1");
        own.record("2");
        own.record("3");
        assert!(!own.is_own(Some("1")), "the oldest was forgotten");
        assert!(own.is_own(Some("3")));
        assert!(!own.is_own(Some("3")), "each version is seen once");
        assert!(!own.is_own(None));
    }

    #[test]
    fn status_changes_do_not_change_the_plan_inputs() {
        let mut r: NexusRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
            "metadata": { "name": "a", "namespace": "n", "generation": 1 },
            "spec": { "target": { "kind": "Gateway", "selector": { "istio": "ingressgateway" } }, "rules": [] },
        }))
        .unwrap();
        let before = plan_inputs(&r);
        r.status = Some(Default::default());
        r.metadata.finalizers = Some(vec!["x".into()]);
        assert_eq!(plan_inputs(&r), before);
        r.metadata.generation = Some(2);
        assert_ne!(plan_inputs(&r), before);
    }
}
