//! The Secrets a route references: how the controller hands them in, and the API keys in them.

use std::collections::BTreeMap;

use nexus_config::auth;
use serde::Deserialize;

use super::problem::{Ctx, Problem, Reason};

/// API-key entries of a Secret (data key → value bytes), as the controller read them.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Looks up a Secret by namespace and name.
pub trait SecretLookup: Sync {
    fn get(&self, namespace: &str, name: &str) -> Option<SecretData>;
}

impl SecretLookup for BTreeMap<(String, String), SecretData> {
    fn get(&self, namespace: &str, name: &str) -> Option<SecretData> {
        BTreeMap::get(self, &(namespace.to_string(), name.to_string())).cloned()
    }
}

/// The value of one API-key entry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretEntry {
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// The API keys of Secret `name` in the route's namespace; a missing Secret or a bad entry is a
/// `ResolvedRefs` problem at `at`.
pub(super) fn api_keys(
    cx: &mut Ctx,
    secrets: &dyn SecretLookup,
    name: &str,
    at: &str,
) -> Vec<auth::ApiKey> {
    let ns = cx.ns;
    let Some(data) = secrets.get(ns, name) else {
        cx.problems.push(Problem {
            reason: Reason::SecretNotFound,
            path: format!("{at}.secretRef"),
            message: format!("Secret {ns}/{name} not found"),
        });
        return Vec::new();
    };
    let mut list = Vec::new();
    for (k, v) in &data {
        match api_key(k, v) {
            Some(key) => list.push(key),
            None => cx.problems.push(Problem {
                reason: Reason::InvalidSecret,
                path: format!("{at}.secretRef"),
                message: format!(
                    "Secret {ns}/{name} key {k:?}: keys must be the lower-case hex SHA-256 of an API key and values JSON {{\"clientId\": ..., \"scopes\": [...]}}"
                ),
            }),
        }
    }
    list
}

/// The value of `reference` (a key of a Secret in the route's namespace) as text, trimmed; a
/// missing Secret, key or non-UTF-8 value is a `ResolvedRefs` problem at `at` (naming the
/// Secret and key, never a value).
pub(super) fn secret_value(
    cx: &mut Ctx,
    secrets: &dyn SecretLookup,
    reference: &crate::crd::SecretKeyRef,
    at: &str,
) -> String {
    let ns = cx.ns;
    let (name, key) = (&reference.name, &reference.key);
    let value = secrets.get(ns, name).map(|data| data.get(key).cloned());
    let problem = match value {
        Some(Some(v)) => match String::from_utf8(v) {
            Ok(text) if !text.trim().is_empty() => return text.trim().to_string(),
            _ => (
                Reason::InvalidSecret,
                format!("Secret {ns}/{name} key {key:?} is not non-empty UTF-8 text"),
            ),
        },
        Some(None) => (
            Reason::InvalidSecret,
            format!("Secret {ns}/{name} has no key {key:?}"),
        ),
        None => (
            Reason::SecretNotFound,
            format!("Secret {ns}/{name} not found"),
        ),
    };
    cx.problems.push(Problem {
        reason: problem.0,
        path: at.to_string(),
        message: problem.1,
    });
    String::new()
}

/// One entry: the key is the lower-case hex SHA-256 of the API key, the value a [`SecretEntry`].
fn api_key(k: &str, v: &[u8]) -> Option<auth::ApiKey> {
    let ok_hash = k.len() == 64
        && k.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let entry: SecretEntry = serde_json::from_slice(v).ok()?;
    if !ok_hash || entry.client_id.is_empty() {
        return None;
    }
    Some(auth::ApiKey {
        sha256: k.to_string(),
        client_id: entry.client_id,
        scopes: entry.scopes,
    })
}
