//! What one reconcile does, computed once from a snapshot of the routes: the pure core the
//! controller and `nexus render` share.
//!
//! A [`Snapshot`] holds every route the controller knows and the conflicts among them; a
//! [`Plan`] is one route's outcome, its own objects and its group's members, all from that
//! one snapshot. The [`Compiler`] remembers compiled routes, so planning a group of 500
//! routes compiles only the routes that changed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::crd::{NexusRoute, TargetKind};
use crate::model::{self, age_key, CompiledRoute, GroupKey, Problem, Reason, SecretLookup};
use crate::objects::{Kind, Object};
use crate::policy::AllowedRoutes;
use crate::render::{self, Settings};

pub type RouteId = (String, String);

/// A route's compiled form, or why it is not accepted.
pub type Outcome = Arc<Result<CompiledRoute, Vec<Problem>>>;

/// Each route's outcome.
pub type Outcomes = BTreeMap<RouteId, Result<CompiledRoute, Vec<Problem>>>;

pub fn id(route: &NexusRoute) -> RouteId {
    (
        route.metadata.namespace.clone().unwrap_or_default(),
        route.metadata.name.clone().unwrap_or_default(),
    )
}

/// Compiles routes and remembers the result per route uid, valid while the route's
/// generation and the content of the Secret it references stay the same (everything else
/// `compile` reads — name, namespace, uid, creation time — never changes).
#[derive(Default)]
pub struct Compiler {
    cache: Mutex<HashMap<String, Compiled>>,
}

struct Compiled {
    generation: Option<i64>,
    secret: u64,
    outcome: Outcome,
}

impl Compiler {
    pub fn compile(&self, route: &NexusRoute, secrets: &dyn SecretLookup) -> Outcome {
        let uid = route.metadata.uid.clone().unwrap_or_default();
        let generation = route.metadata.generation;
        let secret = secret_fingerprint(route, secrets);
        if let Ok(cache) = self.cache.lock() {
            if let Some(c) = cache.get(&uid) {
                if c.generation == generation && c.secret == secret && !uid.is_empty() {
                    return c.outcome.clone();
                }
            }
        }
        let outcome = Arc::new(model::compile(route, secrets));
        if let Ok(mut cache) = self.cache.lock() {
            let entry = Compiled {
                generation,
                secret,
                outcome: outcome.clone(),
            };
            cache.insert(uid, entry);
        }
        outcome
    }

    /// Drops a deleted route's entry.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(uid);
        }
    }
}

/// Why a gateway refuses this route, if it does (see [`crate::policy`]): its namespace is
/// outside the controller's scope, or it does not allow the route's namespace.
fn not_allowed(route: &NexusRoute, policy: &AllowedRoutes) -> Option<Problem> {
    if route.spec.target.kind != TargetKind::Gateway {
        return None;
    }
    let gateway_ns = model::target_namespace(route);
    let route_ns = route.metadata.namespace.as_deref().unwrap_or_default();
    if !policy.scope.writes_envoy_filters_in(&gateway_ns) {
        return Some(Problem {
            reason: Reason::NamespaceNotWatched,
            path: "$.spec.target.namespace".into(),
            message: format!(
                "the gateway's namespace {gateway_ns:?} is outside the namespaces this controller \
                 may write EnvoyFilters in ({}; --watch-namespaces, --gateway-namespaces): add it to --gateway-namespaces to attach filters to its gateways",
                policy.scope
            ),
        });
    }
    if policy.allows(&gateway_ns, route_ns) {
        return None;
    }
    Some(Problem {
        reason: Reason::NotAllowedByGateway,
        path: "$.spec.target.namespace".into(),
        message: format!(
            "routes in namespace {route_ns:?} may not attach filters to gateways in {gateway_ns:?}, \
             which allows routes from: {} (the controller's --allowed-routes)",
            policy.from(&gateway_ns)
        ),
    })
}

