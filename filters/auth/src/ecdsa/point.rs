//! Points of a short Weierstrass curve `y² = x³ − 3x + b` over a prime field: affine points for
//! the precomputed tables, Jacobian ones (`x = X/Z²`, `y = Y/Z³`, infinity as `Z = 0`) for the
//! running sum, and the tables themselves.
//!
//! A table holds `j · 2^(w·i) · P` for every window `i` and `j` in `1..=2^(w−1)`, affine. With
//! the scalar recoded into signed base-`2^w` digits, `k·P` is one mixed addition per nonzero
//! digit and no doubling at all: the doublings were paid once, when the table was built.

use super::field::{is_zero, Limbs, Modulus};

/// A curve's constants; implemented by a zero-sized type per curve so that every modulus is a
/// compile-time constant in the monomorphised arithmetic.
pub trait Curve<const L: usize> {
    /// The field prime p.
    const P: Modulus<L>;
    /// The group order n (prime; the cofactor is 1).
    const N: Modulus<L>;
    /// `b`, in Montgomery form.
    const B: Limbs<L>;
    /// The generator, affine, in Montgomery form.
    const G: Affine<L>;
    /// `p + 1 = Σ ±2^(32·off)`: `(off, negative)` for each term (see
    /// [`super::field::mul_sparse`]).
    const P_TERMS: &'static [(usize, bool)];
    /// Bits of a field element / scalar (also the bytes of a coordinate, times 8).
    const BITS: usize;
    /// Window width of the generator's table (built once per process, so wide: fewer
    /// additions per verification).
    const W_G: usize;
    /// Window width of a key's table (built per key at JWKS load).
    const W_Q: usize;

    // Field operations, one instance per curve: inside them the modulus is a constant (folded
    // into the unrolled loops), and the point formulas call them rather than inlining a copy
    // of the product loops at every use.
    #[inline(never)]
    fn mul(a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        super::field::mul_sparse(a, b, &Self::P.m, Self::P_TERMS)
    }
    #[inline(never)]
    fn sqr(a: &Limbs<L>) -> Limbs<L> {
        super::field::sqr_sparse(a, &Self::P.m, Self::P_TERMS)
    }
    fn add(a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        Self::P.add(a, b)
    }
    fn sub(a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        Self::P.sub(a, b)
    }
}

/// An affine point, coordinates in Montgomery form. Never the point at infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affine<const L: usize> {
    pub x: Limbs<L>,
    pub y: Limbs<L>,
}

/// A Jacobian point, coordinates in Montgomery form; `z = 0` is the point at infinity.
#[derive(Debug, Clone, Copy)]
pub struct Jacobian<const L: usize> {
    pub x: Limbs<L>,
    pub y: Limbs<L>,
    pub z: Limbs<L>,
}

impl<const L: usize> Jacobian<L> {
    pub fn infinity() -> Self {
        Self {
            x: [0; L],
            y: [0; L],
            z: [0; L],
        }
    }

    pub fn is_infinity(&self) -> bool {
        is_zero(&self.z)
    }

    fn from_affine<C: Curve<L>>(a: &Affine<L>) -> Self {
        Self {
            x: a.x,
            y: a.y,
            z: C::P.one,
        }
    }
}

/// Whether `(x, y)` (Montgomery form) satisfies `y² = x³ − 3x + b`.
pub fn on_curve<C: Curve<L>, const L: usize>(a: &Affine<L>) -> bool {
    let x2 = C::sqr(&a.x);
    let x3 = C::mul(&x2, &a.x);
    let three_x = C::add(&C::add(&a.x, &a.x), &a.x);
    let rhs = C::add(&C::sub(&x3, &three_x), &C::B);
    C::sqr(&a.y) == rhs
}

pub fn negate<C: Curve<L>, const L: usize>(a: &Affine<L>) -> Affine<L> {
    Affine {
        x: a.x,
        y: C::P.sub(&[0; L], &a.y),
    }
}

