//! A provider's `signIn`: the OpenID client the sessions service signs browsers in with. The
//! filter learns nothing new (a session cookie is checked as before); the sessions service
//! gets the settings with the client secret, and the gateway routes `/_nexus/*` to it.

use nexus_sessions_service::http::{CALLBACK_PATH, SIGN_IN_PATH};
use nexus_sessions_service::signin::OidcSettings;

use crate::crd::{ProviderSpec, SignInSpec};

use super::problem::Ctx;
use super::secrets::{self, SecretLookup};

/// The sessions service's settings for `p.signIn` (at `at`), the client secret read from its
/// Secret; `cookie` is the route's session cookie.
pub(super) fn compile(
    cx: &mut Ctx,
    p: &ProviderSpec,
    s: &SignInSpec,
    cookie: &str,
    at: &str,
    secrets: &dyn SecretLookup,
) -> OidcSettings {
    if !(p.issuer.starts_with("https://") || p.issuer.starts_with("http://")) {
        cx.bad(
            format!("{at}.issuer"),
            "a sign-in provider needs its issuer, an http(s) URI (discovery is at <issuer>/.well-known/openid-configuration)",
        );
    }
    if p.introspection.is_some() || p.github.is_some() {
        cx.bad(
            format!("{at}.signIn"),
            "a provider of opaque tokens (introspection, github) cannot sign browsers in",
        );
    }
    check_redirect_uri(cx, &s.redirect_uri, &format!("{at}.signIn.redirectUri"));
    if s.client_id.is_empty() {
        cx.bad(format!("{at}.signIn.clientId"), "must not be empty");
    }
    let secret = secrets::secret_value(
        cx,
        secrets,
        &s.client_secret_ref,
        &format!("{at}.signIn.clientSecretRef"),
    );
    let mut out = OidcSettings::google(&s.client_id, &secret, &s.redirect_uri);
    out.issuer = p.issuer.clone();
    out.cookie = cookie.to_string();
    out.claims_to_headers = p
        .claims_to_headers
        .iter()
        .map(|(claim, header)| (claim.clone(), header.to_ascii_lowercase()))
        .collect();
    if !s.scopes.is_empty() {
        out.scopes = s.scopes.clone();
    }
    if let Some(c) = &s.client_id_claim {
        out.client_id_claim = c.clone();
    }
    out
}

/// The provider sends browsers back to the gateway's callback, which routes it to the sessions
/// service: so the URI's path must be that callback.
fn check_redirect_uri(cx: &mut Ctx, uri: &str, at: &str) {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"));
    let path = rest.and_then(|r| r.find('/').map(|i| &r[i..]));
    if path != Some(CALLBACK_PATH) {
        cx.bad(
            at,
            format!("{uri:?} must be an http(s) URI whose path is {CALLBACK_PATH}"),
        );
    }
}

/// Where browsers without a session go when sign-in is on and `signInPath` is unset.
pub(super) const DEFAULT_SIGN_IN_PATH: &str = SIGN_IN_PATH;
