//! Browser sign-in with an OpenID provider: the authorization-code flow with PKCE (S256),
//! `state` and `nonce`, run where the client secret is (this service), never in a filter.
//!
//! 1. [`SignIn::start`]: a new `state`, `nonce` and PKCE verifier are kept (hashed `state` →
//!    the rest) for [`PENDING_TTL_S`] in the session store, and the browser is sent to the
//!    provider's `authorization_endpoint` (found by discovery at
//!    `<issuer>/.well-known/openid-configuration`).
//! 2. [`SignIn::callback`]: the `state` is taken out of the store (once: a replayed or forged
//!    one is unknown), the code is exchanged at the `token_endpoint` with the verifier and the
//!    client secret, the ID token is verified by the auth filter's own JWT code (`nexus-auth`:
//!    signature with keys from the provider's `jwks_uri`, issuer, audience = client id, `exp`,
//!    `crit`) and its `nonce` compared; then a session is made and its cookie set.
//! 3. [`SignIn::logout`]: the cookie's session is revoked (everywhere) and the cookie cleared.
//!
//! Every refusal is JSON with its reason ([`Reply`]).

use std::collections::BTreeMap;

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::Reply;
use crate::oidc_http::HttpClient;
use crate::{id_hash, NewSession, SessionService};

/// How long a browser may take at the provider, in seconds.
pub const PENDING_TTL_S: u64 = 600;

/// One OpenID provider this service signs browsers in with. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    /// Read from a Secret (or a file under `nexus up`); never rendered, never logged.
    #[serde(skip)]
    pub client_secret: String,
    /// The callback as the browser reaches it (`https://portal.example.com/_nexus/callback`).
    pub redirect_uri: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim that names the client (`x-nexus-client-id`).
    #[serde(default = "default_client_id_claim")]
    pub client_id_claim: String,
    /// ID-token claim → request header the session sets.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// The session cookie's name (the auth filter's `sessions.cookie`).
    #[serde(default = "default_cookie")]
    pub cookie: String,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

fn default_client_id_claim() -> String {
    "email".into()
}

fn default_cookie() -> String {
    "nexus-session".into()
}

impl OidcSettings {
    /// Google as the OpenID provider (`https://accounts.google.com`).
    pub fn google(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        Self {
            issuer: "https://accounts.google.com".into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            scopes: default_scopes(),
            client_id_claim: default_client_id_claim(),
            claims_to_headers: [("email".to_string(), "x-nexus-email".to_string())].into(),
            cookie: default_cookie(),
        }
    }

    /// `Secure` unless the callback is plain HTTP on loopback (a browser would not send a
    /// `Secure` cookie back there).
    fn secure_cookie(&self) -> bool {
        let plain = self.redirect_uri.strip_prefix("http://");
        !plain.is_some_and(|rest| {
            let host = rest.split(['/', ':']).next().unwrap_or_default();
            ["127.0.0.1", "localhost", "[::1]"].contains(&host)
        })
    }
}

/// What discovery gives.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// A sign-in in progress, kept under the hash of its `state`.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Pending {
    nonce: String,
    verifier: String,
    rd: String,
}

pub struct SignIn {
    settings: OidcSettings,
    http: HttpClient,
    random: SystemRandom,
}

impl SignIn {
    pub fn new(settings: OidcSettings) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            http: HttpClient::new()?,
            random: SystemRandom::new(),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    fn random(&self) -> Result<String, Reply> {
        let mut b = [0u8; 32];
        self.random
            .fill(&mut b)
            .map_err(|_| error(500, "internal", "no randomness"))?;
        Ok(b64(&b))
    }

    async fn discover(&self) -> Result<Discovery, Reply> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let (status, body) = self.http.get(&url).await.map_err(|e| unreachable(&e))?;
        let d: Discovery = (status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
            .ok_or_else(|| unreachable(&format!("discovery at {url} answered {status}")))?;
        if d.issuer != self.settings.issuer {
            return Err(unreachable(&format!(
                "discovery names issuer {:?}, not {:?}",
                d.issuer, self.settings.issuer
            )));
        }
        Ok(d)
    }

