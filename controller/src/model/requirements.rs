//! What a request must present for a rule: allow, a JWT, an API key, a session, an opaque
//! OAuth2 token, or any of several.

use nexus_config::auth;

use crate::crd::{AuthRequirement, JwtRequirementSpec, OAuth2RequirementSpec, SimpleRequirement};

use super::auth::{introspection_key, provider_key, RouteAuth};
use super::problem::Ctx;

impl RouteAuth {
    /// The requirement of a rule: its own `auth` (checked at `{at}.auth`), else the default.
    pub(super) fn for_rule(
        &self,
        cx: &mut Ctx,
        r: Option<&AuthRequirement>,
        at: &str,
    ) -> auth::Requirement {
        match r {
            Some(r) => self.requirement(cx, r, &format!("{at}.auth")),
            None => self.default.clone(),
        }
    }

    /// Exactly one of allow, jwt, apiKey, anyOf. An invalid requirement (reported) compiles to
    /// something; the route is not accepted anyway.
    pub(super) fn requirement(
        &self,
        cx: &mut Ctx,
        r: &AuthRequirement,
        at: &str,
    ) -> auth::Requirement {
        let given = [
            r.allow.is_some(),
            r.jwt.is_some(),
            r.api_key.is_some(),
            r.session.is_some(),
            r.oauth2.is_some(),
            !r.any_of.is_empty(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            cx.bad(
                at,
                "give exactly one of allow, jwt, apiKey, session, oauth2, anyOf",
            );
            return auth::Requirement::AnyOf(Vec::new());
        }
        if let Some(allow) = r.allow {
            if !allow {
                cx.bad(
                    format!("{at}.allow"),
                    "allow: false is not a requirement; omit it",
                );
            }
            return auth::Requirement::Allow;
        }
        if !r.any_of.is_empty() {
            let mut list = Vec::new();
            for (k, s) in r.any_of.iter().enumerate() {
                let here = format!("{at}.anyOf[{k}]");
                match self.simple(cx, s, &here) {
                    Some(req) => list.push(req),
                    None => cx.bad(here, "give exactly one of jwt, apiKey, session, oauth2"),
                }
            }
            return auth::Requirement::AnyOf(list);
        }
        let single = SimpleRequirement {
            jwt: r.jwt.clone(),
            api_key: r.api_key.clone(),
            session: r.session.clone(),
            oauth2: r.oauth2.clone(),
        };
        self.simple(cx, &single, at)
            .unwrap_or(auth::Requirement::Allow)
    }

    /// A JWT (from the named providers, or any of the route's), an API key, a session or an
    /// opaque token; `None` unless exactly one is given.
    fn simple(&self, cx: &mut Ctx, r: &SimpleRequirement, at: &str) -> Option<auth::Requirement> {
        match (&r.jwt, &r.api_key, &r.session, &r.oauth2) {
            (Some(j), None, None, None) => Some(self.jwt(cx, j, at)),
            (None, None, None, Some(o)) => Some(self.oauth2(cx, o, at)),
            (None, None, Some(s), None) => {
                if !self.has_sessions {
                    cx.bad(
                        format!("{at}.session"),
                        "no spec.auth.sessions to check sessions against",
                    );
                }
                Some(auth::Requirement::Session(auth::SessionRequirement {
                    scopes: s.scopes.clone(),
                }))
            }
            (None, Some(k), None, None) => {
                if !self.has_keys {
                    cx.bad(
                        format!("{at}.apiKey"),
                        "no spec.auth.apiKeys to check keys against",
                    );
                }
                Some(auth::Requirement::ApiKey(auth::ApiKeyRequirement {
                    scopes: k.scopes.clone(),
                }))
            }
            _ => None,
        }
    }

    fn oauth2(&self, cx: &mut Ctx, o: &OAuth2RequirementSpec, at: &str) -> auth::Requirement {
        if self.opaque.is_empty() {
            cx.bad(
                format!("{at}.oauth2"),
                "no introspection or github providers in spec.auth.providers",
            );
        }
        for (k, p) in o.providers.iter().enumerate() {
            if !self.opaque.contains(p) {
                let known: Vec<&str> = self.opaque.iter().map(String::as_str).collect();
                cx.bad(
                    format!("{at}.oauth2.providers[{k}]"),
                    format!(
                        "unknown opaque-token provider {p:?} (known: {})",
                        known.join(", ")
                    ),
                );
            }
        }
        // None named: any of the route's (the filter would accept other routes').
        let names: Vec<&String> = if o.providers.is_empty() {
            self.opaque.iter().collect()
        } else {
            o.providers.iter().collect()
        };
        auth::Requirement::Oauth2(auth::OAuth2Requirement {
            providers: names
                .iter()
                .map(|p| introspection_key(&self.namespace, &self.route, p))
                .collect(),
            scopes: o.scopes.clone(),
        })
    }

    fn jwt(&self, cx: &mut Ctx, j: &JwtRequirementSpec, at: &str) -> auth::Requirement {
        if self.providers.is_empty() {
            cx.bad(
                format!("{at}.jwt"),
                "no JWT providers in spec.auth.providers",
            );
        }
        for (k, p) in j.providers.iter().enumerate() {
            if !self.providers.contains(p) {
                let known: Vec<&str> = self.providers.iter().map(String::as_str).collect();
                cx.bad(
                    format!("{at}.jwt.providers[{k}]"),
                    format!("unknown provider {p:?} (known: {})", known.join(", ")),
                );
            }
        }
        // None named: any of the route's providers (the filter would accept other routes').
        let names: Vec<&String> = if j.providers.is_empty() {
            self.providers.iter().collect()
        } else {
            j.providers.iter().collect()
        };
        auth::Requirement::Jwt(auth::JwtRequirement {
            providers: names.iter().map(|p| provider_key(&self.route, p)).collect(),
            required_claims: j.required_claims.clone(),
            scopes: j.scopes.clone(),
        })
    }
}