/// A hash of the API-key Secret the route references (0 when it references none).
fn secret_fingerprint(route: &NexusRoute, secrets: &dyn SecretLookup) -> u64 {
    let Some(keys) = route.spec.auth.as_ref().and_then(|a| a.api_keys.as_ref()) else {
        return 0;
    };
    let ns = route.metadata.namespace.as_deref().unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secrets.get(ns, &keys.secret_ref.name).hash(&mut h);
    h.finish() | 1
}

/// Every route the controller knows at one moment, and which of them are refused before
/// compiling: routes a gateway does not allow, and conflict losers.
pub struct Snapshot<'a> {
    routes: Vec<&'a NexusRoute>,
    refused: BTreeMap<RouteId, Problem>,
}

impl<'a> Snapshot<'a> {
    pub fn new(routes: Vec<&'a NexusRoute>, policy: &AllowedRoutes) -> Snapshot<'a> {
        let mut refused: BTreeMap<RouteId, Problem> = routes
            .iter()
            .filter_map(|r| not_allowed(r, policy).map(|p| (id(r), p)))
            .collect();
        // A route the gateway refuses claims nothing: it cannot make another lose a conflict.
        let allowed: Vec<&NexusRoute> = routes
            .iter()
            .copied()
            .filter(|r| !refused.contains_key(&id(r)))
            .collect();
        for (route, problem) in model::conflicts(&allowed) {
            refused.entry(route).or_insert(problem);
        }
        Snapshot { routes, refused }
    }

    /// `route`'s outcome: why it is refused, or its compiled form.
    pub fn outcome(
        &self,
        route: &NexusRoute,
        compiler: &Compiler,
        secrets: &dyn SecretLookup,
    ) -> Outcome {
        match self.refused.get(&id(route)) {
            Some(p) => Arc::new(Err(vec![p.clone()])),
            None => compiler.compile(route, secrets),
        }
    }

    /// The live (not deleted) routes of a group, oldest first.
    fn members(&self, group: &GroupKey) -> Vec<&'a NexusRoute> {
        let mut members: Vec<&NexusRoute> = self
            .routes
            .iter()
            .copied()
            .filter(|r| r.metadata.deletion_timestamp.is_none() && model::group_key(r) == *group)
            .collect();
        members.sort_by_key(|r| age_key(r));
        members
    }

    /// The group's accepted members, compiled.
    pub fn group(
        &self,
        key: GroupKey,
        compiler: &Compiler,
        secrets: &dyn SecretLookup,
    ) -> GroupPlan {
        let members = self
            .members(&key)
            .into_iter()
            .map(|r| self.outcome(r, compiler, secrets))
            .filter(|o| o.is_ok())
            .collect();
        GroupPlan {
            namespace: key.namespace.clone(),
            name: key.name(),
            key: Some(key),
            members,
        }
    }
}

/// One group's shared objects: what its accepted members render to.
pub struct GroupPlan {
    pub namespace: String,
    pub name: String,
    /// `None` for a group known only by name (one the route left, now empty).
    key: Option<GroupKey>,
    /// Accepted members, oldest first.
    members: Vec<Outcome>,
}

impl GroupPlan {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The group's EnvoyFilter and ConfigMap; none when it has no accepted member.
    pub fn render(&self, settings: &Settings) -> anyhow::Result<Vec<Object>> {
        let (Some(key), false) = (&self.key, self.members.is_empty()) else {
            return Ok(Vec::new());
        };
        let routes: Vec<&CompiledRoute> = self
            .members
            .iter()
            .filter_map(|o| o.as_ref().as_ref().ok())
            .collect();
        render::render_group(key, &routes, settings)
    }

    /// Kind, namespace and name of every object a group writes (to delete them when it
    /// empties).
    pub fn object_names(&self, settings: &Settings) -> [(Kind, String, String); 2] {
        render::group_object_names(&self.namespace, &self.name, settings)
    }
}

