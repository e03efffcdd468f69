//! Opaque OAuth2 access tokens: the `oauth2` requirement. The token is checked by the sessions
//! service (`GET /sessions/v1/introspect/<provider>`, see `nexus_config::session`), which holds
//! the provider's endpoint and client secret and asks it (RFC 7662 introspection, or GitHub's
//! token check); the answer is kept in the proxy's bounded table (see `lookup.rs`, slot prefix
//! `<prefix>oauth2.<provider>.`) until the token's `exp` or `cache_ttl_s`, whichever comes
//! first, and an inactive token for `negative_cache_ttl_s`. The table keeps the token's
//! SHA-256, never the token.
//!
//! An inactive token is 401 `invalid_token`; a token the service cannot confirm (it is down,
//! the provider timed out or answered 5xx or garbage) is 503 `introspection_unavailable`.

use nexus_config::auth::{Introspection, TokenSource};
use nexus_config::session::{SessionIdentity, INTROSPECT_PATH_PREFIX, TOKEN_HEADER};
use ring::digest;

use crate::cache::Entry;
use crate::check::{Check, Granted};
use crate::deny::{worse, Challenge, Fail};
use crate::lookup::{Lookups, Settings, LIVE, UNKNOWN};
use crate::{token, Auth, Env, Identity};

/// Longer tokens are refused without a call (GitHub's are 40 to 255 characters).
const MAX_TOKEN_BYTES: usize = 4096;

/// One provider of opaque tokens and this worker's lookups of its tokens.
pub(crate) struct Introspected {
    name: String,
    /// `oauth2:<name>`, the identity's method, made once.
    method: String,
    /// Where the service answers for this provider.
    path: String,
    sources: Vec<TokenSource>,
    pub(crate) headers: Vec<String>,
    forward: bool,
    lookups: Lookups,
}

/// The providers of an `introspection` section, in name order (rules refer to them by index).
pub(crate) fn compile(i: &Introspection, prefix: &str) -> Vec<Introspected> {
    i.providers
        .iter()
        .map(|(name, p)| Introspected {
            name: name.clone(),
            method: format!("oauth2:{name}"),
            path: format!("{INTROSPECT_PATH_PREFIX}{name}"),
            sources: p.token_sources.clone(),
            headers: p.headers.clone(),
            forward: p.forward,
            lookups: Lookups::new(Settings {
                cluster: i.cluster.clone(),
                authority: i.authority.clone(),
                timeout_ms: i.timeout_ms,
                entries: i.cache_entries,
                ttl_s: p.cache_ttl_s,
                negative_ttl_s: p.negative_cache_ttl_s,
                prefix: format!("{prefix}oauth2.{name}."),
                metric: "nexus_auth.oauth2",
                label: "token introspection",
                relay_detail: true,
            }),
        })
        .collect()
}

impl Auth {
    /// Feeds an introspection's answer; false if `token` is not one of this worker's.
    pub(crate) fn on_token_answer(
        &self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        env: &Env,
    ) -> bool {
        self.introspected
            .iter()
            .any(|p| p.lookups.take(token, status, body, env))
    }

    /// Forgets introspections past their deadline; true if there were any.
    pub(crate) fn give_up_introspections(&self, now_s: u64) -> bool {
        self.introspected
            .iter()
            .fold(false, |any, p| p.lookups.give_up(now_s) | any)
    }
}

impl Check<'_> {
    /// A token of one of `providers` (indexes into [`Auth::introspected`]), active and
    /// granted every scope.
    pub(crate) fn oauth2(&self, providers: &[usize], scopes: &[String]) -> Result<Granted, Fail> {
        let mut worst = None;
        for p in providers
            .iter()
            .filter_map(|&i| self.auth.introspected.get(i))
        {
            let Some((token, source)) = p
                .sources
                .iter()
                .find_map(|s| token::extract(s, self.pairs).map(|t| (t, s)))
            else {
                continue;
            };
            match self.introspect(p, token, scopes) {
                Ok(mut granted) => {
                    if !p.forward {
                        granted.strip = token::strip(source, self.pairs).into_iter().collect();
                    }
                    return Ok(granted);
                }
                Err(f) => worst = Some(worse(worst, f)),
            }
        }
        Err(worst.unwrap_or(Fail::Missing))
    }

    fn introspect(
        &self,
        p: &Introspected,
        token: &str,
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Fail::invalid_token(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let hash: [u8; 32] = digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| Fail::Missing)?;
        let l = &p.lookups;
        match l.answer(&hash, self.env, self.now_s, true, !self.may_fetch) {
            Some(entry) => self.decide_token(p, &entry, scopes),
            None if l.in_flight(&hash) => Err(Fail::Waiting),
            None if self.may_fetch => {
                l.dispatch(&p.path, (TOKEN_HEADER, token), hash, self.env, self.now_s)
                    .map_err(unavailable)?;
                Err(Fail::Waiting)
            }
            None => Err(unavailable("the sessions service gave no answer".into())),
        }
    }

    fn decide_token(
        &self,
        p: &Introspected,
        entry: &Entry,
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        let inactive = || {
            Fail::invalid_token(format!(
                "the token is not active (introspected by provider {})",
                p.name
            ))
        };
        match entry.provider {
            LIVE => {}
            UNKNOWN => return Err(inactive()),
            _ => return Err(unavailable(String::from_utf8_lossy(&entry.claims).into())),
        }
        let id: SessionIdentity = serde_json::from_slice(&entry.claims)
            .map_err(|e| unavailable(format!("unreadable cached introspection ({e})")))?;
        if id.expires_at_s <= self.now_s {
            return Err(inactive());
        }
        if let Some(missing) = scopes.iter().find(|x| !id.scopes.contains(x)) {
            return Err(Fail::Forbidden {
                error: "insufficient_scope",
                detail: format!("token lacks scope {missing}"),
                challenge: Challenge::Bearer,
            });
        }
        let headers = id
            .headers
            .into_iter()
            .filter(|(h, _)| p.headers.contains(h))
            .collect();
        Ok(Granted {
            identity: Identity {
                client_id: id.client_id,
                method: p.method.clone(),
            },
            headers,
            strip: Vec::new(),
        })
    }
}

fn unavailable(detail: String) -> Fail {
    Fail::Unavailable {
        error: "introspection_unavailable",
        detail,
    }
}
