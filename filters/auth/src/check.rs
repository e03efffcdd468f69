//! One request's decision: strip spoofed identity headers, find the rule, check its
//! requirement, and either forward with the caller's identity or deny.

use nexus_config::auth::NoMatchAction;
use nexus_filter_core::matcher::RequestView;
use nexus_filter_core::{HeaderList, HeaderMap, LocalResponse};
use ring::digest;
use serde_json::{Map, Value};

use crate::compile::Req;
use crate::deny::{worse, Challenge, Fail};
use crate::{token, Auth, Env, Identity, Outcome, HEADER_AUTH_METHOD, HEADER_CLIENT_ID};

/// What a met requirement grants.
pub(crate) struct Granted {
    pub(crate) identity: Identity,
    pub(crate) headers: Vec<(String, String)>,
    /// Where the credential came from, to remove it before the upstream sees it.
    pub(crate) strip: Vec<Strip>,
}

pub(crate) enum Strip {
    Header(String),
    /// The request path without the token's query parameter.
    Path(String),
}

/// One request's evaluation.
pub(crate) struct Check<'a> {
    pub(crate) auth: &'a Auth,
    pub(crate) pairs: &'a HeaderList,
    pub(crate) env: &'a Env<'a>,
    pub(crate) now_s: u64,
    /// Whether an unknown `kid` or missing keys may start a JWKS fetch.
    pub(crate) may_fetch: bool,
}

impl Auth {
    /// Decides one request. `may_fetch`: whether an unknown `kid` or missing keys may start a
    /// JWKS fetch (false when re-deciding a request that already waited for one).
    pub fn on_request_headers(
        &self,
        headers: &mut impl HeaderMap,
        env: &Env,
        may_fetch: bool,
    ) -> Outcome {
        let mut pairs = headers.pairs();
        let before = pairs.len();
        pairs.retain(|k, _| !self.owned_headers.iter().any(|h| h == k));
        if pairs.len() != before {
            for h in &self.owned_headers {
                headers.remove(h);
            }
            env.metrics.increment(
                "nexus_auth.spoofed_headers_removed",
                i64::try_from(before - pairs.len()).unwrap_or(1),
            );
        }
        let view = RequestView::new(&pairs, "");
        let Some(rule) = self.rules.iter().find(|r| r.matcher.matches(&view)) else {
            return self.no_rule(&view, env);
        };
        let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
        let mut ctx = Check {
            auth: self,
            pairs: &pairs,
            env,
            now_s,
            may_fetch,
        };
        match ctx.check(&rule.req) {
            Ok(None) => {
                env.metrics.increment("nexus_auth.allowed.anonymous", 1);
                Outcome::Continue(None)
            }
            Ok(Some(granted)) => self.admit(headers, granted, env),
            Err(fail) if fail.wants_sign_in() && rule.req.accepts_session() => {
                match self.sign_in_redirect(&pairs) {
                    Some(redirect) => {
                        env.metrics
                            .increment("nexus_auth.denied.sign_in_redirect", 1);
                        Outcome::Respond(redirect)
                    }
                    None => self.deny(fail, &rule.name, env),
                }
            }
            Err(fail) => self.deny(fail, &rule.name, env),
        }
    }

    fn no_rule(&self, view: &RequestView, env: &Env) -> Outcome {
        match self.on_no_match {
            NoMatchAction::Allow => {
                env.metrics.increment("nexus_auth.allowed.no_rule", 1);
                Outcome::Continue(None)
            }
            NoMatchAction::Deny => {
                env.metrics.increment("nexus_auth.denied.no_rule", 1);
                let detail = format!("no auth rule matches {} {}", view.method, view.path_only());
                Outcome::Respond(LocalResponse::json_error(403, "access_denied", &detail))
            }
        }
    }

    /// Forwards an authenticated request: the credential removed, the identity headers set.
    fn admit(&self, headers: &mut impl HeaderMap, granted: Granted, env: &Env) -> Outcome {
        let metric = match granted.identity.method.as_str() {
            "api_key" => "nexus_auth.allowed.api_key",
            "session" => "nexus_auth.allowed.session",
            m if m.starts_with("oauth2:") => "nexus_auth.allowed.oauth2",
            _ => "nexus_auth.allowed.jwt",
        };
        env.metrics.increment(metric, 1);
        for s in &granted.strip {
            match s {
                Strip::Header(name) => headers.remove(name),
                Strip::Path(path) => headers.set(":path", path),
            }
        }
        if self.identity.headers {
            headers.set(HEADER_CLIENT_ID, &granted.identity.client_id);
            headers.set(HEADER_AUTH_METHOD, &granted.identity.method);
        }
        for (name, value) in &granted.headers {
            headers.set(name, value);
        }
        Outcome::Continue(Some(granted.identity))
    }
}

