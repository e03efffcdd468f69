//! JWS algorithms and signature verification, behind [`SignatureVerifier`] so a faster
//! implementation can slot in. The default, [`RingVerifier`], uses `ring` for HMAC and the
//! crate's own verifiers for RSA ([`crate::rsa`]), ECDSA ([`crate::ecdsa`]) and Ed25519
//! ([`crate::ed25519`]).

use crate::jwks::{Curve, KeyMaterial};
use crate::rsa;

/// The JWS algorithms nexus-auth accepts. `none` is not one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
    Hs256,
    Hs384,
    Hs512,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
        }
    }

    /// Whether a key of this type may verify this algorithm: what stops algorithm confusion
    /// (an HMAC token "signed" with an RSA public key, an RS256 token against an EC key).
    pub fn fits(self, key: &KeyMaterial) -> bool {
        matches!(
            (self, key),
            (
                Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512,
                KeyMaterial::Rsa { .. }
            ) | (
                Self::Es256,
                KeyMaterial::Ec {
                    curve: Curve::P256,
                    ..
                }
            ) | (
                Self::Es384,
                KeyMaterial::Ec {
                    curve: Curve::P384,
                    ..
                }
            ) | (Self::EdDsa, KeyMaterial::Ed25519 { .. })
                | (
                    Self::Hs256 | Self::Hs384 | Self::Hs512,
                    KeyMaterial::Oct { .. }
                )
        )
    }
}

/// Checks one signature. Implementations must be constant-time where it matters (HMAC).
pub trait SignatureVerifier {
    /// True only if `signature` is `alg`'s valid signature of `message` under `key`; callers have
    /// checked `alg.fits(key)`, implementations check it again.
    fn verify(&self, alg: Alg, key: &KeyMaterial, message: &[u8], signature: &[u8]) -> bool;
}

/// `ring` for HMAC (constant-time comparison). RSA (RS* and PS*) uses
/// [`rsa`], whose per-key Montgomery context makes an RSA-2048 check well under half the wasm
/// instructions of `ring`'s, which rebuilds the context per call and multiplies through a
/// generic limb routine (≈ 8.9M instructions, 245 µs in V8). ES256 and ES384 use [`crate::ecdsa`],
/// whose per-key table of multiples replaces the doublings of a scalar multiplication
/// (ring's P-256 costs 14.5M wasm instructions per verification, RustCrypto's P-384 93M).
/// EdDSA uses [`crate::ed25519`], tables of the key and of the base point likewise (ring's
/// Ed25519 costs 2.09M).
#[derive(Debug, Default, Clone, Copy)]
pub struct RingVerifier;

impl SignatureVerifier for RingVerifier {
    fn verify(&self, alg: Alg, key: &KeyMaterial, message: &[u8], sig: &[u8]) -> bool {
        if !alg.fits(key) {
            return false;
        }
        match key {
            // A key outside `ring`'s bounds (2048-8192 bits, odd modulus and exponent) was not
            // prepared when the JWKS was parsed; `ring` refuses such keys too.
            KeyMaterial::Rsa { prepared, .. } => match (prepared, alg) {
                (None, _) => false,
                (Some(key), Alg::Rs256) => key.verify(rsa::Hash::Sha256, message, sig),
                (Some(key), Alg::Rs384) => key.verify(rsa::Hash::Sha384, message, sig),
                (Some(key), Alg::Rs512) => key.verify(rsa::Hash::Sha512, message, sig),
                (Some(key), Alg::Ps256) => key.verify_pss(rsa::Hash::Sha256, message, sig),
                (Some(key), Alg::Ps384) => key.verify_pss(rsa::Hash::Sha384, message, sig),
                (Some(key), Alg::Ps512) => key.verify_pss(rsa::Hash::Sha512, message, sig),
                (Some(_), _) => false,
            },
            // ES256 and ES384 are decided entirely by `crate::ecdsa` with the key's table; a point
            // off the curve was not prepared (ring refuses such a key too). `alg.fits` has
            // already paired ES256 with P-256 and ES384 with P-384, and the key's curve picks
            // the hash.
            KeyMaterial::Ec { prepared, .. } => prepared
                .as_ref()
                .is_some_and(|key| key.verify(message, sig)),
            // EdDSA is decided by `crate::ed25519` with the key's table; an encoding that is not
            // a point was not prepared (ring refuses such a key too).
            KeyMaterial::Ed25519 { prepared, .. } => prepared
                .as_ref()
                .is_some_and(|key| key.verify(message, sig)),
            KeyMaterial::Oct { k } => {
                let algorithm = match alg {
                    Alg::Hs256 => ring::hmac::HMAC_SHA256,
                    Alg::Hs384 => ring::hmac::HMAC_SHA384,
                    Alg::Hs512 => ring::hmac::HMAC_SHA512,
                    _ => return false,
                };
                ring::hmac::verify(&ring::hmac::Key::new(algorithm, k), message, sig).is_ok()
            }
        }
    }
}
