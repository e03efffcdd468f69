//! Ed25519 signature verification (RFC 8032 §5.1.7, JWS `EdDSA`), with a table of multiples
//! made once per key and one for the base point made once per process.
//!
//! `ring` costs about 2.09M wasm instructions per Ed25519 verification: it decompresses the
//! key, then computes `[k](−A) + [S]B` with a sliding window and 253 doublings. Here, as in
//! [`crate::ecdsa`], every point the sum can need is precomputed: a table of `j·2^(w·i)·B`
//! (6-bit windows, built on first use and kept for the process) and a table of the key's point
//! `A` (5-bit windows, built when the JWKS is parsed and kept with the key). A verification
//! recodes `S` and `k` into signed digits and does one mixed addition per nonzero digit (about
//! 90) and no doubling, then one inversion to encode the result.
//!
//! The field is radix 2^25.5 ([`field`]): ten limbs whose products fit `u64` sums, the product
//! written out as 100 multiplications so that the limbs stay in wasm locals.
//!
//! Measured with the wasmtime harness (`tests/tests/auth_wasm.rs`, fuel of a request whose token
//! is verified): EdDSA 0.80M wasm instructions (ring: 2.09M). Configuring a JWKS with one
//! Ed25519 key costs 24.9M, the key's table and, once per process, the base point's.
//!
//! Verdicts are `ring`'s (the differential tests in `tests.rs` decide), which are BoringSSL's:
//! the signature is exactly 64 bytes and the key 32; `S < L` (a non-canonical `S` is refused);
//! `A` must decode, where `y ≥ p` is taken mod p and `x = 0` with the sign bit set is accepted
//! (a key that does not decode is never prepared and verifies nothing); small-order keys and `R`
//! are not refused; `k = SHA-512(R ‖ A ‖ M) mod L` over the key's bytes as given; and the check
//! is cofactorless: the canonical encoding of `[S]B − [k]A` must equal `R` byte for byte (so a
//! non-canonical `R` never verifies). Verification handles public data only, so nothing here is
//! constant-time.

mod field;
mod point;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};

use ring::digest;

use point::{Extended, Niels};

/// Window of the base point's table: 43 windows of 32 points, 165 KB.
const W_B: usize = 6;
/// Window of a key's table: 51 windows of 16 points, 98 KB.
const W_A: usize = 5;

/// The group order L = 2²⁵² + 27742317777372353535851937790883648493, little-endian 64-bit
/// limbs.
const L: [u64; 4] = [
    0x5812_631a_5cf5_d3ed,
    0x14de_f9de_a2f7_9cd6,
    0,
    0x1000_0000_0000_0000,
];

/// The base point's encoding (y = 4/5, x even).
const B_ENCODED: [u8; 32] = {
    let mut b = [0x66u8; 32];
    b[0] = 0x58;
    b
};

/// The base point's table, built on first use (the first Ed25519 key prepared, so at JWKS
/// load) and kept for the life of the process. Empty only if the base point failed to decode,
/// which it cannot; an empty table fails every verification.
fn b_table() -> &'static [Niels] {
    static TABLE: OnceLock<Vec<Niels>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Extended::decode(&B_ENCODED)
            .map(|b| point::table(&b, W_B))
            .unwrap_or_default()
    })
}

/// A public key ready for verification: its encoding (hashed into `k`) and its table.
#[derive(Clone)]
pub struct PublicKey {
    encoded: [u8; 32],
    table: Arc<Vec<Niels>>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519::PublicKey({:02x?})", self.encoded)
    }
}

/// Two keys are equal if their encodings are.
impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}

impl Eq for PublicKey {}

/// Keys prepared lately on this thread: a JWKS is parsed again at every refresh, nearly always
/// with the same keys, and the same encoding reuses the same table. Bounded: past this many the
/// oldest is dropped.
const PREPARED_KEYS: usize = 8;

thread_local! {
    static PREPARED: RefCell<VecDeque<PublicKey>> = const { RefCell::new(VecDeque::new()) };
}

