//! Where a filter sends its audit records: the audit service (hosted by the `nexus` binary),
//! reached through an Envoy cluster. Records are batched in the filter, in a bounded queue;
//! what happens while the service does not answer is configured here, and counted.
//!
//! ```yaml
//! audit: {cluster: nexus-audit, max_batch: 100, flush_ms: 1000, capacity: 10000,
//!         on_unavailable: buffer}
//! ```
//!
//! `on_unavailable` says what a proxy does while the service does not take records:
//! `buffer` (keep them, up to `capacity`), `drop` (count them lost), or `refuse` (keep them
//! and answer 503 to the requests whose decisions must be recorded: fail closed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Validate};

/// The audit service's path for batches (one JSON object per line).
pub const RECORDS_PATH: &str = "/audit/v1/records";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSink {
    /// Envoy cluster of the audit service.
    pub cluster: String,
    /// `:authority` of the batch requests.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Per batch request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Records per batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// How often waiting records are sent (a full batch waiting goes at once when the
    /// service took the one before).
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u32,
    /// Records held per worker (waiting plus in flight); beyond it new records are dropped
    /// and counted (`nexus_audit.dropped`).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// What a batch the service did not take (error, timeout, non-2xx) becomes; either way the
/// failure is counted (`nexus_audit.send_failures`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Kept, ahead of newer records, and sent again at the next tick (while `capacity` holds).
    #[default]
    Buffer,
    /// Dropped and counted (`nexus_audit.dropped`): no record waits on a service that is down.
    Drop,
    /// Fail closed: kept as with `buffer`, and while records cannot be delivered (from a
    /// batch the service did not take until it takes one, or while `capacity` is reached)
    /// each request whose decision must be recorded is answered 503 `audit_unavailable`
    /// before it reaches the upstream, and counted (`nexus_audit.refused`). This is Envoy's
    /// `ext_authz` with `failure_mode_allow: false`, or auditd's `disk_full_action: halt`:
    /// where an unrecorded decision is worse than a refused request, a dependency's outage
    /// stops the traffic it must see rather than let it through unseen.
    Refuse,
}

fn default_authority() -> String {
    "nexus-audit".to_string()
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_max_batch() -> u32 {
    100
}
fn default_flush_ms() -> u32 {
    1000
}
fn default_capacity() -> u32 {
    10_000
}

impl AuditSink {
    /// The sink with defaults for everything but the cluster.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            authority: default_authority(),
            timeout_ms: default_timeout_ms(),
            max_batch: default_max_batch(),
            flush_ms: default_flush_ms(),
            capacity: default_capacity(),
            on_unavailable: OnUnavailable::default(),
        }
    }
}

impl AuditSink {
    /// For a filter that records allows but cannot fail closed on them (nexus-auth, for
    /// now): `refuse` there would be a promise not kept, so it is a configuration error.
    /// (nexus-ratelimit records only denials, which refuse the request anyway.)
    pub fn refuse_unsupported(&self, path: &str, filter: &str, errors: &mut Vec<ConfigError>) {
        if self.on_unavailable == OnUnavailable::Refuse {
            errors.push(ConfigError::new(
                format!("{path}.on_unavailable"),
                format!("{filter} cannot refuse requests while the audit service is down (yet): use buffer or drop"),
            ));
        }
    }
}

impl Validate for AuditSink {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.cluster.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.cluster"),
                "must not be empty",
            ));
        }
        for (name, v) in [("max_batch", self.max_batch), ("flush_ms", self.flush_ms)] {
            if v == 0 {
                errors.push(ConfigError::new(
                    format!("{path}.{name}"),
                    "must be at least 1",
                ));
            }
        }
        if self.capacity < self.max_batch {
            errors.push(ConfigError::new(
                format!("{path}.capacity"),
                format!("{} is below max_batch ({})", self.capacity, self.max_batch),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::AuthConfig;
    use crate::guard::GuardConfig;
    use crate::parse;

    #[test]
    fn refuse_is_accepted_where_a_filter_can_fail_closed_and_refused_elsewhere() {
        let audit = r#""audit": {"cluster": "nexus-audit", "on_unavailable": "refuse"}"#;
        let guard = format!(r#"{{{audit}}}"#);
        let g: GuardConfig = parse(guard.as_bytes()).unwrap();
        assert_eq!(
            g.audit.unwrap().on_unavailable,
            super::OnUnavailable::Refuse
        );
        let auth = format!(r#"{{"rules": [], {audit}}}"#);
        let err = parse::<AuthConfig>(auth.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("audit.on_unavailable"), "{err}");
        assert!(err.contains("buffer or drop"), "{err}");
    }
}
