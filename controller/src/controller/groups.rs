//! Applying a group's shared objects (EnvoyFilter, rate-limit ConfigMap) once for many
//! concurrent reconciles.
//!
//! Every member's reconcile wants the group re-rendered. A reconcile takes a [`Ticket`]
//! before it snapshots the routes. Whoever then holds the group's lock, if the last apply did
//! not cover its ticket, notes how many tickets exist, plans the group again from the routes
//! known now (a snapshot taken after every one of those tickets) and applies it: one apply
//! covers every reconcile that asked while the previous apply ran, and those take its result
//! instead of applying again. (Applying the plan made at ticket time instead would cover only
//! the tickets taken before that older snapshot: about one apply per route of a big group
//! arriving in a burst.) Applied plans only move forward: every apply's snapshot is newer than
//! the one before.

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
        Ok(Ticket { slot, mine })
    }
}

/// Applies the group as `plan` makes it now, unless an apply since `ticket` covered it.
pub async fn apply_group(
    ctx: &Context,
    ticket: Ticket,
    plan: impl FnOnce() -> GroupPlan,
) -> Result<(), Error> {
    let mut done = ticket.slot.done.lock().await;
    if done.covered >= ticket.mine {
        return done.result.clone().map_err(Error::Other);
    }
    // Every ticket counted here was taken before the snapshot `plan` takes.
    let covers = ticket.slot.requested.load(Ordering::SeqCst);
    let group = plan();
    let result = apply_if_changed(ctx, &group, &mut done.last_apply).await;
    if result.is_err() {
        done.last_apply = None;
    }
    done.covered = done.covered.max(covers);
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
