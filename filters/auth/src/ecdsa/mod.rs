//! ECDSA signature verification for ES256 (P-256, SHA-256) and ES384 (P-384, SHA-384), with a
//! table of multiples made once per key.
//!
//! `ring`'s P-256 verification costs ~14.5M wasm instructions and RustCrypto's P-384 ~93M: both
//! compute `u₁·G + u₂·Q` from scratch each time, with 256 (384) point doublings and generic
//! limb code. Here every point the sum can need is precomputed: a table of `j·2^(w·i)·G` (built
//! once per process, windows of 7 bits for P-256 and 6 for P-384) and a table of the key's point
//! `Q` (5-bit windows, built when the JWKS is parsed and kept with the key, as [`crate::rsa`]
//! keeps its Montgomery context). A verification recodes `u₁` and `u₂` into signed digits and
//! does one mixed addition per nonzero digit and no doubling at all: ~88 additions for P-256
//! where a double-and-add needs 256 doublings and ~50 additions.
//!
//! The field is Montgomery arithmetic on fixed-length `u32` limbs with `u64` accumulators (what
//! wasm32 multiplies natively), the products written out limb by limb so that the limbs live in
//! wasm locals. Both primes are `≡ −1 mod 2³²` and sparse (`p + 1` is four signed powers of
//! two), so a Montgomery reduction step is a few additions of the limb itself rather than a row
//! of multiplications; the moduli are compile-time constants of monomorphised code, one instance
//! per curve. `s⁻¹ mod n` is a binary extended Euclid, and the final check compares `x(R)` with
//! `r` (and `r + n`) in Jacobian coordinates, without an inversion.
//!
//! Measured with the wasmtime harness (`tests/tests/auth_wasm.rs`, fuel of a request whose token
//! is verified): ES256 1.24M wasm instructions (ring: 14.5M), ES384 3.5M (RustCrypto's `p384`:
//! 92.6M). Preparing a key costs about 16M (P-256) or 45M (P-384) when the JWKS is parsed, and
//! the generator's table about 45M / 80M once per process (61M and 124M in all at configure).
//!
//! Verification handles public data only (key, message, signature), so nothing here is
//! constant-time. What it must be is exact: `r` and `s` in `[1, n−1]`; the key on the curve
//! (checked when it is prepared: a key off the curve is never prepared, and every signature
//! against it fails); the exceptional cases of point addition (`P = ±Q`, infinity) computed, not
//! assumed away; the sum not the point at infinity; `x(R) mod n = r`. High-s signatures are
//! valid, as in `ring` and JWS. The signature is JWS's fixed-size `r ‖ s` (RFC 7518 §3.4); any
//! other length is invalid.

mod field;
mod point;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};

use ring::digest;

use crate::jwks::Curve as CurveId;
use field::{add_in_place, from_be, ge, is_zero, Limbs, Modulus};
use point::{Affine, Curve};

/// Hex (most significant digit first, exactly `8·L` digits) to limbs, at compile time.
const fn hex<const L: usize>(s: &str) -> Limbs<L> {
    let s = s.as_bytes();
    let mut out = [0u32; L];
    let mut i = 0;
    while i < 8 * L {
        let c = s[s.len() - 1 - i];
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0xff, // not hex: caught by the constant tests
        };
        out[i / 8] |= (v as u32 & 0xf) << (4 * (i % 8));
        i += 1;
    }
    out
}

/// `a·R mod m` at compile time: `32·L` modular doublings.
const fn const_to_mont<const L: usize>(a: Limbs<L>, m: &Modulus<L>) -> Limbs<L> {
    let mut r = a;
    let mut k = 0;
    while k < 32 * L {
        r = field::const_double_mod(&r, &m.m);
        k += 1;
    }
    r
}

/// NIST P-256 (secp256r1), FIPS 186-4 D.1.2.3.
pub struct P256;

const P256_P: Modulus<8> = Modulus::new(hex(
    "FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF",
));

impl Curve<8> for P256 {
    const P: Modulus<8> = P256_P;
    const N: Modulus<8> = Modulus::new(hex(
        "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551",
    ));
    const B: Limbs<8> = const_to_mont(
        hex("5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B"),
        &P256_P,
    );
    const G: Affine<8> = Affine {
        x: const_to_mont(
            hex("6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"),
            &P256_P,
        ),
        y: const_to_mont(
            hex("4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"),
            &P256_P,
        ),
    };
    // p + 1 = 2²⁵⁶ − 2²²⁴ + 2¹⁹² + 2⁹⁶.
    const P_TERMS: &'static [(usize, bool)] = &[(3, false), (6, false), (7, true), (8, false)];
    const BITS: usize = 256;
    const W_G: usize = 7;
    const W_Q: usize = 5;
}