/// `2·p`, "dbl-2001-b" (a = −3): 3M + 5S.
pub fn double<C: Curve<L>, const L: usize>(p: &Jacobian<L>) -> Jacobian<L> {
    if p.is_infinity() || is_zero(&p.y) {
        return Jacobian::infinity();
    }
    let delta = C::sqr(&p.z);
    let gamma = C::sqr(&p.y);
    let beta = C::mul(&p.x, &gamma);
    let t = C::mul(&C::sub(&p.x, &delta), &C::add(&p.x, &delta));
    let alpha = C::add(&C::add(&t, &t), &t);
    let beta2 = C::add(&beta, &beta);
    let beta4 = C::add(&beta2, &beta2);
    let beta8 = C::add(&beta4, &beta4);
    let x3 = C::sub(&C::sqr(&alpha), &beta8);
    let yz = C::add(&p.y, &p.z);
    let z3 = C::sub(&C::sub(&C::sqr(&yz), &gamma), &delta);
    let gamma2 = C::sqr(&gamma);
    let g2 = C::add(&gamma2, &gamma2);
    let g4 = C::add(&g2, &g2);
    let g8 = C::add(&g4, &g4);
    let y3 = C::sub(&C::mul(&alpha, &C::sub(&beta4, &x3)), &g8);
    Jacobian {
        x: x3,
        y: y3,
        z: z3,
    }
}

/// `p + q`, `q` affine: 8M + 3S, with the exceptional cases (`p` at infinity, `p = ±q`) decided
/// exactly rather than assumed away: a wrong sum here would be a wrong verdict.
pub fn add_mixed<C: Curve<L>, const L: usize>(p: &Jacobian<L>, q: &Affine<L>) -> Jacobian<L> {
    if p.is_infinity() {
        return Jacobian::from_affine::<C>(q);
    }
    let z2 = C::sqr(&p.z);
    let u2 = C::mul(&q.x, &z2);
    let s2 = C::mul(&q.y, &C::mul(&z2, &p.z));
    let h = C::sub(&u2, &p.x);
    let r = C::sub(&s2, &p.y);
    if is_zero(&h) {
        // Same x: either the same point (double it) or its negation (the sum is infinity).
        return if is_zero(&r) {
            double::<C, L>(p)
        } else {
            Jacobian::infinity()
        };
    }
    let h2 = C::sqr(&h);
    let h3 = C::mul(&h2, &h);
    let v = C::mul(&p.x, &h2);
    let x3 = C::sub(&C::sub(&C::sqr(&r), &h3), &C::add(&v, &v));
    let y3 = C::sub(&C::mul(&r, &C::sub(&v, &x3)), &C::mul(&p.y, &h3));
    let z3 = C::mul(&p.z, &h);
    Jacobian {
        x: x3,
        y: y3,
        z: z3,
    }
}

/// `p + q`, both Jacobian: 12M + 4S (only used to build tables), exceptional cases exact.
pub fn add<C: Curve<L>, const L: usize>(p: &Jacobian<L>, q: &Jacobian<L>) -> Jacobian<L> {
    if p.is_infinity() {
        return *q;
    }
    if q.is_infinity() {
        return *p;
    }
    let z1z1 = C::sqr(&p.z);
    let z2z2 = C::sqr(&q.z);
    let u1 = C::mul(&p.x, &z2z2);
    let u2 = C::mul(&q.x, &z1z1);
    let s1 = C::mul(&p.y, &C::mul(&q.z, &z2z2));
    let s2 = C::mul(&q.y, &C::mul(&p.z, &z1z1));
    let h = C::sub(&u2, &u1);
    let r = C::sub(&s2, &s1);
    if is_zero(&h) {
        return if is_zero(&r) {
            double::<C, L>(p)
        } else {
            Jacobian::infinity()
        };
    }
    let h2 = C::sqr(&h);
    let h3 = C::mul(&h2, &h);
    let v = C::mul(&u1, &h2);
    let x3 = C::sub(&C::sub(&C::sqr(&r), &h3), &C::add(&v, &v));
    let y3 = C::sub(&C::mul(&r, &C::sub(&v, &x3)), &C::mul(&s1, &h3));
    let z3 = C::mul(&C::mul(&p.z, &q.z), &h);
    Jacobian {
        x: x3,
        y: y3,
        z: z3,
    }
}

/// Jacobian points to affine with one field inversion (Montgomery's trick); `None` if any is
/// the point at infinity.
pub fn to_affine_batch<C: Curve<L>, const L: usize>(
    points: &[Jacobian<L>],
) -> Option<Vec<Affine<L>>> {
    // prefix[i] = z₀·z₁·…·zᵢ
    let mut prefix = Vec::with_capacity(points.len());
    let mut acc = C::P.one;
    for p in points {
        if p.is_infinity() {
            return None;
        }
        acc = C::mul(&acc, &p.z);
        prefix.push(acc);
    }
    let mut inv = C::P.inv_mont(&acc)?;
    let mut out = vec![
        Affine {
            x: [0; L],
            y: [0; L]
        };
        points.len()
    ];
    for i in (0..points.len()).rev() {
        let (p, slot) = (points.get(i)?, out.get_mut(i)?);
        // inv = (z₀…zᵢ)⁻¹ here; zᵢ⁻¹ = inv · (z₀…zᵢ₋₁).
        let zinv = match i.checked_sub(1) {
            Some(j) => C::mul(&inv, prefix.get(j)?),
            None => inv,
        };
        inv = C::mul(&inv, &p.z);
        let zinv2 = C::sqr(&zinv);
        slot.x = C::mul(&p.x, &zinv2);
        slot.y = C::mul(&p.y, &C::mul(&zinv2, &zinv));
    }
    Some(out)
}

