//! Keys and tokens for tests, made with the same crate that verifies them (`ring`). Native only:
//! signing needs randomness. RSA keys come from fixtures (ring cannot generate them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

/// Every algorithm nexus-auth accepts.
pub const ALGS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

pub const RSA_A: &[u8] = include_bytes!("../../../tests/fixtures/auth/rsa2048-a.der");
pub const RSA_B: &[u8] = include_bytes!("../../../tests/fixtures/auth/rsa2048-b.der");

enum Inner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

pub struct SigningKey {
    pub alg: String,
    pub kid: String,
    inner: Inner,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A key for `alg` (RSA algorithms use fixture key A).
    pub fn new(alg: &str, kid: &str) -> Self {
        Self::with_rsa(alg, kid, RSA_A)
    }

    /// A key for `alg`; RSA algorithms use the given PKCS#1 DER key.
    pub fn with_rsa(alg: &str, kid: &str, rsa_der: &[u8]) -> Self {
        let rng = SystemRandom::new();
        let inner = match alg {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                Inner::Rsa(RsaKeyPair::from_der(rsa_der).unwrap())
            }
            "ES256" | "ES384" => {
                let a = if alg == "ES256" {
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
                Inner::Ec(EcdsaKeyPair::from_pkcs8(a, pkcs8.as_ref(), &rng).unwrap())
            }
            "EdDSA" => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Inner::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
            }
            "HS256" | "HS384" | "HS512" => {
                Inner::Hmac(format!("secret-of-{kid}-{alg}").into_bytes())
            }
            other => panic!("unknown alg {other}"),
        };
        Self {
            alg: alg.to_string(),
            kid: kid.to_string(),
            inner,
        }
    }

    /// The public JWK (the secret, for HMAC).
    pub fn jwk(&self) -> Value {
        match &self.inner {
            Inner::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Inner::Ec(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "kid": self.kid, "crv": crv,
                       "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])})
            }
            Inner::Ed(k) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
            Inner::Hmac(secret) => json!({"kty": "oct", "kid": self.kid, "k": b64(secret)}),
        }
    }

    /// A token with the usual header (`alg`, `typ`, `kid`).
    pub fn token(&self, claims: &Value) -> String {
        self.token_with_header(
            &json!({"alg": self.alg, "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A token with any header; signed with this key whatever the header says.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Rsa(k) => {
                let pad: &'static dyn signature::RsaEncoding = match self.alg.as_str() {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(pad, &rng, message, &mut sig).unwrap();
                sig
            }
            Inner::Ec(k) => k.sign(&rng, message).unwrap().as_ref().to_vec(),
            Inner::Ed(k) => k.sign(message).as_ref().to_vec(),
            Inner::Hmac(secret) => {
                let a = match self.alg.as_str() {
                    "HS256" => ring::hmac::HMAC_SHA256,
                    "HS384" => ring::hmac::HMAC_SHA384,
                    _ => ring::hmac::HMAC_SHA512,
                };
                ring::hmac::sign(&ring::hmac::Key::new(a, secret), message)
                    .as_ref()
                    .to_vec()
            }
        }
    }
}

/// A JWKS document with these keys.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Standard claims: `iss`, `aud`, `sub`, `iat`, `exp = now + 3600`, plus `extra`.
pub fn claims(iss: &str, aud: &str, sub: &str, now_s: u64, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "aud": aud, "sub": sub, "iat": now_s, "exp": now_s + 3600});
    if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
        m.extend(e);
    }
    c
}

/// Hex SHA-256, as API keys are configured.
pub fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
