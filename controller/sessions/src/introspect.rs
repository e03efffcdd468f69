//! Opaque OAuth2 access tokens, checked for the auth filters where the client secrets are
//! (this service), never in a filter: RFC 7662 introspection, or GitHub's token check.
//!
//! - [`Kind::Rfc7662`]: `POST <endpoint>` with `token=<token>&token_type_hint=access_token`
//!   and the client's `Basic` credentials; `{"active": true, "scope", "client_id", "sub",
//!   "exp", ...}` is an identity, `{"active": false}` an inactive token.
//! - [`Kind::Github`] (the `github` preset): `POST <api>/applications/<client_id>/token` with
//!   the app's `Basic` credentials and `{"access_token": <token>}` (GitHub's documented token
//!   check); 200 with `user`, `scopes`, `expires_at` is an identity, 404 and 422 an inactive
//!   token.
//!
//! Anything else (a timeout, another status, a body that is not what the provider
//! documents) is [`Verdict::Unavailable`] naming what happened: the filter answers 503, never
//! a pass. Verdicts are kept per token (by SHA-256, bounded to [`CACHE_CAPACITY`]): an
//! active one until the token's `exp` or the provider's `cache_ttl`, whichever comes first,
//! an inactive one for `negative_ttl`; an unavailable one is not kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nexus_cache_service::storage::Clock;
use nexus_config::session::SessionIdentity;
use serde_json::{json, Map, Value};

use crate::oidc_http::{HttpClient, Post};
use crate::signin::{basic_auth, claim_text};

/// Verdicts kept at most (the oldest-expiring go first when full).
pub const CACHE_CAPACITY: usize = 10_000;

/// GitHub's REST API, where the `github` preset checks tokens.
pub const GITHUB_API: &str = "https://api.github.com";

/// How a provider's tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// RFC 7662 token introspection at this endpoint.
    Rfc7662 { endpoint: String },
    /// GitHub's token check at this API root ([`GITHUB_API`]; a test server in tests); with
    /// `memberships`, also the user's organizations and teams ([`memberships`]).
    Github { api: String, memberships: bool },
}

/// One provider of opaque tokens. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    pub kind: Kind,
    pub client_id: String,
    /// From a Kubernetes Secret (or a Secret file under `nexus up`); never rendered, never
    /// logged.
    pub client_secret: String,
    /// Bound on one call to the provider.
    pub timeout: Duration,
    /// Longest an active token is vouched for without asking the provider again.
    pub cache_ttl: Duration,
    /// How long an inactive token is remembered as such.
    pub negative_ttl: Duration,
    /// The claim naming the client (`x-nexus-client-id`): RFC 7662 `sub` by default (then
    /// `client_id` when a token has no `sub`), GitHub `login`.
    pub client_id_claim: String,
    /// Claim → request header the identity sets. GitHub's claims: `login`, `user_id`,
    /// `app_client_id`.
    pub claims_to_headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ProviderSettings {
    /// The `github` preset: GitHub's token check for the OAuth or GitHub App `client_id`.
    pub fn github(client_id: &str, client_secret: &str) -> Self {
        Self {
            kind: Kind::Github {
                api: GITHUB_API.into(),
                memberships: false,
            },
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            client_id_claim: "login".into(),
            claims_to_headers: BTreeMap::new(),
        }
    }

    /// RFC 7662 introspection at `endpoint`.
    pub fn rfc7662(endpoint: &str, client_id: &str, client_secret: &str) -> Self {
        Self {
            kind: Kind::Rfc7662 {
                endpoint: endpoint.into(),
            },
            client_id_claim: "sub".into(),
            ..Self::github(client_id, client_secret)
        }
    }
}

/// What a provider says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Active(SessionIdentity),
    Inactive,
    /// It could not be asked, or its answer is not one it documents: why.
    Unavailable(String),
}

/// The providers this service checks tokens for, and the verdicts it keeps.
pub struct Introspector {
    providers: RwLock<BTreeMap<String, Arc<ProviderSettings>>>,
    /// SHA-256 of provider name and token → (verdict, unix ms until which it holds).
    cache: Mutex<HashMap<[u8; 32], (Verdict, u64)>>,
    /// Or why there is none (no TLS roots): every provider is then unavailable.
    http: Result<HttpClient, String>,
    clock: Clock,
}

impl Introspector {
    pub fn new(clock: Clock) -> Self {
        Self {
            providers: RwLock::new(BTreeMap::new()),
            cache: Mutex::new(HashMap::new()),
            http: HttpClient::new().map_err(|e| format!("no HTTPS client ({e})")),
            clock,
        }
    }

    fn http(&self) -> Result<&HttpClient, String> {
        self.http.as_ref().map_err(Clone::clone)
    }

