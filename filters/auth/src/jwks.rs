//! JSON Web Key Sets: the public keys (or HMAC secrets) that verify a provider's tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        /// The key prepared for verification (RS* and PS*), once per JWKS parse; `None` for a
        /// key outside `ring`'s bounds, which every RSA algorithm then refuses.
        prepared: Option<crate::rsa::PublicKey>,
    },
    /// Uncompressed SEC1 point: `04 || x || y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
        /// The key prepared for verification (ES256 / ES384: the point's table of multiples),
        /// once per JWKS parse; `None` for a point not on the curve, which every signature then
        /// fails against.
        prepared: Option<crate::ecdsa::PublicKey>,
    },
    /// The encoded point (RFC 8032 §5.1.2).
    Ed25519 {
        x: Vec<u8>,
        /// The key prepared for verification (EdDSA: the point's table of multiples), once
        /// per JWKS parse; `None` for an encoding that is not a point, which every signature
        /// then fails against (as `ring` refuses such a key).
        prepared: Option<crate::ed25519::PublicKey>,
    },
    /// HMAC secret.
    Oct { k: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's `alg`, if the JWKS pins one; a token's `alg` must then equal it.
    pub alg: Option<String>,
    pub material: KeyMaterial,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses a JWKS document. Keys we cannot use (unknown `kty`/`crv`, `use` other than `sig`,
    /// bad encoding) are skipped; a document with no usable key is an error.
    pub fn parse(doc: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(doc).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no \"keys\" array")?;
        let keys: Vec<Jwk> = keys.iter().filter_map(parse_key).collect();
        if keys.is_empty() {
            return Err("JWKS has no usable key".to_string());
        }
        Ok(Self { keys })
    }
}

fn b64(v: &Value, field: &str) -> Option<Vec<u8>> {
    let s = v.get(field)?.as_str()?;
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn parse_key(v: &Value) -> Option<Jwk> {
    if v.get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let material = match v.get("kty")?.as_str()? {
        "RSA" => {
            let n = strip_zeros(b64(v, "n")?);
            let e = strip_zeros(b64(v, "e")?);
            let prepared = crate::rsa::PublicKey::new(&n, &e);
            KeyMaterial::Rsa { n, e, prepared }
        }
        "EC" => {
            let (curve, len) = match v.get("crv")?.as_str()? {
                "P-256" => (Curve::P256, 32),
                "P-384" => (Curve::P384, 48),
                _ => return None,
            };
            let (x, y) = (b64(v, "x")?, b64(v, "y")?);
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let prepared = crate::ecdsa::PublicKey::new(curve, &point);
            KeyMaterial::Ec {
                curve,
                point,
                prepared,
            }
        }
        "OKP" if v.get("crv")?.as_str()? == "Ed25519" => {
            let x = b64(v, "x")?;
            if x.len() != 32 {
                return None;
            }
            let prepared = crate::ed25519::PublicKey::new(&x);
            KeyMaterial::Ed25519 { x, prepared }
        }
        "oct" => {
            let k = b64(v, "k")?;
            if k.is_empty() {
                return None;
            }
            KeyMaterial::Oct { k }
        }
        _ => return None,
    };
    Some(Jwk {
        kid: v.get("kid").and_then(Value::as_str).map(str::to_string),
        alg: v.get("alg").and_then(Value::as_str).map(str::to_string),
        material,
    })
}

/// ring wants the minimal big-endian encoding.
fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros.min(bytes.len().saturating_sub(1)));
    bytes
}