/// NIST P-384 (secp384r1), FIPS 186-4 D.1.2.4.
pub struct P384;

const P384_P: Modulus<12> = Modulus::new(hex(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF",
));

impl Curve<12> for P384 {
    const P: Modulus<12> = P384_P;
    const N: Modulus<12> = Modulus::new(hex(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    ));
    const B: Limbs<12> = const_to_mont(
        hex("B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF"),
        &P384_P,
    );
    const G: Affine<12> = Affine {
        x: const_to_mont(
            hex("AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7"),
            &P384_P,
        ),
        y: const_to_mont(
            hex("3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F"),
            &P384_P,
        ),
    };
    // p + 1 = 2³⁸⁴ − 2¹²⁸ − 2⁹⁶ + 2³².
    const P_TERMS: &'static [(usize, bool)] = &[(1, false), (3, true), (4, true), (12, false)];
    const BITS: usize = 384;
    const W_G: usize = 6;
    const W_Q: usize = 5;
}

/// The generator's table, built on first use (the first EC key prepared, so at JWKS load) and
/// kept for the life of the process: 150 KB for P-256 (about 45M wasm instructions, once),
/// 200 KB for P-384 (about 80M). A window one bit wider saves a few additions per verification
/// and doubles the table: 7 bits for P-256 (ES256 is the common one), 6 for P-384 (larger
/// points, dearer to build). Empty only if building it failed, which cannot happen for the real
/// generator; an empty table fails every verification.
fn g_table_p256() -> &'static [Affine<8>] {
    static TABLE: OnceLock<Vec<Affine<8>>> = OnceLock::new();
    TABLE.get_or_init(|| point::table::<P256, 8>(&P256::G, P256::W_G).unwrap_or_default())
}

fn g_table_p384() -> &'static [Affine<12>] {
    static TABLE: OnceLock<Vec<Affine<12>>> = OnceLock::new();
    TABLE.get_or_init(|| point::table::<P384, 12>(&P384::G, P384::W_G).unwrap_or_default())
}

/// A public key ready for verification: its point's table.
#[derive(Clone)]
pub struct PublicKey {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    P256(Arc<Vec<Affine<8>>>),
    P384(Arc<Vec<Affine<12>>>),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let curve = match self.inner {
            Inner::P256(_) => "P-256",
            Inner::P384(_) => "P-384",
        };
        write!(f, "ecdsa::PublicKey({curve})")
    }
}

/// Two keys are equal if their points are (the first table entry is the point itself).
impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        match (&self.inner, &other.inner) {
            (Inner::P256(a), Inner::P256(b)) => a.first() == b.first(),
            (Inner::P384(a), Inner::P384(b)) => a.first() == b.first(),
            _ => false,
        }
    }
}

impl Eq for PublicKey {}

/// Keys prepared lately on this thread. A JWKS is parsed again at every refresh (and by each
/// worker that re-reads the shared copy), nearly always with the same keys, and a key's table
/// costs about 16M (P-256) to 45M (P-384) wasm instructions to build: the same point reuses
/// the same table. Bounded: past this many the oldest is dropped.
const PREPARED_KEYS: usize = 8;

type Prepared = (CurveId, Vec<u8>, PublicKey);

thread_local! {
    static PREPARED: RefCell<VecDeque<Prepared>> = const { RefCell::new(VecDeque::new()) };
}

impl PublicKey {
    /// The key of an uncompressed SEC1 point (`04 ‖ x ‖ y`) on `curve`; `None` if the encoding
    /// is wrong, a coordinate is not below p, or the point is not on the curve (then the key
    /// verifies nothing, as `ring` refuses such a key too). Builds the key's table (and, the
    /// first time, the generator's), the cost of about 13 verifications, paid at JWKS load,
    /// unless the same point was prepared lately on this thread.
    pub fn new(curve: CurveId, point: &[u8]) -> Option<Self> {
        let known = PREPARED.with(|cache| {
            cache
                .borrow()
                .iter()
                .find(|(c, p, _)| *c == curve && p == point)
                .map(|(_, _, key)| key.clone())
        });
        if known.is_some() {
            return known;
        }
        let key = Self::prepare(curve, point)?;
        PREPARED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= PREPARED_KEYS {
                cache.pop_front();
            }
            cache.push_back((curve, point.to_vec(), key.clone()));
        });
        Some(key)
    }

    fn prepare(curve: CurveId, point: &[u8]) -> Option<Self> {
        let inner = match curve {
            CurveId::P256 => {
                let q = parse_point::<P256, 8>(point)?;
                g_table_p256();
                Inner::P256(Arc::new(point::table::<P256, 8>(&q, P256::W_Q)?))
            }
            CurveId::P384 => {
                let q = parse_point::<P384, 12>(point)?;
                g_table_p384();
                Inner::P384(Arc::new(point::table::<P384, 12>(&q, P384::W_Q)?))
            }
        };
        Some(Self { inner })
    }

    /// Whether `sig` (`r ‖ s`) is a valid signature of `message`: ES256 for a P-256 key
    /// (SHA-256), ES384 for a P-384 key (SHA-384).
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.inner {
            Inner::P256(q) => {
                let h = digest::digest(&digest::SHA256, message);
                verify_digest::<P256, 8>(g_table_p256(), q, h.as_ref(), sig)
            }
            Inner::P384(q) => {
                let h = digest::digest(&digest::SHA384, message);
                verify_digest::<P384, 12>(g_table_p384(), q, h.as_ref(), sig)
            }
        }
    }
}

