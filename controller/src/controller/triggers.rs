//! Which changes wake which routes' reconciles, and which do not.
//!
//! Reconciles are what the controller pays for, so only changes that can change a plan wake
//! one: a route's spec (its generation) or its deletion, not its status or metadata; a
//! Secret a route references; a route sharing a host (a conflict may have moved); and an
//! object the controller owns changed or deleted by someone else. The controller's own
//! writes come back on the watches too and are recognised by the objects' managedFields.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::crd::NexusRoute;
use crate::model;
use crate::render::{FIELD_MANAGER, LABEL_GROUP, LABEL_GROUP_NAMESPACE};

/// What of a route can change its plan: its generation (the API server bumps it on every
/// spec change, never on status) and whether it is being deleted.
pub fn plan_inputs(route: &NexusRoute) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    route.metadata.generation.hash(&mut h);
    route.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// The routes whose plan inputs ([`plan_inputs`]) changed, and every deleted route. kube's
/// `predicate_filter` would drop the final deletion (its inputs equal those of the update that
/// set the deletion timestamp), yet that deletion is what its neighbours may have waited for:
/// this stream is a separate watch from the controller's store, so a neighbour woken by the
/// deletion timestamp may have planned from a store that did not show it yet.
pub fn plan_changes(
    events: impl Stream<Item = Result<watcher::Event<NexusRoute>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<NexusRoute, watcher::Error>> + Send {
    events
        .scan(std::collections::HashMap::new(), |seen, event| {
            let out = match event {
                Ok(watcher::Event::Delete(r)) => {
                    seen.remove(&r.uid());
                    Some(Ok(r))
                }
                Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => {
                    let inputs = plan_inputs(&r);
                    (seen.insert(r.uid(), inputs) != Some(inputs)).then_some(Ok(r))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready)
}

/// Whether someone other than the controller wrote this object since the controller's
/// last apply: a manager of its spec or metadata that is not [`FIELD_MANAGER`] whose write
/// is not older than the controller's. The controller's own applies come back on the
/// watches, often before the apply's response is read, so the object itself says who wrote
/// it rather than a list of versions the controller remembers. Status writes (another
/// controller's `subresource: status`) change nothing the controller renders. Times have
/// one-second resolution: a tie counts as foreign (one extra reconcile, never a missed edit).
pub fn written_by_others(meta: &ObjectMeta) -> bool {
    let entries = meta.managed_fields.as_deref().unwrap_or_default();
    let spec_writes = entries.iter().filter(|e| e.subresource.is_none());
    let ours = spec_writes
        .clone()
        .filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|e| e.time.as_ref().map(|t| t.0))
        .max();
    let Some(ours) = ours else {
        return true;
    };
    spec_writes
        .filter(|e| e.manager.as_deref() != Some(FIELD_MANAGER))
        .any(|e| e.time.as_ref().is_none_or(|t| t.0 >= ours))
}

/// The generated objects whose watch events should wake a route: deleted ones, and ones
/// someone else wrote ([`written_by_others`]). The controller's own applies pass nothing.
pub fn foreign_changes<K: Resource + Send + 'static>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send {
    events.filter_map(|event| {
        futures::future::ready(match event {
            Ok(watcher::Event::Delete(o)) => Some(Ok(o)),
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                written_by_others(o.meta()).then_some(Ok(o))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    })
}

/// The owning route of a generated object; group objects have many owners: the first by
/// uid re-renders the group for all.
pub fn owner_of<K: Resource>(obj: &K) -> Option<ObjectRef<NexusRoute>> {
    let mut owners: Vec<_> = obj.owner_references().to_vec();
    owners.sort_by(|a, b| a.uid.cmp(&b.uid));
    let owner = owners.into_iter().find(|o| o.kind == "NexusRoute")?;
    let r = ObjectRef::<NexusRoute>::new(&owner.name);
    Some(match obj.meta().namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    })
}

/// A member of the group a group object (EnvoyFilter, rate-limit ConfigMap) belongs to, by
/// its labels (group objects cross namespaces, so they carry no owner references): the
/// first by uid, whose reconcile re-renders the group for all.
pub fn group_member_of<K: Resource>(
    store: &Store<NexusRoute>,
    obj: &K,
) -> Option<ObjectRef<NexusRoute>> {
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

/// The routes a `route.reconcile` command names: one route, a namespace's, or every route.
pub fn routes_named(
    store: &Store<NexusRoute>,
    args: &nexus_events::command::ReconcileArgs,
) -> Vec<ObjectRef<NexusRoute>> {
    store
        .state()
        .iter()
        .filter(|r| {
            let ns_ok = args.namespace.is_none() || r.namespace() == args.namespace;
            let name_ok = args.name.as_ref().is_none_or(|n| r.name_any() == *n);
            ns_ok && name_ok
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

    fn meta_with(entries: &[(&str, Option<&str>, &str)]) -> ObjectMeta {
        serde_json::from_value(serde_json::json!({
            "name": "x",
            "managedFields": entries.iter().map(|(manager, subresource, time)| {
                let mut e = serde_json::json!({
                    "manager": manager, "operation": "Apply", "apiVersion": "v1",
                    "time": time, "fieldsType": "FieldsV1", "fieldsV1": {},
                });
                if let Some(s) = subresource { e["subresource"] = (*s).into(); }
                e
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn the_controllers_own_writes_are_not_foreign() {
        let ours = meta_with(&[(FIELD_MANAGER, None, "2026-01-01T00:00:10Z")]);
        assert!(!written_by_others(&ours));
        let status_by_istio = meta_with(&[
            (FIELD_MANAGER, None, "2026-01-01T00:00:10Z"),
            ("pilot-discovery", Some("status"), "2026-01-01T00:00:20Z"),
        ]);
        assert!(
            !written_by_others(&status_by_istio),
            "status writes change no spec"
        );
        let fixed_since = meta_with(&[
            ("kubectl-edit", None, "2026-01-01T00:00:05Z"),
            (FIELD_MANAGER, None, "2026-01-01T00:00:10Z"),
        ]);
        assert!(
            !written_by_others(&fixed_since),
            "the controller applied after the edit"
        );
    }

    #[test]
    fn edits_by_others_are_foreign() {
        let edited = meta_with(&[
            (FIELD_MANAGER, None, "2026-01-01T00:00:10Z"),
            ("kubectl-edit", None, "2026-01-01T00:00:30Z"),
        ]);
        assert!(written_by_others(&edited));
        let same_second = meta_with(&[
            (FIELD_MANAGER, None, "2026-01-01T00:00:10Z"),
            ("kubectl-edit", None, "2026-01-01T00:00:10Z"),
        ]);
        assert!(
            written_by_others(&same_second),
            "a tie wakes rather than misses"
        );
        let not_ours = meta_with(&[("kubectl-create", None, "2026-01-01T00:00:10Z")]);
        assert!(written_by_others(&not_ours));
        assert!(written_by_others(&ObjectMeta::default()));
    }

    fn route(ns: &str, name: &str) -> NexusRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "nexus.datapunk.io/v1alpha1", "kind": "NexusRoute",
            "metadata": { "name": name, "namespace": ns, "uid": format!("{ns}-{name}") },
            "spec": { "target": { "kind": "Gateway", "selector": { "istio": "ingressgateway" } }, "rules": [] },
        }))
        .unwrap()
    }

    #[test]
    fn a_reconcile_command_names_one_route_a_namespace_or_all() {
        let (store, mut writer) = kube::runtime::reflector::store();
        for (ns, name) in [("a", "x"), ("a", "y"), ("b", "x")] {
            writer.apply_watcher_event(&watcher::Event::Apply(route(ns, name)));
        }
        let named = |namespace: Option<&str>, name: Option<&str>| {
            let args = nexus_events::command::ReconcileArgs {
                namespace: namespace.map(str::to_string),
                name: name.map(str::to_string),
            };
            let mut refs: Vec<String> = routes_named(&store, &args)
                .iter()
                .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name))
                .collect();
            refs.sort();
            refs
        };
        assert_eq!(named(Some("a"), Some("x")), ["a/x"]);
        assert_eq!(named(Some("a"), None), ["a/x", "a/y"]);
        assert_eq!(named(None, None), ["a/x", "a/y", "b/x"]);
        assert!(named(Some("c"), None).is_empty());
    }

    #[tokio::test]
    async fn a_routes_final_deletion_passes_though_its_inputs_did_not_change() {
        let mut deleting = route("a", "x");
        deleting.metadata.generation = Some(1);
        let mut status_only = deleting.clone();
        status_only.status = Some(Default::default());
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let events = futures::stream::iter([
            Ok(watcher::Event::Apply(status_only.clone())),
            Ok(watcher::Event::Apply(status_only)),
            Ok(watcher::Event::Apply(deleting.clone())),
            Ok(watcher::Event::Delete(deleting)),
        ]);
        let passed: Vec<_> = plan_changes(events).collect().await;
        let kinds: Vec<bool> = passed
            .iter()
            .map(|r| r.as_ref().unwrap().metadata.deletion_timestamp.is_some())
            .collect();
        assert_eq!(
            kinds,
            [false, true, true],
            "first sight, deletion timestamp, deletion"
        );
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