impl Check<'_> {
    fn check(&mut self, req: &Req) -> Result<Option<Granted>, Fail> {
        match req {
            Req::Allow => Ok(None),
            Req::ApiKey { scopes } => self.api_key(scopes).map(Some),
            Req::Session { scopes } => self.session(scopes).map(Some),
            Req::OAuth2 { providers, scopes } => self.oauth2(providers, scopes).map(Some),
            Req::Jwt {
                providers,
                claims,
                scopes,
            } => self.jwt(providers, claims, scopes).map(Some),
            Req::AnyOf(list) => {
                let mut worst = None;
                for r in list {
                    match self.check(r) {
                        Ok(g) => return Ok(g),
                        Err(f) => worst = Some(worse(worst, f)),
                    }
                }
                Err(worst.unwrap_or(Fail::Missing))
            }
        }
    }

    fn api_key(&self, scopes: &[String]) -> Result<Granted, Fail> {
        let a = self.auth;
        let Some(presented) = self.pairs.get(&a.api_key_header) else {
            return Err(Fail::Missing);
        };
        let hash = digest::digest(&digest::SHA256, presented.trim().as_bytes());
        // Compare against every key, without early exit, so timing says nothing about which.
        let mut found = None;
        for (i, key) in a.api_keys.iter().enumerate() {
            let diff = key
                .hash
                .iter()
                .zip(hash.as_ref())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y));
            if diff == 0 {
                found = Some(i);
            }
        }
        let Some(key) = found.map(|i| &a.api_keys[i]) else {
            return Err(Fail::Invalid {
                error: "invalid_api_key",
                detail: format!("the {} header carries no known key", a.api_key_header),
                challenge: Challenge::ApiKey,
            });
        };
        if let Some(missing) = scopes.iter().find(|s| !key.scopes.contains(s)) {
            return Err(Fail::Forbidden {
                error: "insufficient_scope",
                detail: format!("API key of {} lacks scope {missing}", key.client_id),
                challenge: Challenge::ApiKey,
            });
        }
        Ok(Granted {
            identity: Identity {
                client_id: key.client_id.clone(),
                method: "api_key".to_string(),
            },
            headers: Vec::new(),
            strip: Vec::new(),
        })
    }

    fn jwt(
        &mut self,
        providers: &[usize],
        claims: &[(String, String)],
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        let find = |p: usize| {
            self.auth.providers[p]
                .sources
                .iter()
                .enumerate()
                .find_map(|(i, s)| token::extract(s, self.pairs).map(|t| (t, i)))
        };
        // The common rule names one provider: no grouping, nothing allocated.
        if let [p] = providers {
            let (t, source) = find(*p).ok_or(Fail::Missing)?;
            return self.grant(t, &[*p], &[source], claims, scopes);
        }
        // (token, providers that found it there, the source each found it in)
        let mut tokens: Vec<(&str, Vec<usize>, Vec<usize>)> = Vec::new();
        for &p in providers {
            if let Some((t, source)) = find(p) {
                match tokens.iter_mut().find(|(seen, _, _)| *seen == t) {
                    Some((_, ps, ss)) => {
                        ps.push(p);
                        ss.push(source);
                    }
                    None => tokens.push((t, vec![p], vec![source])),
                }
            }
        }
        let mut worst = None;
        for (t, candidates, sources) in &tokens {
            match self.grant(t, candidates, sources, claims, scopes) {
                Ok(granted) => return Ok(granted),
                Err(f) => worst = Some(worse(worst, f)),
            }
        }
        Err(worst.unwrap_or(Fail::Missing))
    }

    /// Verifies `token` for one of `candidates` (each found it in `sources[i]`), then checks
    /// the rule's claims and scopes.
    fn grant(
        &mut self,
        token: &str,
        candidates: &[usize],
        sources: &[usize],
        claims: &[(String, String)],
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        let (p, c) = self.verified_claims(token, candidates)?;
        let mut granted = self.authorize(p, &c, claims, scopes)?;
        let provider = &self.auth.providers[p];
        if !provider.forward {
            // The source this provider found the token in (found above, not again).
            granted.strip = candidates
                .iter()
                .position(|c| *c == p)
                .and_then(|i| sources.get(i))
                .and_then(|&i| provider.sources.get(i))
                .and_then(|s| token::strip(s, self.pairs))
                .into_iter()
                .collect();
        }
        Ok(granted)
    }

    /// The rule's required claims and scopes, then the identity and headers the claims give.
    fn authorize(
        &self,
        p: usize,
        c: &Map<String, Value>,
        required: &[(String, String)],
        scopes: &[String],
    ) -> Result<Granted, Fail> {
        for (name, want) in required {
            if claim_string(c.get(name)).as_deref() != Some(want.as_str()) {
                return Err(Fail::Forbidden {
                    error: "claim_mismatch",
                    detail: format!("claim {name} must be {want:?}"),
                    challenge: Challenge::Bearer,
                });
            }
        }
        if let Some(s) = scopes.iter().find(|s| !has_scope(c, s)) {
            return Err(Fail::Forbidden {
                error: "insufficient_scope",
                detail: format!("token lacks scope {s}"),
                challenge: Challenge::Bearer,
            });
        }
        let provider = &self.auth.providers[p];
        let client_id = claim_string(c.get(&self.auth.identity.client_id_claim))
            .unwrap_or_else(|| provider.issuer.clone());
        let mut headers = Vec::new();
        for (claim, header) in &provider.claims_to_headers {
            if let Some(v) = claim_string(c.get(claim)) {
                headers.push((header.clone(), v));
            }
        }
        if let Some(h) = &self.auth.identity.payload_header {
            use base64::Engine;
            let json = Value::Object(c.clone()).to_string();
            headers.push((
                h.clone(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json),
            ));
        }
        Ok(Granted {
            identity: Identity {
                client_id,
                method: provider.method.clone(),
            },
            headers,
            strip: Vec::new(),
        })
    }
}

/// `s` is in the token's `scope` (space separated) or `scp` (an array, or space separated).
fn has_scope(c: &Map<String, Value>, s: &str) -> bool {
    let in_scope = c
        .get("scope")
        .and_then(Value::as_str)
        .is_some_and(|v| v.split(' ').any(|x| x == s));
    let in_scp = match c.get("scp") {
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(s)),
        Some(Value::String(v)) => v.split(' ').any(|x| x == s),
        _ => false,
    };
    in_scope || in_scp
}

/// A claim as header text: strings as they are, numbers and booleans in JSON form.
fn claim_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
