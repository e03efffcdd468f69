//! What is wrong with a route, and the collector every compile step reports into.

use nexus_config::ConfigError;

use super::syntax::parse_duration_ms;

/// Why a route is not accepted, or its references are not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidSpec,
    Conflict,
    SecretNotFound,
    InvalidSecret,
    /// The gateway's namespace does not let routes of this namespace attach to it.
    NotAllowedByGateway,
    /// The gateway's namespace is outside the controller's `--watch-namespaces`.
    NamespaceNotWatched,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Conflict => "Conflict",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
            Reason::NotAllowedByGateway => "NotAllowedByGateway",
            Reason::NamespaceNotWatched => "NamespaceNotWatched",
        }
    }
    /// `Accepted` problems vs `ResolvedRefs` problems.
    pub fn is_ref(self) -> bool {
        matches!(self, Reason::SecretNotFound | Reason::InvalidSecret)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The compile steps' shared state: every problem found so far, in the order found, and the
/// route's namespace, in which Services named without one are resolved.
pub(super) struct Ctx<'a> {
    pub(super) problems: Vec<Problem>,
    pub(super) ns: &'a str,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(ns: &'a str) -> Self {
        Ctx {
            problems: Vec::new(),
            ns,
        }
    }

    /// Reports an `InvalidSpec` problem at a JSON path of the NexusRoute.
    pub(super) fn bad(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            reason: Reason::InvalidSpec,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Reports the errors of a filter config's own validation, with their paths in CRD spelling.
    pub(super) fn take_config_errors(&mut self, errors: Vec<ConfigError>) {
        for e in errors {
            self.bad(camel_path(&e.path), e.message);
        }
    }

    /// A duration field in milliseconds; `None` if absent or (reported) invalid.
    pub(super) fn duration(&mut self, v: &Option<String>, path: &str) -> Option<u64> {
        let s = v.as_ref()?;
        let ms = parse_duration_ms(s);
        if ms.is_none() {
            self.bad(
                path,
                format!("{s:?} is not a duration (like 500ms, 30s, 1m; at most 24h)"),
            );
        }
        ms
    }
}

/// `rules[0].match.grpc_service` (nexus-config naming) → `rules[0].match.grpcService`.
fn camel_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut upper = false;
    for c in p.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}