    /// Replaces the providers (a route was applied); kept verdicts of providers whose settings
    /// changed are dropped.
    pub fn set_providers(&self, providers: BTreeMap<String, ProviderSettings>) {
        let mut current = self.providers.write().unwrap_or_else(|p| p.into_inner());
        let changed = providers
            .iter()
            .any(|(name, p)| current.get(name).map(|c| c.as_ref()) != Some(p))
            || current.keys().any(|k| !providers.contains_key(k));
        *current = providers
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        if changed {
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Names of the providers served.
    pub fn provider_names(&self) -> Vec<String> {
        let providers = self.providers.read().unwrap_or_else(|p| p.into_inner());
        providers.keys().cloned().collect()
    }

    /// The verdict on `token` of provider `name`: kept, or asked for.
    pub async fn introspect(&self, name: &str, token: &str) -> Verdict {
        let provider = {
            let providers = self.providers.read().unwrap_or_else(|p| p.into_inner());
            providers.get(name).cloned()
        };
        let Some(p) = provider else {
            return Verdict::Unavailable(format!("no introspection provider {name:?} here"));
        };
        let key = cache_key(name, token);
        let now_ms = (self.clock)();
        if let Some(v) = self.kept(&key, now_ms) {
            return v;
        }
        let verdict = match &p.kind {
            Kind::Rfc7662 { endpoint } => self.rfc7662(&p, endpoint, token).await,
            Kind::Github { api, memberships } => match self.github(&p, api, token).await {
                Ok(Verdict::Active(identity)) if *memberships => {
                    self.with_memberships(&p, api, token, identity).await
                }
                other => other,
            },
        };
        let verdict = match verdict {
            Ok(v) => v,
            Err(why) => Verdict::Unavailable(format!("provider {name}: {why}")),
        };
        self.keep(key, &verdict, &p, now_ms);
        verdict
    }

    fn kept(&self, key: &[u8; 32], now_ms: u64) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| now_ms < *until)
            .map(|(v, _)| v.clone())
    }

    fn keep(&self, key: [u8; 32], verdict: &Verdict, p: &ProviderSettings, now_ms: u64) {
        let until = match verdict {
            Verdict::Active(id) => (now_ms + millis(p.cache_ttl)).min(id.expires_at_s * 1000),
            Verdict::Inactive => now_ms + millis(p.negative_ttl),
            Verdict::Unavailable(_) => return,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, u)| *u > now_ms);
        }
        if cache.len() >= CACHE_CAPACITY {
            let soonest = cache.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k);
            if let Some(k) = soonest {
                cache.remove(&k);
            }
        }
        cache.insert(key, (verdict.clone(), until));
    }

    async fn rfc7662(
        &self,
        p: &ProviderSettings,
        endpoint: &str,
        token: &str,
    ) -> Result<Verdict, String> {
        let post = Post {
            content_type: "application/x-www-form-urlencoded",
            body: crate::signin::form(&[("token", token), ("token_type_hint", "access_token")]),
            authorization: &basic_auth(&p.client_id, &p.client_secret),
        };
        let (status, body) = self.http()?.post(endpoint, post, p.timeout).await?;
        if status != 200 {
            return Err(format!("{endpoint} answered status {status}"));
        }
        let claims = json_object(&body, endpoint)?;
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Ok(Verdict::Inactive),
            _ => return Err(format!("{endpoint} answered without a boolean \"active\"")),
        }
        let exp = match claims.get("exp") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or(format!("{endpoint} answered a non-numeric exp"))?,
            ),
        };
        let scopes = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(' ')
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let claim = claim_text(claims.get(&p.client_id_claim))
            .or_else(|| claim_text(claims.get("client_id")));
        let Some(client_id) = claim else {
            return Err(format!(
                "{endpoint} answered an active token without {} or client_id",
                p.client_id_claim
            ));
        };
        Ok(self.identity(p, client_id, scopes, exp, &claims))
    }

    async fn github(
        &self,
        p: &ProviderSettings,
        api: &str,
        token: &str,
    ) -> Result<Verdict, String> {
        let url = format!(
            "{}/applications/{}/token",
            api.trim_end_matches('/'),
            nexus_filter_core::text::percent_encode(&p.client_id, b"")
        );
        let post = Post {
            content_type: "application/json",
            body: json!({ "access_token": token }).to_string(),
            authorization: &basic_auth(&p.client_id, &p.client_secret),
        };
        let (status, body) = self.http()?.post(&url, post, p.timeout).await?;
        match status {
            200 => {}
            404 | 422 => return Ok(Verdict::Inactive),
            s => return Err(format!("{url} answered status {s}")),
        }
        let answer = json_object(&body, &url)?;
        let Some(login) = answer
            .get("user")
            .and_then(|u| u.get("login"))
            .and_then(Value::as_str)
        else {
            return Err(format!("{url} answered a token without user.login"));
        };
        let exp = match answer.get("expires_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => {
                Some(rfc3339_seconds(t).ok_or(format!("{url} answered expires_at {t:?}"))?)
            }
            Some(other) => return Err(format!("{url} answered expires_at {other}")),
        };
        let scopes = answer
            .get("scopes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut claims = Map::new();
        claims.insert("login".into(), login.into());
        if let Some(id) = answer.get("user").and_then(|u| u.get("id")) {
            claims.insert("user_id".into(), id.clone());
        }
        if let Some(app) = answer.get("app").and_then(|a| a.get("client_id")) {
            claims.insert("app_client_id".into(), app.clone());
        }
        let client_id = claim_text(claims.get(&p.client_id_claim)).unwrap_or_else(|| login.into());
        Ok(self.identity(p, client_id, scopes, exp, &claims))
    }

    /// The identity with the user's GitHub organizations and teams (the token needs
    /// `read:org`): claims `orgs` and `teams` (`org/slug`), comma-separated for
    /// `claimsToHeaders`, and scopes `org:<login>` and `team:<org>/<slug>`, so an `oauth2`
    /// requirement's `scopes` admits the members of an organization or team alone (403 for
    /// others), as oauth2-proxy's `--github-org`/`--github-team` do.
    async fn with_memberships(
        &self,
        p: &ProviderSettings,
        api: &str,
        token: &str,
        mut identity: SessionIdentity,
    ) -> Result<Verdict, String> {
        let (orgs, teams) = memberships(self.http()?, p, api, token).await?;
        let Some((orgs, teams)) = orgs.zip(teams) else {
            return Ok(Verdict::Inactive); // revoked between the two calls
        };
        identity
            .scopes
            .extend(orgs.iter().map(|o| format!("org:{o}")));
        identity
            .scopes
            .extend(teams.iter().map(|t| format!("team:{t}")));
        for (claim, values) in [("orgs", &orgs), ("teams", &teams)] {
            if let Some(header) = p.claims_to_headers.get(claim) {
                identity.headers.insert(header.clone(), values.join(","));
            }
        }
        Ok(Verdict::Active(identity))
    }

    /// The identity of an active token: vouched for until its `exp`, or for `cache_ttl` when
    /// it has none; an `exp` already past makes it inactive.
    fn identity(
        &self,
        p: &ProviderSettings,
        client_id: String,
        scopes: Vec<String>,
        exp: Option<u64>,
        claims: &Map<String, Value>,
    ) -> Verdict {
        let now_s = (self.clock)() / 1000;
        let expires_at_s = exp.unwrap_or(now_s + p.cache_ttl.as_secs().max(1));
        if expires_at_s <= now_s {
            return Verdict::Inactive;
        }
        let headers = p
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| Some((header.clone(), claim_text(claims.get(claim))?)))
            .collect();
        Verdict::Active(SessionIdentity {
            client_id,
            scopes,
            headers,
            expires_at_s,
        })
    }
}

