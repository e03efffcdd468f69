//! Categories: the seed ones (`router::SEED_CATEGORIES`), overridden or extended by
//! `spec.categories`; a rule inherits its category's upstream, timeout and retries.

use std::collections::BTreeMap;

use nexus_config::router::{self, RetryPolicy};

use crate::crd::{CategorySpec, Protocol};

use super::problem::Ctx;
use super::resilience;
use super::upstream::{self, ResolvedUpstream};

/// Port of the seed categories' upstream Services.
pub const SEED_PORT: u16 = 8080;

/// A category after the route's overrides: what its rules inherit.
pub(super) struct Category {
    /// `None` only for a new category that gave none (reported).
    pub(super) upstream: Option<ResolvedUpstream>,
    pub(super) timeout_ms: u64,
    /// `None`: the route's default retries.
    pub(super) retry: Option<(RetryPolicy, Option<u64>)>,
}

/// Timeout of a category the route adds without one.
const NEW_CATEGORY_TIMEOUT_MS: u64 = 30_000;

/// The seed categories with `specs` applied: a field given overrides, a new name adds.
pub(super) fn compile(
    cx: &mut Ctx,
    specs: &BTreeMap<String, CategorySpec>,
) -> BTreeMap<String, Category> {
    let mut categories = seeds(cx.ns);
    for (name, c) in specs {
        let at = format!("$.spec.categories.{name}");
        if !is_category_name(name) {
            cx.bad(&at, "category names are [a-z0-9_-]+");
        }
        let upstream = c
            .upstream
            .as_ref()
            .map(|u| upstream::resolve(cx, u, &format!("{at}.upstream")));
        let timeout = cx.duration(&c.timeout, &format!("{at}.timeout"));
        let retry = c
            .retries
            .as_ref()
            .map(|r| resilience::retries(cx, r, &format!("{at}.retries")));
        let entry = categories.entry(name.clone()).or_insert(Category {
            upstream: None,
            timeout_ms: NEW_CATEGORY_TIMEOUT_MS,
            retry: None,
        });
        if let Some(u) = upstream {
            entry.upstream = Some(u);
        }
        if let Some(t) = timeout {
            entry.timeout_ms = t;
        }
        if retry.is_some() {
            entry.retry = retry;
        }
        if entry.upstream.is_none() {
            cx.bad(format!("{at}.upstream"), "a new category needs an upstream");
        }
    }
    categories
}

/// Each seed category sends to its seed Service on [`SEED_PORT`] in the route's namespace.
fn seeds(ns: &str) -> BTreeMap<String, Category> {
    router::SEED_CATEGORIES
        .iter()
        .map(|(c, up, t)| {
            (
                (*c).to_string(),
                Category {
                    upstream: Some(ResolvedUpstream {
                        token: (*up).to_string(),
                        host: format!("{up}.{ns}.svc.cluster.local"),
                        port: SEED_PORT,
                        protocol: Protocol::HTTP,
                    }),
                    timeout_ms: *t,
                    retry: None,
                },
            )
        })
        .collect()
}

fn is_category_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `spec.defaultCategory`, resolved: its name, upstream and timeout.
pub(super) fn default_upstream(
    cx: &mut Ctx,
    name: Option<&String>,
    categories: &BTreeMap<String, Category>,
) -> Option<(String, ResolvedUpstream, u64)> {
    let name = name?;
    match categories.get(name) {
        Some(Category {
            upstream: Some(u),
            timeout_ms,
            ..
        }) => Some((name.clone(), u.clone(), *timeout_ms)),
        _ => {
            cx.bad(
                "$.spec.defaultCategory",
                format!("unknown category {name:?}"),
            );
            None
        }
    }
}