/// Signed digits of a scalar of `bits` bits in windows of `w` bits: `⌈(bits + 1) / w⌉`, one more
/// bit than the scalar so that the recoding never carries out.
pub const fn windows(bits: usize, w: usize) -> usize {
    (bits + 1).div_ceil(w)
}

/// The table of `base` for windows of `w` bits: `windows × 2^(w−1)` affine points,
/// `j·2^(w·i)·base` at index `i·2^(w−1) + j − 1`. `None` if a multiple is the point at infinity
/// (not for a point of prime order n: every multiple here is below n times a power of two, n
/// odd).
pub fn table<C: Curve<L>, const L: usize>(base: &Affine<L>, w: usize) -> Option<Vec<Affine<L>>> {
    let per_window = 1usize << (w - 1);
    let mut jac = Vec::with_capacity(windows(C::BITS, w) * per_window);
    let mut b = Jacobian::from_affine::<C>(base);
    for _ in 0..windows(C::BITS, w) {
        let start = jac.len();
        jac.push(b);
        let mut cur = b;
        for j in 2..=per_window {
            // Even multiples by doubling half of them (8 products), odd ones by adding b (16).
            cur = if j % 2 == 0 {
                double::<C, L>(jac.get(start + j / 2 - 1)?)
            } else {
                add::<C, L>(&cur, &b)
            };
            jac.push(cur);
        }
        // 2^w·b = 2 · (2^(w−1)·b).
        b = double::<C, L>(&cur);
    }
    to_affine_batch::<C, L>(&jac)
}

/// `k` as signed digits in `[−(2^(w−1) − 1), 2^(w−1)]`, `k = Σ dᵢ·2^(w·i)`; `None` if `k` does
/// not fit (it always fits for `k < 2^BITS`).
pub fn recode<C: Curve<L>, const L: usize>(k: &Limbs<L>, w: usize) -> Option<Vec<i32>> {
    let full = 1i32 << w;
    let half = 1i32 << (w - 1);
    let mut digits = Vec::with_capacity(windows(C::BITS, w));
    let mut carry = 0i32;
    for i in 0..windows(C::BITS, w) {
        let v = bits(k, i * w, w) as i32 + carry;
        if v > half {
            digits.push(v - full);
            carry = 1;
        } else {
            digits.push(v);
            carry = 0;
        }
    }
    (carry == 0).then_some(digits)
}

/// `w` (< 32) bits of `k` from bit `at`; bits past the end are zero.
fn bits<const L: usize>(k: &Limbs<L>, at: usize, w: usize) -> u32 {
    let limb = |i: usize| u64::from(k.get(i).copied().unwrap_or(0));
    let two = limb(at / 32) | (limb(at / 32 + 1) << 32);
    ((two >> (at % 32)) & ((1u64 << w) - 1)) as u32
}

/// `Σ kᵢ·Pᵢ` for scalars recoded by [`recode`] with window `w` and their points' tables (made
/// by [`table`] with the same `w`): one mixed addition per nonzero digit. The tables hold every
/// power-of-two multiple, so the order of the additions is free. `None` if a table is shorter
/// than the digits need.
pub fn multi_mul<C: Curve<L>, const L: usize>(
    terms: &[(&[i32], &[Affine<L>], usize)],
) -> Option<Jacobian<L>> {
    let mut acc = Jacobian::infinity();
    for &(digits, table, w) in terms {
        let per_window = 1usize << (w - 1);
        for (i, &d) in digits.iter().enumerate() {
            if d == 0 {
                continue;
            }
            let point = table.get(i * per_window + d.unsigned_abs() as usize - 1)?;
            acc = if d < 0 {
                add_mixed::<C, L>(&acc, &negate::<C, L>(point))
            } else {
                add_mixed::<C, L>(&acc, point)
            };
        }
    }
    Some(acc)
}
