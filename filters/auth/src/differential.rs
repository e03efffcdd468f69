//! Nexus's ECDSA ([`crate::ecdsa`]) and Ed25519 ([`crate::ed25519`]) verifiers against `ring`
//! on arbitrary inputs: the oracle of the fuzz target (`fuzz/fuzz_targets/verifiers.rs`) and of
//! a bounded property test that runs in the normal `cargo test`. A verifier that accepts what
//! `ring` refuses forges identities, one that refuses what `ring` accepts locks callers out:
//! every disagreement is a bug.
//!
//! Random bytes almost never make a valid signature, so the input chooses a scheme (P-256,
//! P-384, Ed25519) and one of three shapes:
//! - **raw**: key, message and signature all taken from the input (key decoding, point and
//!   range checks, lengths);
//! - **pool key, arbitrary signature**: a real key and `r ‖ s` (or `R ‖ S`) from the input;
//! - **signed, then altered**: a real key's valid signature of an input message, then up to
//!   two alterations the input picks: a byte of the signature, message or key flipped, a half
//!   of the signature replaced by an edge value (0, 1, n − 1, n, n + 1, p − 1, p, all ones, the
//!   half plus n, n minus the half), the signature cut or lengthened.
//!
//! ECDSA pool keys are made once per process (`ring` makes ECDSA keys only from randomness)
//! and `ring`'s ECDSA signing draws a random nonce, so the signed shape of an ECDSA case is
//! not byte-for-byte repeatable; the raw and arbitrary-signature shapes are. Ed25519 keys come
//! from a seed in the input, and its signatures are deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::jwks::Curve;
use crate::{ecdsa, ed25519};

/// The signature schemes compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Es256,
    Es384,
    Ed25519,
}

