//! What Nexus accepts on `service.commands`: the command names (routing keys), their data,
//! parsing with a reason for every refusal, and the [`Handler`] trait that carries them out.
//!
//! A command is an [`Envelope`] whose `type` is the command name and whose routing key on the
//! direct exchange is that same name. Fields are checked strictly (unknown fields refused), so
//! a typo is dead-lettered with its reason instead of silently doing less than asked.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::event::CacheSelection;

pub const CACHE_INVALIDATE: &str = "cache.invalidate";
pub const CACHE_FLUSH: &str = "cache.flush";
pub const SESSION_REVOKE: &str = "session.revoke";
pub const RATELIMIT_RESET: &str = "ratelimit.reset";
pub const ROUTE_RECONCILE: &str = "route.reconcile";

/// Every command name; the deployment's queue is bound to each.
pub const NAMES: [&str; 5] = [
    CACHE_INVALIDATE,
    CACHE_FLUSH,
    SESSION_REVOKE,
    RATELIMIT_RESET,
    ROUTE_RECONCILE,
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlushArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeArgs {
    /// The session or token id (`jti`).
    pub session: String,
}

/// Whose counters to reset: a client, a rule (route), or one client on one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Which routes to reconcile now; none named: all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A parsed, checked command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CacheInvalidate(CacheSelection),
    CacheFlush(FlushArgs),
    SessionRevoke(RevokeArgs),
    RatelimitReset(ResetArgs),
    RouteReconcile(ReconcileArgs),
}

/// The data of any command, for the JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandData {
    CacheInvalidate(CacheSelection),
    CacheFlush(FlushArgs),
    SessionRevoke(RevokeArgs),
    RatelimitReset(ResetArgs),
    RouteReconcile(ReconcileArgs),
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CacheInvalidate(_) => CACHE_INVALIDATE,
            Self::CacheFlush(_) => CACHE_FLUSH,
            Self::SessionRevoke(_) => SESSION_REVOKE,
            Self::RatelimitReset(_) => RATELIMIT_RESET,
            Self::RouteReconcile(_) => ROUTE_RECONCILE,
        }
    }

    /// The command's data, as an envelope carries it.
    pub fn data(&self) -> serde_json::Value {
        let v = match self {
            Self::CacheInvalidate(a) => serde_json::to_value(a),
            Self::CacheFlush(a) => serde_json::to_value(a),
            Self::SessionRevoke(a) => serde_json::to_value(a),
            Self::RatelimitReset(a) => serde_json::to_value(a),
            Self::RouteReconcile(a) => serde_json::to_value(a),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// `(routing key, envelope)`: what a sender publishes on `service.commands`.
    pub fn into_envelope(self, source: &str) -> (String, Envelope) {
        (
            self.name().to_string(),
            Envelope::new(self.name(), source, self.data()),
        )
    }
}

/// Parses a delivery's body, refusing with the reason: bad JSON, unknown name, a `type` that
/// is not the routing key, unknown or missing fields, empty selections.
pub fn parse(routing_key: &str, body: &[u8]) -> Result<(Envelope, Command), String> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("not a command envelope: {e}"))?;
    if !NAMES.contains(&env.kind.as_str()) {
        return Err(format!(
            "unknown command {:?} (known: {})",
            env.kind,
            NAMES.join(", ")
        ));
    }
    if env.kind != routing_key {
        return Err(format!(
            "type {:?} does not match routing key {routing_key:?}",
            env.kind
        ));
    }
    let cmd = typed(&env.kind, env.data.clone())?;
    check(&cmd)?;
    Ok((env, cmd))
}

fn typed(name: &str, data: serde_json::Value) -> Result<Command, String> {
    fn de<T: serde::de::DeserializeOwned>(name: &str, v: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("{name}: data: {e}"))
    }
    Ok(match name {
        CACHE_INVALIDATE => Command::CacheInvalidate(de(name, data)?),
        CACHE_FLUSH => Command::CacheFlush(de(name, data)?),
        SESSION_REVOKE => Command::SessionRevoke(de(name, data)?),
        RATELIMIT_RESET => Command::RatelimitReset(de(name, data)?),
        _ => Command::RouteReconcile(de(name, data)?),
    })
}

fn check(cmd: &Command) -> Result<(), String> {
    let empty = |v: &[String]| v.iter().any(String::is_empty);
    match cmd {
        Command::CacheInvalidate(s) => {
            if s.keys.is_empty() && s.prefixes.is_empty() && s.tags.is_empty() {
                return Err("cache.invalidate: data needs keys, prefixes or tags".into());
            }
            if empty(&s.keys) || empty(&s.prefixes) || empty(&s.tags) {
                return Err("cache.invalidate: an empty key, prefix or tag would select everything; use cache.flush".into());
            }
        }
        Command::SessionRevoke(r) if r.session.is_empty() => {
            return Err("session.revoke: data.session is empty".into());
        }
        Command::RatelimitReset(r) if r.client.is_none() && r.rule.is_none() => {
            return Err("ratelimit.reset: data needs client, rule or both".into());
        }
        Command::RouteReconcile(r) if r.name.is_some() && r.namespace.is_none() => {
            return Err("route.reconcile: data.name needs data.namespace".into());
        }
        _ => {}
    }
    Ok(())
}

/// Why a handler did not carry a command out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The command cannot succeed here (e.g. no cache service in this deployment): it goes to
    /// the dead-letter queue with this reason.
    #[error("{0}")]
    Refused(String),
    /// It may succeed later (e.g. Redis is down): the message is requeued.
    #[error("{0}")]
    Unavailable(String),
}

/// Carries out commands. The consumer acknowledges a message only after `handle` returned
/// `Ok` (or the command was dead-lettered); `Ok`'s value is the RPC reply's `result`.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, command: &Command) -> Result<serde_json::Value, HandlerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&Envelope::new(kind, "test", data)).unwrap_or_default()
    }

    #[test]
    fn parses_each_command_and_refuses_with_a_reason() {
        let ok = parse(
            "cache.invalidate",
            &body("cache.invalidate", serde_json::json!({"tags": ["t"]})),
        );
        assert!(matches!(ok, Ok((_, Command::CacheInvalidate(_)))), "{ok:?}");
        let ok = parse(
            "ratelimit.reset",
            &body("ratelimit.reset", serde_json::json!({"client": "a"})),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let cases = [
            (
                "cache.invalidate",
                b"{nope".to_vec(),
                "not a command envelope",
            ),
            ("x.y", body("x.y", serde_json::json!({})), "unknown command"),
            (
                "cache.flush",
                body("cache.invalidate", serde_json::json!({"tags": ["t"]})),
                "does not match",
            ),
            (
                "cache.invalidate",
                body("cache.invalidate", serde_json::json!({"tagz": ["t"]})),
                "unknown field `tagz`",
            ),
            (
                "cache.invalidate",
                body("cache.invalidate", serde_json::json!({})),
                "needs keys",
            ),
            (
                "cache.invalidate",
                body("cache.invalidate", serde_json::json!({"prefixes": [""]})),
                "empty key",
            ),
            (
                "session.revoke",
                body("session.revoke", serde_json::json!({})),
                "missing field `session`",
            ),
            (
                "ratelimit.reset",
                body("ratelimit.reset", serde_json::json!({})),
                "needs client",
            ),
        ];
        for (key, b, reason) in cases {
            let err = parse(key, &b).err().unwrap_or_default();
            assert!(err.contains(reason), "{key}: {err:?} lacks {reason:?}");
        }
    }
}