    /// The redirect to the provider; `rd` is where the browser goes back to afterwards.
    pub async fn start(&self, service: &SessionService, rd: Option<&str>) -> Reply {
        match self.start_inner(service, rd).await {
            Ok(r) | Err(r) => r,
        }
    }

    async fn start_inner(
        &self,
        service: &SessionService,
        rd: Option<&str>,
    ) -> Result<Reply, Reply> {
        let d = self.discover().await?;
        let (state, nonce, verifier) = (self.random()?, self.random()?, self.random()?);
        let challenge =
            b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        let pending = Pending {
            nonce: nonce.clone(),
            verifier,
            rd: local_path(rd),
        };
        let value = json!(pending).to_string();
        service
            .storage()
            .put_pending(&id_hash(&state), &value, PENDING_TTL_S)
            .await
            .map_err(|e| {
                error(
                    503,
                    "unavailable",
                    format!("the session store cannot be written: {e}"),
                )
            })?;
        let s = &self.settings;
        let query = form(&[
            ("response_type", "code"),
            ("client_id", &s.client_id),
            ("redirect_uri", &s.redirect_uri),
            ("scope", &s.scopes.join(" ")),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let sep = if d.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(redirect(
            &format!("{}{sep}{query}", d.authorization_endpoint),
            None,
        ))
    }

    /// The provider's redirect back: `query` is the callback's query string.
    pub async fn callback(&self, service: &SessionService, query: &str) -> Reply {
        match self.callback_inner(service, query).await {
            Ok(r) | Err(r) => r,
        }
    }

    async fn callback_inner(&self, service: &SessionService, query: &str) -> Result<Reply, Reply> {
        let q = parse_query(query);
        if let Some(e) = q.get("error") {
            return Err(error(
                401,
                "sign_in_refused",
                format!("the provider answered error={e}"),
            ));
        }
        let state = q
            .get("state")
            .ok_or_else(|| error(400, "invalid_state", "the callback carries no state"))?;
        let code = q
            .get("code")
            .ok_or_else(|| error(400, "invalid_request", "the callback carries no code"))?;
        let pending = service
            .storage()
            .take_pending(&id_hash(state))
            .await
            .map_err(|e| {
                error(
                    503,
                    "unavailable",
                    format!("the session store cannot be read: {e}"),
                )
            })?
            .and_then(|v| serde_json::from_str::<Pending>(&v).ok())
            .ok_or_else(|| {
                error(
                    400,
                    "invalid_state",
                    "unknown, expired or already used state",
                )
            })?;
        let d = self.discover().await?;
        let id_token = self.exchange(&d, code, &pending.verifier).await?;
        let claims = self.verify(&d, &id_token).await?;
        if claims.get("nonce").and_then(Value::as_str) != Some(pending.nonce.as_str()) {
            return Err(error(
                401,
                "invalid_id_token",
                "the ID token's nonce is not this sign-in's",
            ));
        }
        let cookie = self.session_cookie(service, &claims).await?;
        Ok(redirect(&pending.rd, Some(cookie)))
    }

    /// The authorization code for an ID token at the token endpoint (client secret basic).
    async fn exchange(&self, d: &Discovery, code: &str, verifier: &str) -> Result<String, Reply> {
        let s = &self.settings;
        let body = form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &s.redirect_uri),
            ("code_verifier", verifier),
        ]);
        let (status, answer) = self
            .http
            .post_form(
                &d.token_endpoint,
                &body,
                &basic_auth(&s.client_id, &s.client_secret),
            )
            .await
            .map_err(|e| unreachable(&e))?;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if status != 200 {
            let why = answer["error"].as_str().unwrap_or("no error given");
            return Err(error(
                401,
                "code_exchange_failed",
                format!("the provider refused the code ({why}, status {status})"),
            ));
        }
        answer["id_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                error(
                    502,
                    "code_exchange_failed",
                    "the token response has no id_token",
                )
            })
    }

    /// The ID token's claims, verified as the auth filter verifies a JWT.
    async fn verify(&self, d: &Discovery, id_token: &str) -> Result<Map<String, Value>, Reply> {
        let (status, jwks) = self
            .http
            .get(&d.jwks_uri)
            .await
            .map_err(|e| unreachable(&e))?;
        if status != 200 {
            return Err(unreachable(&format!(
                "the JWKS at {} answered {status}",
                d.jwks_uri
            )));
        }
        let jwks = String::from_utf8_lossy(&jwks);
        crate::id_token::verify(
            id_token,
            &jwks,
            &self.settings.issuer,
            &self.settings.client_id,
        )
        .map_err(|why| error(401, "invalid_id_token", why))
    }

    /// A new session for the ID token's identity, as a `Set-Cookie` value.
    async fn session_cookie(
        &self,
        service: &SessionService,
        claims: &Map<String, Value>,
    ) -> Result<String, Reply> {
        let s = &self.settings;
        let client_id = claim_text(claims.get(&s.client_id_claim)).ok_or_else(|| {
            error(
                401,
                "invalid_id_token",
                format!("the ID token has no {} claim", s.client_id_claim),
            )
        })?;
        let headers = s
            .claims_to_headers
            .iter()
            .filter_map(|(c, h)| claim_text(claims.get(c)).map(|v| (h.clone(), v)))
            .collect();
        let new = NewSession {
            client_id,
            scopes: s.scopes.clone(),
            headers,
        };
        let (id, _) = service.create(new).await.map_err(|e| {
            error(
                503,
                "unavailable",
                format!("the session store cannot be written: {e}"),
            )
        })?;
        let max_age = service.config().ttl.as_secs();
        Ok(self.cookie(&id, max_age))
    }

    /// Host-only (no `Domain`), `HttpOnly`, `SameSite=Lax`, `Secure` unless loopback HTTP.
    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.settings.secure_cookie() {
            "; Secure"
        } else {
            ""
        };
        format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
            self.settings.cookie
        )
    }

    /// Ends the session named by the `Cookie` header (if any) and clears the cookie.
    pub async fn logout(&self, service: &SessionService, cookie_header: Option<&str>) -> Reply {
        let name = &self.settings.cookie;
        let id = cookie_header.and_then(|h| {
            h.split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string())
        });
        if let Some(id) = id {
            if let Err(e) = service.revoke(&id).await {
                return error(
                    503,
                    "unavailable",
                    format!("the session may still be live: {e}"),
                );
            }
        }
        redirect("/", Some(self.cookie("", 0)))
    }
}

