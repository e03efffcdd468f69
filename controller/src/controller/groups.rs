//! Applying a group's shared objects (EnvoyFilter, rate-limit ConfigMap) once for many
//! concurrent reconciles.
//!
//! Every member's reconcile wants the group re-rendered. A reconcile takes a [`Ticket`]
//! before it snapshots the routes; whoever then holds the group's lock applies its plan,
//! which covers every ticket taken before its snapshot, and the reconciles it covers take
//! its result instead of applying again. Applied plans only move forward: a holder applies
//! only if its ticket is newer than what the last apply covered, so its snapshot is newer too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::apply::{apply, delete_if_exists, live_versions};
use super::{Context, Error};
use crate::plan::GroupPlan;

/// Batching state of every group this process applied, by `namespace/name`.
#[derive(Default)]
pub struct Groups {
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    requested: AtomicU64,
    done: tokio::sync::Mutex<Done>,
}

/// What the last apply of a group did.
struct Done {
    /// The highest ticket it covered.
    covered: u64,
    result: Result<(), String>,
    /// What it applied, if it succeeded.
    last_apply: Option<LastApply>,
}

impl Default for Done {
    fn default() -> Self {
        Done {
            covered: 0,
            result: Ok(()),
            last_apply: None,
        }
    }
}

/// The hash of the objects applied, with the resourceVersions the apply returned: unchanged
/// objects whose versions still match need no apply.
struct LastApply {
    hash: Vec<u8>,
    versions: Vec<String>,
}

/// A reconcile's place in its group's queue; take it before snapshotting the routes.
pub struct Ticket {
    slot: Arc<Slot>,
    mine: u64,
    covers: u64,
}

impl Groups {
    pub fn ticket(&self, namespace: &str, name: &str) -> Result<Ticket, Error> {
        let slot = self
            .slots
            .lock()
            .map_err(|_| Error::Other("group table poisoned".into()))?
            .entry(format!("{namespace}/{name}"))
            .or_default()
            .clone();
        let mine = slot.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let covers = slot.requested.load(Ordering::SeqCst);
        Ok(Ticket { slot, mine, covers })
    }
}

/// Applies `group` (planned after `ticket` was taken) unless a newer apply covered it.
pub async fn apply_group(ctx: &Context, ticket: Ticket, group: &GroupPlan) -> Result<(), Error> {
    let mut done = ticket.slot.done.lock().await;
    if done.covered >= ticket.mine {
        return done.result.clone().map_err(Error::Other);
    }
    let result = apply_if_changed(ctx, group, &mut done.last_apply).await;
    if result.is_err() {
        done.last_apply = None;
    }
    done.covered = done.covered.max(ticket.covers);
    done.result = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    result
}

/// Applies a group outside the batching (the group a route left: rare, and nobody else
/// waits for it).
pub async fn apply_now(ctx: &Context, group: &GroupPlan) -> Result<(), Error> {
    apply_if_changed(ctx, group, &mut None).await
}

/// Renders and applies the group's objects, or deletes them when it has no member; skips
/// the (for a big group, expensive) no-op apply when the objects are what `last` applied
/// and nobody changed them since.
async fn apply_if_changed(
    ctx: &Context,
    group: &GroupPlan,
    last: &mut Option<LastApply>,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let objects = group
        .render(&ctx.settings)
        .map_err(|e| Error::Other(e.to_string()))?;
    let micros = started.elapsed().as_micros() as u64;
    ctx.state
        .metrics
        .render_micros
        .fetch_add(micros, Ordering::Relaxed);
    if objects.is_empty() {
        for (kind, ns, name) in group.object_names(&ctx.settings) {
            delete_if_exists(ctx, kind, &ns, &name).await?;
        }
        *last = None;
        return Ok(());
    }
    let hash = Sha256::digest(serde_json::to_vec(&objects).unwrap_or_default()).to_vec();
    if let Some(l) = last.as_ref().filter(|l| l.hash == hash) {
        if live_versions(ctx, &objects).await? == l.versions {
            return Ok(());
        }
    }
    let mut versions = Vec::new();
    for o in &objects {
        versions.push(apply(ctx, o).await?);
    }
    *last = Some(LastApply { hash, versions });
    Ok(())
}
