//! A token's claims for a request: from this worker's cache, from the shared cache, or
//! verified (signature, issuer, times, audience) with the provider's keys, which may mean
//! waiting for a JWKS fetch.

use std::rc::Rc;

use nexus_filter_core::fasthash;
use ring::digest;
use serde_json::{Map, Value};

use crate::check::Check;
use crate::compile::Provider;
use crate::deny::Fail;
use crate::jwks::{self, KeySet};
use crate::token::{self, Jws};
use crate::verify::Alg;
use crate::{cache, local_key, Auth, LocalEntry};

type Claims = Map<String, Value>;

impl Check<'_> {
    /// The claims of a token valid for one of `candidates`: from the cache, or verified.
    pub(crate) fn verified_claims(
        &mut self,
        token: &str,
        candidates: &[usize],
    ) -> Result<(usize, Rc<Claims>), Fail> {
        if let Some(hit) = self.local_hit(token, candidates) {
            return Ok(hit);
        }
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        if let Some(hit) = self.shared_hit(token, &hash, candidates) {
            return Ok(hit);
        }
        let (p, jws, exp) = self.verify(token, candidates)?;
        let kept = Rc::new(self.kept_claims(jws.claims));
        self.store(token, &hash, p, exp, &kept);
        Ok((p, kept))
    }

    /// This worker's cached claims of `token`, if unexpired and from one of `candidates`.
    fn local_hit(&self, token: &str, candidates: &[usize]) -> Option<(usize, Rc<Claims>)> {
        if self.auth.cache_entries == 0 {
            return None;
        }
        let local = self.auth.local.borrow();
        let e = local
            .get(&local_key(token))
            .filter(|e| fasthash::eq(&e.token, token.as_bytes()))?;
        if self.now_s < e.expires_s && candidates.contains(&e.provider) {
            self.env.metrics.increment("nexus_auth.token_cache.hit", 1);
            return Some((e.provider, e.claims.clone()));
        }
        None
    }

    /// The shared cache's claims of the token hashing to `hash` (then kept on this worker too);
    /// counts a miss otherwise.
    fn shared_hit(
        &self,
        token: &str,
        hash: &[u8; 32],
        candidates: &[usize],
    ) -> Option<(usize, Rc<Claims>)> {
        let a = self.auth;
        if a.cache_entries == 0 {
            return None;
        }
        if let Some(e) = cache::get(
            self.env.shared,
            &a.prefix,
            a.cache_entries,
            hash,
            self.now_s,
        ) {
            let p = usize::from(e.provider);
            if candidates.contains(&p) {
                if let Ok(Value::Object(c)) = serde_json::from_slice(&e.claims) {
                    self.env.metrics.increment("nexus_auth.token_cache.hit", 1);
                    let c = Rc::new(c);
                    a.remember(token, p, e.expires_s, &c);
                    return Some((p, c));
                }
            }
        }
        self.env.metrics.increment("nexus_auth.token_cache.miss", 1);
        None
    }

    /// Verifies `token` in full: the provider (by issuer), its parsed JWS and its `exp`.
    fn verify<'t>(
        &mut self,
        token: &'t str,
        candidates: &[usize],
    ) -> Result<(usize, Jws<'t>, u64), Fail> {
        let jws = Jws::parse(token).map_err(Fail::invalid_token)?;
        token::check_critical(&jws.header).map_err(Fail::invalid_token)?;
        let (alg, alg_name) = header_alg(&jws)?;
        let p = self.issuer(&jws, candidates)?;
        let kid = jws.header.get("kid").and_then(Value::as_str);
        let set = self.keys(p, kid)?;
        self.check_signature(&jws, &set, kid, alg, alg_name)?;
        let provider = &self.auth.providers[p];
        let exp = self.check_times(&jws.claims, provider.skew_s)?;
        check_audience(provider, &jws.claims)?;
        Ok((p, jws, exp))
    }

    /// The candidate whose issuer is the token's `iss`.
    fn issuer(&self, jws: &Jws, candidates: &[usize]) -> Result<usize, Fail> {
        let iss = jws
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| Fail::invalid_token("the token has no iss"))?;
        candidates
            .iter()
            .copied()
            .find(|p| self.auth.providers[*p].issuer == iss)
            .ok_or_else(|| Fail::invalid_token(format!("issuer {iss} is not accepted here")))
    }

    /// Some key of `set` (the one named `kid`, if the token names one) whose type and `alg`
    /// fit the token's algorithm verifies the signature.
    fn check_signature(
        &self,
        jws: &Jws,
        set: &KeySet,
        kid: Option<&str>,
        alg: Alg,
        alg_name: &str,
    ) -> Result<(), Fail> {
        let usable: Vec<&jwks::Jwk> = set
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| alg.fits(&k.material) && k.alg.as_deref().is_none_or(|x| x == alg_name))
            .collect();
        if usable.is_empty() {
            return Err(Fail::invalid_token(format!(
                "no key{} can verify {alg_name} (algorithm mismatch)",
                kid.map(|k| format!(" with kid {k}")).unwrap_or_default()
            )));
        }
        let message = jws.signing_input.as_bytes();
        if !usable.iter().any(|k| {
            self.auth
                .verifier
                .verify(alg, &k.material, message, &jws.signature)
        }) {
            return Err(Fail::invalid_token("signature verification failed"));
        }
        Ok(())
    }

    /// `exp` (required) and `nbf` (if present) hold now, give or take `skew` seconds.
    fn check_times(&self, claims: &Claims, skew: u64) -> Result<u64, Fail> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| Fail::invalid_token("the token has no numeric exp"))?;
        if self.now_s > exp.saturating_add(skew) {
            return Err(Fail::invalid_token("the token has expired"));
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_u64()
                .ok_or_else(|| Fail::invalid_token("nbf is not a number"))?;
            if self.now_s.saturating_add(skew) < nbf {
                return Err(Fail::invalid_token("the token is not valid yet (nbf)"));
            }
        }
        Ok(exp)
    }

    /// The claims the filter uses later (all of them when the payload is forwarded).
    fn kept_claims(&self, claims: Claims) -> Claims {
        let needed = &self.auth.needed_claims;
        if needed.is_empty() {
            return claims;
        }
        needed
            .iter()
            .filter_map(|n| claims.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }

    /// Caches verified claims on this worker and in shared data, until the token expires (plus
    /// skew) or the cache TTL, whichever comes first.
    fn store(&self, token: &str, hash: &[u8; 32], p: usize, exp: u64, kept: &Rc<Claims>) {
        let a = self.auth;
        if a.cache_entries == 0 {
            return;
        }
        let expires_s = exp
            .saturating_add(a.providers[p].skew_s)
            .min(self.now_s.saturating_add(a.cache_ttl_s));
        a.remember(token, p, expires_s, kept);
        cache::put(
            self.env.shared,
            &a.prefix,
            a.cache_entries,
            hash,
            &cache::Entry {
                provider: u16::try_from(p).unwrap_or(u16::MAX),
                expires_s,
                claims: Value::Object((**kept).clone()).to_string().into_bytes(),
            },
        );
    }

    /// A provider's keys, knowing `kid`: from this worker, from shared data, or by starting a
    /// fetch (the request then waits).
    fn keys(&mut self, p: usize, kid: Option<&str>) -> Result<Rc<KeySet>, Fail> {
        let a = self.auth;
        let has_kid =
            |set: &KeySet| kid.is_none_or(|k| set.keys.iter().any(|j| j.kid.as_deref() == Some(k)));
        let local = a.keys.borrow()[p].set.clone();
        if let Some(set) = &local {
            if has_kid(set) {
                return Ok(set.clone());
            }
        }
        if a.providers[p].remote.is_none() {
            return Err(Fail::invalid_token(format!(
                "unknown kid {}",
                kid.unwrap_or_default()
            )));
        }
        a.sync(p, self.env);
        let synced = a.keys.borrow()[p].set.clone();
        if let Some(set) = &synced {
            if has_kid(set) {
                return Ok(set.clone());
            }
        }
        if a.in_flight(p)
            || (self.may_fetch && a.try_fetch(p, self.env, self.now_s, a.refetch_min_s))
            || a.fetching_elsewhere(p, self.env, self.now_s)
        {
            return Err(Fail::Waiting);
        }
        match synced {
            Some(_) => Err(Fail::invalid_token(format!(
                "unknown kid {}",
                kid.unwrap_or_default()
            ))),
            None => Err(Fail::jwks_unavailable(format!(
                "no signing keys for provider {} (JWKS fetch failed)",
                a.providers[p].name
            ))),
        }
    }
}

