//! The controller's writes to the API server: server-side apply, delete, prune.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::ResourceExt;

use super::Context;
use crate::objects::{Kind, Object};
use crate::render::{FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_ROUTE};

fn api(ctx: &Context, kind: Kind, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource())
}

/// Server-side applies `obj` (forcing: the controller owns every field it writes); returns
/// its new resourceVersion. The watches know it as the controller's own write by its
/// managedFields ([`super::triggers::written_by_others`]).
pub async fn apply(ctx: &Context, obj: &Object) -> Result<String, kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api(ctx, obj.kind(), obj.namespace())
        .patch(obj.name(), &params, &Patch::Apply(obj.as_value()))
        .await?;
    ctx.state.metrics.applies.fetch_add(1, Ordering::Relaxed);
    let version = applied.metadata.resource_version.unwrap_or_default();
    Ok(version)
}

pub async fn delete_if_exists(
    ctx: &Context,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Result<(), kube::Error> {
    match api(ctx, kind, ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes this route's VirtualService/DestinationRules that are not in `keep`.
pub async fn prune_route_objects(
    ctx: &Context,
    ns: &str,
    route: &str,
    keep: &BTreeSet<(Kind, String)>,
) -> Result<(), kube::Error> {
    let selector = format!("{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_ROUTE}={route}");
    for kind in [Kind::VirtualService, Kind::DestinationRule] {
        let lp = ListParams::default().match_any().labels(&selector);
        let list = match api(ctx, kind, ns).list_metadata(&lp).await {
            Ok(l) => l,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for o in list {
            let name = o.name_any();
            if !keep.contains(&(kind, name.clone())) {
                delete_if_exists(ctx, kind, ns, &name).await?;
            }
        }
    }
    Ok(())
}

/// The resourceVersions of these objects now ("" for a missing one).
pub async fn live_versions(ctx: &Context, objects: &[Object]) -> Result<Vec<String>, kube::Error> {
    let mut out = Vec::new();
    for o in objects {
        let rv = match api(ctx, o.kind(), o.namespace())
            .get_metadata_opt(o.name())
            .await?
        {
            Some(m) => m.metadata.resource_version.unwrap_or_default(),
            None => String::new(),
        };
        out.push(rv);
    }
    Ok(out)
}
