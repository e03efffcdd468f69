//! Why a requirement was not met, and the response that says so.

use nexus_filter_core::LocalResponse;

use crate::{Auth, Env, Outcome};

/// Why a requirement was not met, ranked: the most informative failure of an `any_of` wins.
#[derive(Debug)]
pub(crate) enum Fail {
    Missing,
    Invalid {
        error: &'static str,
        detail: String,
        /// Which credential failed: picks the `www-authenticate` challenge.
        challenge: Challenge,
    },
    Forbidden {
        error: &'static str,
        detail: String,
        challenge: Challenge,
    },
    /// 503: what would decide cannot be had (`jwks_unavailable`, `sessions_unavailable`).
    Unavailable {
        error: &'static str,
        detail: String,
    },
    Waiting,
}

/// The kind of credential a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer,
    ApiKey,
    Session,
}

impl Fail {
    fn rank(&self) -> u8 {
        match self {
            Fail::Missing => 1,
            Fail::Invalid { .. } => 2,
            Fail::Forbidden { .. } => 3,
            Fail::Unavailable { .. } => 4,
            Fail::Waiting => 5,
        }
    }
    pub(crate) fn invalid_token(detail: impl Into<String>) -> Self {
        Fail::Invalid {
            error: "invalid_token",
            detail: detail.into(),
            challenge: Challenge::Bearer,
        }
    }

    pub(crate) fn jwks_unavailable(detail: impl Into<String>) -> Self {
        Fail::Unavailable {
            error: "jwks_unavailable",
            detail: detail.into(),
        }
    }

    /// A failure a browser is better served by signing in again.
    pub(crate) fn wants_sign_in(&self) -> bool {
        match self {
            Fail::Missing => true,
            Fail::Invalid { challenge, .. } => *challenge == Challenge::Session,
            _ => false,
        }
    }
}

/// The higher-ranked of the worst so far and `b` (the earlier one on a tie).
pub(crate) fn worse(a: Option<Fail>, b: Fail) -> Fail {
    match a {
        Some(a) if a.rank() >= b.rank() => a,
        _ => b,
    }
}

impl Auth {
    /// The response for a failed `rule` (or [`Outcome::Pause`] while keys are on the way),
    /// counted in `nexus_auth.denied.*`.
    pub(crate) fn deny(&self, fail: Fail, rule: &str, env: &Env) -> Outcome {
        let resp = match fail {
            Fail::Waiting => return Outcome::Pause,
            Fail::Missing => {
                env.metrics
                    .increment("nexus_auth.denied.missing_credentials", 1);
                LocalResponse::json_error(
                    401,
                    "missing_credentials",
                    &format!("rule {rule} requires credentials and the request carries none"),
                )
                .with_header("www-authenticate", "Bearer realm=\"nexus\"")
            }
            Fail::Invalid {
                error,
                detail,
                challenge,
            } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                let r = LocalResponse::json_error(401, error, &detail);
                match challenge {
                    Challenge::Bearer => r.with_header(
                        "www-authenticate",
                        &bearer_challenge("invalid_token", &detail),
                    ),
                    Challenge::ApiKey => r.with_header(
                        "www-authenticate",
                        &format!("ApiKey header=\"{}\"", self.api_key_header),
                    ),
                    Challenge::Session => r,
                }
            }
            Fail::Forbidden {
                error,
                detail,
                challenge,
            } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                let r = LocalResponse::json_error(403, error, &detail);
                if challenge == Challenge::Bearer {
                    r.with_header(
                        "www-authenticate",
                        &bearer_challenge("insufficient_scope", &detail),
                    )
                } else {
                    r
                }
            }
            Fail::Unavailable { error, detail } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                LocalResponse::json_error(503, error, &detail)
            }
        };
        Outcome::Respond(resp)
    }
}

/// RFC 6750 challenge; quotes and backslashes in the detail would break the quoted-string.
fn bearer_challenge(error: &str, detail: &str) -> String {
    format!(
        "Bearer error=\"{error}\", error_description=\"{}\"",
        detail.replace(['"', '\\'], "'")
    )
}