/// Everything one reconcile of one route applies, from one snapshot.
pub struct Plan {
    pub outcome: Outcome,
    /// VirtualService + DestinationRules (empty unless accepted and not being deleted).
    pub route_objects: Vec<Object>,
    /// The route's group, without the route if it is being deleted.
    pub group: GroupPlan,
    /// The group the route was programmed into before, when it moved to another.
    pub left_group: Option<GroupPlan>,
}

/// Plans the reconcile of `route`. `previous_group`: the group its status says it was last
/// programmed into.
pub fn reconcile(
    route: &NexusRoute,
    snapshot: &Snapshot,
    compiler: &Compiler,
    secrets: &dyn SecretLookup,
    previous_group: Option<&str>,
    settings: &Settings,
) -> Plan {
    let outcome = snapshot.outcome(route, compiler, secrets);
    let route_objects = match (
        outcome.as_ref(),
        route.metadata.deletion_timestamp.is_none(),
    ) {
        (Ok(c), true) => render::render_route(c, settings),
        _ => Vec::new(),
    };
    let key = model::group_key(route);
    let group = snapshot.group(key.clone(), compiler, secrets);
    let left_group = previous_group
        .filter(|name| *name != key.name())
        .map(|name| left_group(route, name, snapshot, compiler, secrets));
    Plan {
        outcome,
        route_objects,
        group,
        left_group,
    }
}

/// The group named `name` in the route's namespace, as the other routes still in it make it.
fn left_group(
    route: &NexusRoute,
    name: &str,
    snapshot: &Snapshot,
    compiler: &Compiler,
    secrets: &dyn SecretLookup,
) -> GroupPlan {
    let ns = route.metadata.namespace.clone().unwrap_or_default();
    let member = snapshot.routes.iter().find(|r| {
        r.metadata.deletion_timestamp.is_none()
            && r.metadata.uid != route.metadata.uid
            && r.metadata.namespace.as_deref() == Some(ns.as_str())
            && model::group_key(r).name() == name
    });
    match member {
        Some(m) => snapshot.group(model::group_key(m), compiler, secrets),
        None => GroupPlan {
            namespace: ns,
            name: name.to_string(),
            key: None,
            members: Vec::new(),
        },
    }
}

/// Compiles every live route, with conflict losers and routes their gateway refuses rejected.
pub fn outcomes(
    routes: &[&NexusRoute],
    secrets: &dyn SecretLookup,
    policy: &AllowedRoutes,
) -> Outcomes {
    let snapshot = Snapshot::new(routes.to_vec(), policy);
    let compiler = Compiler::default();
    routes
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .map(|r| {
            let out = snapshot.outcome(r, &compiler, secrets);
            (id(r), out.as_ref().clone())
        })
        .collect()
}

/// Every object for a set of routes (what `nexus render` prints), sorted by kind/ns/name.
pub fn render_all(
    routes: &[&NexusRoute],
    secrets: &dyn SecretLookup,
    settings: &Settings,
) -> anyhow::Result<(Vec<Value>, Outcomes)> {
    let outs = outcomes(routes, secrets, &settings.allowed_routes);
    let mut groups: BTreeMap<GroupKey, Vec<&CompiledRoute>> = BTreeMap::new();
    let mut objects = Vec::new();
    for c in outs.values().flatten() {
        groups.entry(c.group.clone()).or_default().push(c);
        objects.extend(render::render_route(c, settings));
    }
    for (g, mut members) in groups {
        members.sort_by(|a, b| {
            (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
        });
        objects.extend(render::render_group(&g, &members, settings)?);
    }
    objects.sort_by(|a, b| {
        (a.kind().as_str(), a.namespace(), a.name()).cmp(&(
            b.kind().as_str(),
            b.namespace(),
            b.name(),
        ))
    });
    Ok((objects.into_iter().map(Object::into_value).collect(), outs))
}