fn error(status: u16, error: &str, detail: impl Into<String>) -> Reply {
    Reply {
        status,
        body: json!({"error": error, "detail": detail.into()}),
        headers: Vec::new(),
    }
}

fn unreachable(why: &str) -> Reply {
    error(502, "provider_unavailable", why)
}

fn redirect(location: &str, cookie: Option<String>) -> Reply {
    let mut headers = vec![("location".to_string(), location.to_string())];
    headers.extend(cookie.map(|c| ("set-cookie".to_string(), c)));
    Reply {
        status: 302,
        body: json!({"redirect": location}),
        headers,
    }
}

/// Where to go back to: a path on this site only (an absolute or protocol-relative URL
/// would make the sign-in an open redirect).
fn local_path(rd: Option<&str>) -> String {
    match rd {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_string(),
        _ => "/".to_string(),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `Basic` credentials of a client (RFC 6749 §2.3.1: id and secret form-encoded first).
pub(crate) fn basic_auth(client_id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(client_id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

pub(crate) fn claim_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_encode(s: &str) -> String {
    nexus_filter_core::text::percent_encode(s, b"")
}

/// A query string's parameters, percent-decoded (`+` is a space); later duplicates lose.
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k)).or_insert_with(|| decode(v));
    }
    out
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_digit(b[i + 1]), hex_digit(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            x => out.push(x),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