/// One comparison: a public key's bytes as a JWKS carries them (SEC1 uncompressed point, or
/// Ed25519's 32 bytes), a message and a signature.
#[derive(Debug, Clone)]
pub struct Case {
    pub scheme: Scheme,
    pub key: Vec<u8>,
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Both verdicts on one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdicts {
    pub nexus: bool,
    pub ring: bool,
}

/// ECDSA keys per curve in the pool.
const POOL: usize = 4;

/// Reads the fuzz input front to back; past its end every byte is 0, so any input decodes.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    /// Up to `max` bytes, as many as the next byte says.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.byte()) % (max + 1);
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken.to_vec()
    }

    /// Exactly `n` bytes, zero-padded past the input's end.
    fn exactly(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The case an input describes (see the module documentation).
pub fn case(data: &[u8]) -> Case {
    let mut input = Input(data);
    let scheme = match input.byte() % 3 {
        0 => Scheme::Es256,
        1 => Scheme::Es384,
        _ => Scheme::Ed25519,
    };
    let (key_len, sig_len) = lengths(scheme);
    match input.byte() % 3 {
        0 => {
            let mut key = input.exactly(key_len);
            // Half the raw EC keys carry the uncompressed tag, so decoding goes on to the
            // coordinates and the curve equation.
            if scheme != Scheme::Ed25519 && input.byte() % 2 == 0 {
                key[0] = 4;
            }
            let message = input.bytes(64);
            let signature = input.exactly(sig_len);
            Case {
                scheme,
                key,
                message,
                signature,
            }
        }
        1 => {
            let key = pool_key(scheme, &mut input);
            let message = input.bytes(64);
            let signature = input.exactly(sig_len);
            Case {
                scheme,
                key: key.public,
                message,
                signature,
            }
        }
        _ => signed_then_altered(scheme, &mut input),
    }
}

/// (public key bytes, signature bytes) of a scheme.
fn lengths(scheme: Scheme) -> (usize, usize) {
    match scheme {
        Scheme::Es256 => (65, 64),
        Scheme::Es384 => (97, 96),
        Scheme::Ed25519 => (32, 64),
    }
}

/// Verifies `case` with both verifiers.
pub fn verdicts(case: &Case) -> Verdicts {
    let Case {
        key,
        message,
        signature: sig,
        ..
    } = case;
    let (nexus, algorithm): (bool, &dyn signature::VerificationAlgorithm) = match case.scheme {
        Scheme::Es256 => (
            ecdsa::PublicKey::new(Curve::P256, key).is_some_and(|k| k.verify(message, sig)),
            &signature::ECDSA_P256_SHA256_FIXED,
        ),
        Scheme::Es384 => (
            ecdsa::PublicKey::new(Curve::P384, key).is_some_and(|k| k.verify(message, sig)),
            &signature::ECDSA_P384_SHA384_FIXED,
        ),
        Scheme::Ed25519 => (
            ed25519::PublicKey::new(key).is_some_and(|k| k.verify(message, sig)),
            &signature::ED25519,
        ),
    };
    let ring = UnparsedPublicKey::new(algorithm, key)
        .verify(message, sig)
        .is_ok();
    Verdicts { nexus, ring }
}

/// A key that can sign: its public bytes and a signer.
struct PoolKey {
    public: Vec<u8>,
    signer: Signer,
}

enum Signer {
    Ecdsa(&'static EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl PoolKey {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Ecdsa(k) => k
                .sign(&SystemRandom::new(), message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Signer::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

fn pool_key(scheme: Scheme, input: &mut Input) -> PoolKey {
    if scheme == Scheme::Ed25519 {
        let seed = input.exactly(32);
        let k = Ed25519KeyPair::from_seed_unchecked(&seed).expect("32-byte seed");
        return PoolKey {
            public: k.public_key().as_ref().to_vec(),
            signer: Signer::Ed25519(k),
        };
    }
    let pool = ecdsa_pool(scheme);
    let k = &pool[usize::from(input.byte()) % pool.len()];
    PoolKey {
        public: k.public_key().as_ref().to_vec(),
        signer: Signer::Ecdsa(k),
    }
}

/// ECDSA keys of `scheme`'s curve, made on first use.
fn ecdsa_pool(scheme: Scheme) -> &'static [EcdsaKeyPair] {
    static P256: OnceLock<Vec<EcdsaKeyPair>> = OnceLock::new();
    static P384: OnceLock<Vec<EcdsaKeyPair>> = OnceLock::new();
    let (pool, alg) = match scheme {
        Scheme::Es384 => (&P384, &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => (&P256, &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
    };
    pool.get_or_init(|| {
        let rng = SystemRandom::new();
        (0..POOL)
            .map(|_| {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key generation");
                EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("generated key")
            })
            .collect()
    })
}

fn signed_then_altered(scheme: Scheme, input: &mut Input) -> Case {
    let key = pool_key(scheme, input);
    let mut case = Case {
        scheme,
        key: key.public.clone(),
        message: input.bytes(64),
        signature: Vec::new(),
    };
    case.signature = key.sign(&case.message);
    let alterations = input.byte() % 3;
    for _ in 0..alterations {
        alter(&mut case, input);
    }
    case
}

/// One alteration of a signed case, as the input picks.
fn alter(case: &mut Case, input: &mut Input) {
    let (kind, at, with) = (input.byte() % 4, usize::from(input.byte()), input.byte());
    let flip = |bytes: &mut Vec<u8>| {
        if let Some(len) = std::num::NonZeroUsize::new(bytes.len()) {
            bytes[at % len] ^= with.max(1);
        }
    };
    match kind {
        0 => flip(&mut case.signature),
        1 if with % 2 == 0 => flip(&mut case.message),
        1 => flip(&mut case.key),
        2 => replace_half(case, at % 2 == 0, with),
        _ if with % 2 == 0 => case
            .signature
            .truncate(case.signature.len().saturating_sub(1)),
        _ => case.signature.push(with),
    }
}

/// Edge values [`replace_half`] knows.
const EDGES: u8 = 10;

/// Replaces `r` (`R` for Ed25519) or `s` (`S`) with an edge value: the values a verifier's
/// range checks and reductions must get exactly right.
fn replace_half(case: &mut Case, first: bool, which: u8) {
    let half = lengths(case.scheme).1 / 2;
    if case.signature.len() != 2 * half {
        return;
    }
    // Ed25519's halves, L and p are little-endian: the edges are made big-endian, then turned.
    let little = case.scheme == Scheme::Ed25519;
    let (order, prime) = match case.scheme {
        Scheme::Es256 => ecdsa::order_and_prime(Curve::P256),
        Scheme::Es384 => ecdsa::order_and_prime(Curve::P384),
        Scheme::Ed25519 => {
            // p = 2²⁵⁵ − 19.
            let mut p = vec![0xffu8; 32];
            p[0] = 0x7f;
            p[31] = 0xed;
            let mut l = ed25519::order_le().to_vec();
            l.reverse();
            (l, p)
        }
    };
    let range = if first { 0..half } else { half..2 * half };
    let mut current = case.signature[range.clone()].to_vec();
    if little {
        current.reverse();
    }
    let mut edge = match which % EDGES {
        0 => vec![0; half],
        1 => be_add(&vec![0; half], &[1]),
        2 => be_sub(&order, &[1]),
        3 => order,
        4 => be_add(&order, &[1]),
        5 => prime,
        6 => be_sub(&prime, &[1]),
        7 => vec![0xff; half],
        8 => be_add(&current, &order),
        // n − s: ECDSA's other valid s (high-s is valid, as in ring and JWS).
        _ => be_sub(&order, &current),
    };
    if little {
        edge.reverse();
    }
    case.signature[range].copy_from_slice(&edge);
}

/// `a + b` on big-endian byte strings, as long as `a` (wrapping; `b` aligned to the right).
fn be_add(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    let mut carry = 0u16;
    for i in 0..out.len() {
        let j = out.len() - 1 - i;
        let bi = b.len().checked_sub(1 + i).map_or(0, |k| b[k]);
        let sum = u16::from(out[j]) + u16::from(bi) + carry;
        out[j] = sum as u8;
        carry = sum >> 8;
    }
    out
}

/// `a − b` on big-endian byte strings, as long as `a` (wrapping).
fn be_sub(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    let mut borrow = 0i16;
    for i in 0..out.len() {
        let j = out.len() - 1 - i;
        let bi = b.len().checked_sub(1 + i).map_or(0, |k| b[k]);
        let d = i16::from(out[j]) - i16::from(bi) - borrow;
        out[j] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use ring::rand::SecureRandom;

    use super::*;

    /// splitmix64: arbitrary bytes from a seed, so a failure names the seed that repeats it.
    struct Bytes(u64);

    impl Bytes {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn input(&mut self) -> Vec<u8> {
            let len = (self.next() % 400) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// A bounded run of the fuzz target's oracle on arbitrary inputs: every verdict agrees,
    /// and each scheme met valid signatures, refused ones and refused keys (the inputs reach
    /// past decoding).
    #[test]
    fn verifiers_agree_with_ring_on_arbitrary_inputs() {
        let mut seed = [0u8; 8];
        SystemRandom::new().fill(&mut seed).unwrap();
        let seed = u64::from_le_bytes(seed);
        let mut bytes = Bytes(seed);
        let mut valid = [0usize; 3];
        let mut invalid = [0usize; 3];
        const CASES: usize = 3000;
        for i in 0..CASES {
            let input = bytes.input();
            let c = case(&input);
            let v = verdicts(&c);
            assert_eq!(
                v.nexus, v.ring,
                "seed {seed:#x}, case {i}: nexus {}, ring {}: {c:?}",
                v.nexus, v.ring
            );
            let s = c.scheme as usize;
            if v.ring {
                valid[s] += 1;
            } else {
                invalid[s] += 1;
            }
        }
        eprintln!("seed {seed:#x}: valid {valid:?}, invalid {invalid:?} (P-256, P-384, Ed25519)");
        // About a third of the inputs of each scheme are signed, most of those kept valid or
        // altered in a way that keeps them valid (an alteration count of zero).
        for s in 0..3 {
            assert!(
                valid[s] >= CASES / 3 / 30 && invalid[s] >= CASES / 3 / 2,
                "seed {seed:#x}: scheme {s}: {} valid, {} invalid",
                valid[s],
                invalid[s]
            );
        }
    }

    /// An input for a signed case of `scheme` (0, 1, 2) with the given alterations, each
    /// `[kind, at, with]`.
    fn signed(scheme: u8, message: &[u8], alterations: &[[u8; 3]]) -> Vec<u8> {
        let mut input = vec![scheme, 2];
        input.extend(std::iter::repeat_n(7u8, if scheme == 2 { 32 } else { 1 }));
        input.push(u8::try_from(message.len()).unwrap());
        input.extend(message);
        input.push(u8::try_from(alterations.len()).unwrap());
        input.extend(alterations.iter().flatten());
        input
    }

    /// Every edge value in either half of a signature, on each scheme, and each with one byte
    /// flipped: verdicts agree, and some of them (n − s, the high-s twin) are valid.
    #[test]
    fn every_edge_value_agrees() {
        let mut valid = 0;
        for scheme in 0..3u8 {
            for edge in 0..EDGES {
                for half in 0..2u8 {
                    for extra in [None, Some([0u8, 40, 1])] {
                        let mut alterations = vec![[2, half, edge]];
                        alterations.extend(extra);
                        let c = case(&signed(scheme, b"edge", &alterations));
                        let v = verdicts(&c);
                        assert_eq!(v.nexus, v.ring, "edge {edge}, half {half}: {c:?}");
                        valid += usize::from(v.ring);
                    }
                }
            }
        }
        // n − s for P-256 and P-384 (s only; r = n − r is not a valid r).
        assert_eq!(valid, 2);
    }

    /// The input layout: a signed case with no alteration verifies; the same with its
    /// signature's first byte flipped does not; a raw case of zeros is refused by both.
    #[test]
    fn inputs_decode_as_documented() {
        for scheme in 0..3u8 {
            let c = case(&signed(scheme, b"abc", &[]));
            assert_eq!(c.message, b"abc");
            assert_eq!(
                verdicts(&c),
                Verdicts {
                    nexus: true,
                    ring: true
                }
            );
            // One alteration: kind 0 (flip the signature), at 0, with 0x80.
            let c = case(&signed(scheme, b"abc", &[[0, 0, 0x80]]));
            assert_eq!(
                verdicts(&c),
                Verdicts {
                    nexus: false,
                    ring: false
                }
            );
            let raw = case(&[scheme, 0]);
            assert_eq!(
                verdicts(&raw),
                Verdicts {
                    nexus: false,
                    ring: false
                }
            );
        }
    }
}