/// The group order n and the field prime p of `curve`, big-endian: edge values for tests that
/// alter signatures ([`crate::differential`]).
#[cfg(any(test, feature = "testkit"))]
pub fn order_and_prime(curve: CurveId) -> (Vec<u8>, Vec<u8>) {
    match curve {
        CurveId::P256 => (field::to_be(&P256::N.m), field::to_be(&P256::P.m)),
        CurveId::P384 => (field::to_be(&P384::N.m), field::to_be(&P384::P.m)),
    }
}

fn parse_point<C: Curve<L>, const L: usize>(point: &[u8]) -> Option<Affine<L>> {
    let (&tag, xy) = point.split_first()?;
    if tag != 4 || xy.len() != 8 * L {
        return None;
    }
    let (x, y) = xy.split_at(4 * L);
    let (x, y) = (from_be::<L>(x)?, from_be::<L>(y)?);
    if ge(&x, &C::P.m) || ge(&y, &C::P.m) {
        return None;
    }
    let a = Affine {
        x: C::P.mont_in(&x),
        y: C::P.mont_in(&y),
    };
    point::on_curve::<C, L>(&a).then_some(a)
}

/// A scalar in `[1, n−1]` from exactly `4·L` big-endian bytes.
fn scalar<C: Curve<L>, const L: usize>(be: &[u8]) -> Option<Limbs<L>> {
    let k = from_be::<L>(be)?;
    (!is_zero(&k) && !ge(&k, &C::N.m)).then_some(k)
}

/// ECDSA verification (SEC 1 §4.1.4) of a digest as long as the curve's scalars (SHA-256 for
/// P-256, SHA-384 for P-384: no truncation), against the tables of G and of the key.
fn verify_digest<C: Curve<L>, const L: usize>(
    g: &[Affine<L>],
    q: &[Affine<L>],
    digest: &[u8],
    sig: &[u8],
) -> bool {
    verify_inner::<C, L>(g, q, digest, sig).unwrap_or(false)
}

fn verify_inner<C: Curve<L>, const L: usize>(
    g: &[Affine<L>],
    q: &[Affine<L>],
    digest: &[u8],
    sig: &[u8],
) -> Option<bool> {
    if sig.len() != 8 * L {
        return Some(false);
    }
    let (r, s) = sig.split_at(4 * L);
    let (r, s) = (scalar::<C, L>(r)?, scalar::<C, L>(s)?);
    let (n, p) = (&C::N, &C::P);
    // e < 2^BITS < 2n: one subtraction reduces it.
    let mut e = from_be::<L>(digest)?;
    if ge(&e, &n.m) {
        field::sub_in_place(&mut e, &n.m);
    }
    // w = s⁻¹ (plain), taken into Montgomery form so that mul(x, w·R) = x·w mod n.
    let w = n.mont_in(&n.inv_vartime(&s)?);
    let u1 = n.mul(&e, &w);
    let u2 = n.mul(&r, &w);
    let d1 = point::recode::<C, L>(&u1, C::W_G)?;
    let d2 = point::recode::<C, L>(&u2, C::W_Q)?;
    let sum = point::multi_mul::<C, L>(&[(&d1, g, C::W_G), (&d2, q, C::W_Q)])?;
    if sum.is_infinity() {
        return Some(false);
    }
    // x(R) = X/Z² is in [0, p) and p < 2n, so x(R) mod n = r iff X = r·Z² or X = (r+n)·Z²
    // (the latter only if r + n < p).
    let z2 = C::sqr(&sum.z);
    if C::mul(&p.mont_in(&r), &z2) == sum.x {
        return Some(true);
    }
    let mut rn = r;
    if !add_in_place(&mut rn, &n.m) && !ge(&rn, &p.m) && C::mul(&p.mont_in(&rn), &z2) == sum.x {
        return Some(true);
    }
    Some(false)
}

#[cfg(test)]
mod tests;