impl PublicKey {
    /// The key of a 32-byte encoded point; `None` if it is not 32 bytes or does not decode (then
    /// the key verifies nothing, as `ring` refuses such a key too). Builds the key's table (and,
    /// the first time, the base point's), paid at JWKS load, unless the same key was prepared
    /// lately on this thread.
    pub fn new(encoded: &[u8]) -> Option<Self> {
        let encoded: [u8; 32] = encoded.try_into().ok()?;
        let known = PREPARED.with(|cache| {
            cache
                .borrow()
                .iter()
                .find(|k| k.encoded == encoded)
                .cloned()
        });
        if known.is_some() {
            return known;
        }
        let key = Self::prepare(encoded)?;
        PREPARED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= PREPARED_KEYS {
                cache.pop_front();
            }
            cache.push_back(key.clone());
        });
        Some(key)
    }

    fn prepare(encoded: [u8; 32]) -> Option<Self> {
        let a = Extended::decode(&encoded)?;
        b_table();
        Some(Self {
            encoded,
            table: Arc::new(point::table(&a, W_A)),
        })
    }

    /// Whether `sig` (`R ‖ S`, 64 bytes) is a valid Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        self.verify_inner(message, sig).unwrap_or(false)
    }

    fn verify_inner(&self, message: &[u8], sig: &[u8]) -> Option<bool> {
        let sig: &[u8; 64] = sig.try_into().ok()?;
        let (r, s) = sig.split_at(32);
        let s: [u8; 32] = s.try_into().ok()?;
        if !below_l(&s) {
            return Some(false);
        }
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(r);
        ctx.update(&self.encoded);
        ctx.update(message);
        let h: [u8; 64] = ctx.finish().as_ref().try_into().ok()?;
        let k = reduce_wide(&h);
        let ds = point::recode(&s, W_B);
        let dk = point::recode(&k, W_A);
        let sum = point::multi_mul(&[(&ds, b_table(), W_B, false), (&dk, &self.table, W_A, true)])?;
        Some(sum.encode() == *r)
    }
}

/// The group order L, little-endian: an edge value for tests that alter signatures
/// ([`crate::differential`]).
#[cfg(any(test, feature = "testkit"))]
pub fn order_le() -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_exact_mut(8).zip(L) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

/// Whether a little-endian 32-byte scalar is below L.
fn below_l(s: &[u8; 32]) -> bool {
    let limbs = to_u64s(s);
    for i in (0..4).rev() {
        if limbs[i] != L[i] {
            return limbs[i] < L[i];
        }
    }
    false
}

fn to_u64s(s: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (o, chunk) in out.iter_mut().zip(s.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *o = u64::from_le_bytes(b);
    }
    out
}

/// A 64-byte little-endian number mod L, by binary long division: the remainder stays below
/// 2L < 2²⁵⁴, so each step is a shift and at most one subtraction.
fn reduce_wide(h: &[u8; 64]) -> [u8; 32] {
    let mut r = [0u64; 4];
    for i in (0..512).rev() {
        let bit = u64::from((h[i / 8] >> (i % 8)) & 1);
        r = [
            (r[0] << 1) | bit,
            (r[1] << 1) | (r[0] >> 63),
            (r[2] << 1) | (r[1] >> 63),
            (r[3] << 1) | (r[2] >> 63),
        ];
        if r[3] >= L[3] && !lt(&r, &L) {
            let mut borrow = 0u64;
            for (ri, li) in r.iter_mut().zip(L) {
                let (d, b1) = ri.overflowing_sub(li);
                let (d, b2) = d.overflowing_sub(borrow);
                *ri = d;
                borrow = u64::from(b1 | b2);
            }
        }
    }
    let mut out = [0u8; 32];
    for (chunk, ri) in out.chunks_exact_mut(8).zip(r) {
        chunk.copy_from_slice(&ri.to_le_bytes());
    }
    out
}

fn lt(a: &[u64; 4], b: &[u64; 4]) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

#[cfg(test)]
mod tests;