fn json_object(body: &[u8], url: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{url} answered JSON that is not an object")),
        Err(e) => Err(format!("{url} answered garbage ({e})")),
    }
}

fn cache_key(provider: &str, token: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(provider.as_bytes());
    ctx.update(b"\0");
    ctx.update(token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Unix seconds of a UTC RFC 3339 time as GitHub writes it (`2011-09-08T17:26:27Z`).
pub fn rfc3339_seconds(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    let shape = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if !shape {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `GET /user/orgs` and `GET /user/teams` with the user's token: organization logins and
/// `org/slug` team names (None for a token GitHub no longer accepts). A token without
/// `read:org` sees public organizations and no teams (GitHub answers 403 or 404 for teams):
/// that is no membership, not an outage.
async fn memberships(
    http: &HttpClient,
    p: &ProviderSettings,
    api: &str,
    token: &str,
) -> Result<(Option<Vec<String>>, Option<Vec<String>>), String> {
    let bearer = format!("Bearer {token}");
    let mut lists = Vec::new();
    for (path, name) in [
        ("/user/orgs", org_login as fn(&Value) -> Option<String>),
        ("/user/teams", team_name),
    ] {
        let url = format!("{}{path}?per_page=100", api.trim_end_matches('/'));
        let (status, body) = http.get_authorized(&url, &bearer, p.timeout).await?;
        let list = match status {
            200 => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(items)) => Some(items.iter().filter_map(name).collect()),
                _ => return Err(format!("{url} answered something other than a JSON array")),
            },
            401 => None,
            403 | 404 => Some(Vec::new()),
            s => return Err(format!("{url} answered status {s}")),
        };
        lists.push(list);
    }
    let teams = lists.pop().flatten();
    let orgs = lists.pop().flatten();
    Ok((orgs, teams))
}

fn org_login(org: &Value) -> Option<String> {
    org.get("login").and_then(Value::as_str).map(String::from)
}

fn team_name(team: &Value) -> Option<String> {
    let slug = team.get("slug").and_then(Value::as_str)?;
    let org = team
        .get("organization")?
        .get("login")
        .and_then(Value::as_str)?;
    Some(format!("{org}/{slug}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_expires_at_is_read_as_unix_seconds() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_seconds("2011-09-08T17:26:27Z"), Some(1_315_502_787));
        assert_eq!(rfc3339_seconds("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        for bad in ["2011-09-08 17:26:27Z", "2011-13-08T17:26:27Z", "soon", ""] {
            assert_eq!(rfc3339_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_leaves_the_secret_out() {
        let p = ProviderSettings::github("Iv1.8a61f9b3a7aba766", "s3cr3t-value");
        assert!(!format!("{p:?}").contains("s3cr3t-value"));
    }
}
