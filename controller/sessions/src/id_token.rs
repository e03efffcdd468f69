//! An ID token verified by the auth filter's own JWT code (`nexus-auth`, run natively over
//! in-memory hosts): signature with the provider's keys, `iss`, `aud` (the client id), `exp`
//! and `nbf` with its clock skew, `alg` (never `none`), `crit`. One verifier for tokens at the
//! proxy and at sign-in.

use base64::Engine;
use nexus_auth::{Auth, Env, Outcome};
use nexus_filter_core::testing::{MemCallouts, MemHeaders, MemLog, MemMetrics, MemSharedData};
use nexus_filter_core::{Clock, HeaderMap};
use serde_json::{json, Map, Value};

/// The header the verifier hands the verified claims back in (base64url JSON).
const CLAIMS_HEADER: &str = "x-id-token-claims";

struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_nanos(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The verified claims of `token`, or why it is refused.
pub fn verify(
    token: &str,
    jwks: &str,
    issuer: &str,
    client_id: &str,
) -> Result<Map<String, Value>, String> {
    let config = json!({
        "providers": {"idp": {"issuer": issuer, "audiences": [client_id],
                              "jwks": {"inline": jwks}}},
        "rules": [{"name": "id-token", "requirement": {"jwt": {}}}],
        "identity": {"payload_header": CLAIMS_HEADER, "filter_state": false},
        "token_cache": {"max_entries": 0}
    });
    let auth = Auth::from_json(config.to_string().as_bytes())
        .map_err(|e| format!("the provider's keys are unusable: {e}"))?;
    let bearer = format!("Bearer {token}");
    let mut headers = MemHeaders::new(&[
        (":method", "GET"),
        (":path", "/"),
        ("authorization", &bearer),
    ]);
    let (metrics, shared, log, callouts) = (
        MemMetrics::default(),
        MemSharedData::default(),
        MemLog::default(),
        MemCallouts::default(),
    );
    let env = Env {
        clock: &SystemClock,
        metrics: &metrics,
        shared: &shared,
        log: &log,
        callouts: &callouts,
    };
    match auth.on_request_headers(&mut headers, &env, false) {
        Outcome::Continue(Some(_)) => {}
        Outcome::Respond(r) => {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            return Err(body["detail"].as_str().unwrap_or("refused").to_string());
        }
        _ => return Err("the ID token was not verified".into()),
    }
    let encoded = headers
        .get(CLAIMS_HEADER)
        .ok_or("the ID token was not verified")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| e.to_string())?;
    match serde_json::from_slice(&json) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err("the ID token's claims are not an object".into()),
    }
}