/// The token's `alg`: present, not `none`, and one this filter verifies.
fn header_alg<'j>(jws: &'j Jws) -> Result<(Alg, &'j str), Fail> {
    let alg_name = jws
        .header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| Fail::invalid_token("the header has no alg"))?;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(Fail::invalid_token("alg none is not accepted"));
    }
    let alg = Alg::parse(alg_name)
        .ok_or_else(|| Fail::invalid_token(format!("unsupported alg {alg_name}")))?;
    Ok((alg, alg_name))
}

/// With audiences configured, the token's `aud` (a string or a list) names one of them.
fn check_audience(provider: &Provider, claims: &Claims) -> Result<(), Fail> {
    if provider.audiences.is_empty() {
        return Ok(());
    }
    let ok = match claims.get("aud") {
        Some(Value::String(s)) => provider.audiences.contains(s),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|s| provider.audiences.iter().any(|x| x == s)),
        _ => false,
    };
    if !ok {
        return Err(Fail::invalid_token("audience not accepted"));
    }
    Ok(())
}

impl Auth {
    /// Keeps a verified token in this worker's cache (bounded: when full, it starts over).
    fn remember(&self, token: &str, provider: usize, expires_s: u64, claims: &Rc<Claims>) {
        let mut local = self.local.borrow_mut();
        if local.len() >= self.cache_entries as usize {
            local.clear();
        }
        local.insert(
            local_key(token),
            LocalEntry {
                token: token.as_bytes().into(),
                provider,
                expires_s,
                claims: claims.clone(),
            },
        );
    }
}
