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
        /// A bearer token failed (else an API key): picks the `www-authenticate` challenge.
        bearer: bool,
    },
    Forbidden {
        error: &'static str,
        detail: String,
        bearer: bool,
    },
    Unavailable(String),
    Waiting,
}

impl Fail {
    fn rank(&self) -> u8 {
        match self {
            Fail::Missing => 1,
            Fail::Invalid { .. } => 2,
            Fail::Forbidden { .. } => 3,
            Fail::Unavailable(_) => 4,
            Fail::Waiting => 5,
        }
    }
    pub(crate) fn invalid_token(detail: impl Into<String>) -> Self {
        Fail::Invalid {
            error: "invalid_token",
            detail: detail.into(),
            bearer: true,
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
                bearer,
            } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                let r = LocalResponse::json_error(401, error, &detail);
                if bearer {
                    r.with_header(
                        "www-authenticate",
                        &bearer_challenge("invalid_token", &detail),
                    )
                } else {
                    r.with_header(
                        "www-authenticate",
                        &format!("ApiKey header=\"{}\"", self.api_key_header),
                    )
                }
            }
            Fail::Forbidden {
                error,
                detail,
                bearer,
            } => {
                env.metrics
                    .increment(&format!("nexus_auth.denied.{error}"), 1);
                let r = LocalResponse::json_error(403, error, &detail);
                if bearer {
                    r.with_header(
                        "www-authenticate",
                        &bearer_challenge("insufficient_scope", &detail),
                    )
                } else {
                    r
                }
            }
            Fail::Unavailable(detail) => {
                env.metrics
                    .increment("nexus_auth.denied.jwks_unavailable", 1);
                LocalResponse::json_error(503, "jwks_unavailable", &detail)
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
