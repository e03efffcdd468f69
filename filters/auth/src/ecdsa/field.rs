//! Arithmetic modulo an odd modulus of `L` 32-bit limbs (little-endian), in Montgomery form.
//!
//! Two products: [`Modulus::mul`], a generic CIOS Montgomery product for any odd modulus (the
//! scalars mod n: three products per verification), and [`mul_sparse`] / [`sqr_sparse`] for
//! the field primes, which are `≡ −1 mod 2³²` and sparse, so that a reduction step is a few
//! additions instead of a row of multiplications; those are written out limb by limb and take
//! the modulus as a constant of the curve ([`super::point::Curve`]), so that after
//! monomorphisation the limbs live in wasm locals. Products are `u32 × u32` into a `u64`
//! accumulator: the one multiply wasm32 has natively.
//!
//! Every result is fully reduced (in `[0, m)`), so equal values have equal limbs.

/// Little-endian 32-bit limbs.
pub type Limbs<const L: usize> = [u32; L];

/// An odd modulus and its Montgomery constants, `R = 2^(32·L)`.
#[derive(Debug, Clone, Copy)]
pub struct Modulus<const L: usize> {
    pub m: Limbs<L>,
    /// `-m⁻¹ mod 2³²`.
    pub m0inv: u32,
    /// `R mod m`: one, in Montgomery form.
    pub one: Limbs<L>,
    /// `R² mod m`: multiplying by it enters Montgomery form.
    pub rr: Limbs<L>,
}

const fn const_ge<const L: usize>(a: &Limbs<L>, b: &Limbs<L>) -> bool {
    let mut i = L;
    while i > 0 {
        i -= 1;
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

const fn const_sub<const L: usize>(a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
    let mut out = [0u32; L];
    let mut borrow = 0u64;
    let mut i = 0;
    while i < L {
        let d = (a[i] as u64).wrapping_sub(b[i] as u64).wrapping_sub(borrow);
        out[i] = d as u32;
        borrow = (d >> 63) & 1;
        i += 1;
    }
    out
}

/// `2·a mod m`, for `a < m`.
pub const fn const_double_mod<const L: usize>(a: &Limbs<L>, m: &Limbs<L>) -> Limbs<L> {
    let mut out = [0u32; L];
    let mut carry = 0u32;
    let mut i = 0;
    while i < L {
        out[i] = (a[i] << 1) | carry;
        carry = a[i] >> 31;
        i += 1;
    }
    if carry != 0 || const_ge(&out, m) {
        out = const_sub(&out, m);
    }
    out
}

impl<const L: usize> Modulus<L> {
    /// The constants of an odd modulus whose top limb is not zero (evaluated at compile time).
    pub const fn new(m: Limbs<L>) -> Self {
        // Newton's iteration doubles the correct low bits of m⁻¹ each step: 1 → 2 → … → 32.
        let mut inv = 1u32;
        let mut i = 0;
        while i < 5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(m[0].wrapping_mul(inv)));
            i += 1;
        }
        // R mod m and R² mod m by doubling from 1, reducing at each step.
        let mut r = [0u32; L];
        r[0] = 1;
        let mut k = 0;
        while k < 32 * L {
            r = const_double_mod(&r, &m);
            k += 1;
        }
        let one = r;
        while k < 64 * L {
            r = const_double_mod(&r, &m);
            k += 1;
        }
        Self {
            m,
            m0inv: inv.wrapping_neg(),
            one,
            rr: r,
        }
    }

    /// `a · b · R⁻¹ mod m`, inputs below `m`: CIOS, one reduction step per limb of `a`.
    #[inline(always)]
    pub fn mul(&self, a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        let mut t = [0u32; L];
        let mut top = 0u32;
        for &ai in a {
            let ai = u64::from(ai);
            let mut c = 0u64;
            for (tj, &bj) in t.iter_mut().zip(b) {
                let x = u64::from(*tj) + ai * u64::from(bj) + c;
                *tj = x as u32;
                c = x >> 32;
            }
            let x = u64::from(top) + c;
            let t_l = x as u32;
            let t_l1 = (x >> 32) as u32;
            // t += q·m with q chosen so the low limb vanishes, then shift down one limb.
            let q = u64::from(t[0].wrapping_mul(self.m0inv));
            let mut c = (u64::from(t[0]) + q * u64::from(self.m[0])) >> 32;
            for j in 1..L {
                let x = u64::from(t[j]) + q * u64::from(self.m[j]) + c;
                t[j - 1] = x as u32;
                c = x >> 32;
            }
            let x = u64::from(t_l) + c;
            t[L - 1] = x as u32;
            top = t_l1 + (x >> 32) as u32;
        }
        if top != 0 || ge(&t, &self.m) {
            sub_in_place(&mut t, &self.m);
        }
        t
    }

    /// `a + b mod m`.
    #[inline(always)]
    pub fn add(&self, a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        let mut r = *a;
        if add_in_place(&mut r, b) || ge(&r, &self.m) {
            sub_in_place(&mut r, &self.m);
        }
        r
    }

    /// `a − b mod m`.
    #[inline(always)]
    pub fn sub(&self, a: &Limbs<L>, b: &Limbs<L>) -> Limbs<L> {
        let mut r = *a;
        if sub_in_place(&mut r, b) {
            add_in_place(&mut r, &self.m);
        }
        r
    }

    /// Into Montgomery form: `a · R mod m`.
    pub fn mont_in(&self, a: &Limbs<L>) -> Limbs<L> {
        self.mul(a, &self.rr)
    }

    /// Out of Montgomery form: `a · R⁻¹ mod m`.
    pub fn mont_out(&self, a: &Limbs<L>) -> Limbs<L> {
        let mut one = [0u32; L];
        one[0] = 1;
        self.mul(a, &one)
    }

    /// `a⁻¹ mod m` of a plain (not Montgomery) `a` in `[1, m)`, `m` prime: the binary extended
    /// Euclidean algorithm. Variable-time, which is fine for public data, and a fraction of the
    /// cost of Fermat's `a^(m−2)`. `None` for zero (or anything without an inverse).
    ///
    /// Invariants: `x₁·a ≡ u` and `x₂·a ≡ v (mod m)`, `u` and `v` odd between steps. Each step
    /// subtracts the smaller from the larger and strips the difference's trailing zeros (at
    /// least one bit), dividing its coefficient by the same power of two.
    pub fn inv_vartime(&self, a: &Limbs<L>) -> Option<Limbs<L>> {
        if is_zero(a) || ge(a, &self.m) {
            return None;
        }
        let mut one = [0u32; L];
        one[0] = 1;
        let (mut u, mut v) = (*a, self.m);
        let (mut x1, mut x2) = (one, [0u32; L]);
        self.make_odd(&mut u, &mut x1);
        // Each step takes at least one bit off u or v; the bound only guards the loop.
        for _ in 0..2 * 32 * L + 2 {
            if u == one {
                return Some(x1);
            }
            if v == one {
                return Some(x2);
            }
            if u == v {
                return None; // a common factor: m was not prime
            }
            if ge(&u, &v) {
                sub_in_place(&mut u, &v);
                x1 = self.sub(&x1, &x2);
                self.make_odd(&mut u, &mut x1);
            } else {
                sub_in_place(&mut v, &u);
                x2 = self.sub(&x2, &x1);
                self.make_odd(&mut v, &mut x2);
            }
        }
        None
    }

    /// Strips the trailing zero bits of a nonzero `u`, dividing `x` (mod m) by as many twos.
    fn make_odd(&self, u: &mut Limbs<L>, x: &mut Limbs<L>) {
        if is_zero(u) {
            return;
        }
        loop {
            let tz = u[0].trailing_zeros();
            if tz == 0 {
                return;
            }
            let s = tz.min(31);
            shr_bits(u, s, 0);
            self.div_pow2(x, s);
        }
    }

    /// `x / 2^s mod m` for `x < m`, `1 ≤ s ≤ 31`: add the multiple `q·m` (`q < 2^s`) that makes
    /// the sum divisible by `2^s`, then shift. The quotient is below `2m`.
    fn div_pow2(&self, x: &mut Limbs<L>, s: u32) {
        let q = u64::from(x[0].wrapping_mul(self.m0inv) & ((1u32 << s) - 1));
        let mut c = 0u64;
        for (xi, &mi) in x.iter_mut().zip(&self.m) {
            let t = u64::from(*xi) + q * u64::from(mi) + c;
            *xi = t as u32;
            c = t >> 32;
        }
        shr_bits(x, s, c as u32);
        if ge(x, &self.m) {
            sub_in_place(x, &self.m);
        }
    }

    /// The inverse of a Montgomery-form `a` (`aR`), in Montgomery form (`a⁻¹R`).
    pub fn inv_mont(&self, a: &Limbs<L>) -> Option<Limbs<L>> {
        let plain = self.mont_out(a);
        Some(self.mont_in(&self.inv_vartime(&plain)?))
    }
}

/// Limbs of the largest modulus (P-384); the scratch arrays of the products are this long.
pub const MAX_LIMBS: usize = 12;

/// Runs a block once for each `$i` in `0..$n` (`$n ≤ MAX_LIMBS`, or `2·MAX_LIMBS` with `double`),
/// written out: with every
/// index a constant, the scratch arrays below become wasm locals instead of memory, which
/// takes the address arithmetic, loads and stores out of each limb product (LLVM unrolls the
/// inner loops itself, but not the outer ones).
macro_rules! unrolled {
    ($i:ident < $n:expr => $body:block) => {
        unrolled!(@ $i, $n, $body; 0 1 2 3 4 5 6 7 8 9 10 11)
    };
    (double $i:ident < $n:expr => $body:block) => {
        unrolled!(@ $i, $n, $body;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23)
    };
    (@ $i:ident, $n:expr, $body:block; $($k:literal)*) => {
        $(
            if $k < $n {
                let $i: usize = $k;
                $body
            }
        )*
    };
}

/// The double-length product `a·b` (`2·L` limbs of `t`; `L ≤ MAX_LIMBS`).
#[inline(always)]
fn product<const L: usize>(a: &Limbs<L>, b: &Limbs<L>) -> [u32; 2 * MAX_LIMBS] {
    let mut t = [0u32; 2 * MAX_LIMBS];
    unrolled!(i < L => {
        let ai = u64::from(a[i]);
        let mut c = 0u64;
        for j in 0..L {
            let x = u64::from(t[i + j]) + ai * u64::from(b[j]) + c;
            t[i + j] = x as u32;
            c = x >> 32;
        }
        t[i + L] = c as u32;
    });
    t
}

/// `a²` (`2·L` limbs): each cross product once, doubled, plus the squares.
#[inline(always)]
#[allow(unused_assignments)] // the carries out of the last limb
fn square<const L: usize>(a: &Limbs<L>) -> [u32; 2 * MAX_LIMBS] {
    let mut t = [0u32; 2 * MAX_LIMBS];
    unrolled!(i < L => {
        let ai = u64::from(a[i]);
        let mut c = 0u64;
        for j in i + 1..L {
            let x = u64::from(t[i + j]) + ai * u64::from(a[j]) + c;
            t[i + j] = x as u32;
            c = x >> 32;
        }
        t[i + L] = c as u32;
    });
    let mut top = 0u32;
    unrolled!(double k < 2 * L => {
        let next = t[k] >> 31;
        t[k] = (t[k] << 1) | top;
        top = next;
    });
    let mut c = 0u64;
    unrolled!(i < L => {
        let sq = u64::from(a[i]) * u64::from(a[i]);
        let lo = u64::from(t[2 * i]) + (sq & 0xffff_ffff) + c;
        t[2 * i] = lo as u32;
        let hi = u64::from(t[2 * i + 1]) + (sq >> 32) + (lo >> 32);
        t[2 * i + 1] = hi as u32;
        c = hi >> 32;
    });
    t
}

/// Montgomery reduction `t·R⁻¹ mod p` of a product `t < p²`, for a prime with
/// `p ≡ −1 (mod 2³²)` and `p + 1 = Σ ±2^(32·off)` over a few `terms` `(off, negative)` — the
/// NIST primes. The multiplier of each step is then the limb itself, and adding `q·p` is
/// subtracting `q` at the limb (which clears it) and adding `±q` at a few limbs above: a handful
/// of additions on signed 64-bit accumulators instead of `L` multiplications.
#[inline(always)]
fn reduce_sparse<const L: usize>(
    t: &[u32; 2 * MAX_LIMBS],
    p: &Limbs<L>,
    terms: &[(usize, bool)],
) -> Limbs<L> {
    let mut acc = [0i64; 2 * MAX_LIMBS];
    unrolled!(double k < 2 * L => {
        acc[k] = i64::from(t[k]);
    });
    let mut carry = 0i64;
    unrolled!(i < L => {
        let v = acc[i] + carry;
        let q = v & 0xffff_ffff;
        carry = (v - q) >> 32;
        for &(off, negative) in terms {
            if negative {
                acc[i + off] -= q;
            } else {
                acc[i + off] += q;
            }
        }
    });
    // (t + Σ qᵢ·p·2^(32i)) / R < (p² + R·p) / R < 2p: L limbs and a carry of 0 or 1.
    let mut out = [0u32; L];
    unrolled!(k < L => {
        let v = acc[L + k] + carry;
        out[k] = v as u32;
        carry = v >> 32;
    });
    if carry != 0 || ge(&out, p) {
        sub_in_place(&mut out, p);
    }
    out
}

/// `a · b · R⁻¹ mod p` for a sparse prime (see [`reduce_sparse`]), inputs below `p`.
#[inline(always)]
pub fn mul_sparse<const L: usize>(
    a: &Limbs<L>,
    b: &Limbs<L>,
    p: &Limbs<L>,
    terms: &[(usize, bool)],
) -> Limbs<L> {
    reduce_sparse(&product(a, b), p, terms)
}

/// `a² · R⁻¹ mod p` for a sparse prime.
#[inline(always)]
pub fn sqr_sparse<const L: usize>(a: &Limbs<L>, p: &Limbs<L>, terms: &[(usize, bool)]) -> Limbs<L> {
    reduce_sparse(&square(a), p, terms)
}

/// `a >= b`.
#[inline(always)]
pub fn ge<const L: usize>(a: &Limbs<L>, b: &Limbs<L>) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

pub fn is_zero<const L: usize>(a: &Limbs<L>) -> bool {
    a.iter().all(|x| *x == 0)
}

/// `a -= b`; returns the borrow out.
#[inline(always)]
pub fn sub_in_place<const L: usize>(a: &mut Limbs<L>, b: &Limbs<L>) -> bool {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = u64::from(*x)
            .wrapping_sub(u64::from(*y))
            .wrapping_sub(borrow);
        *x = d as u32;
        borrow = (d >> 63) & 1;
    }
    borrow != 0
}

/// `a += b`; returns the carry out.
#[inline(always)]
pub fn add_in_place<const L: usize>(a: &mut Limbs<L>, b: &Limbs<L>) -> bool {
    let mut carry = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let s = u64::from(*x) + u64::from(*y) + carry;
        *x = s as u32;
        carry = s >> 32;
    }
    carry != 0
}

/// `a >>= s` (`1 ≤ s ≤ 31`), the low `s` bits of `top` shifted in at the top.
fn shr_bits<const L: usize>(a: &mut Limbs<L>, s: u32, top: u32) {
    let mut carry = top;
    for x in a.iter_mut().rev() {
        let low = *x;
        *x = (*x >> s) | (carry << (32 - s));
        carry = low;
    }
}

/// Big-endian bytes (exactly `4·L`) to limbs; `None` for another length.
pub fn from_be<const L: usize>(be: &[u8]) -> Option<Limbs<L>> {
    if be.len() != 4 * L {
        return None;
    }
    let mut out = [0u32; L];
    for (limb, chunk) in out.iter_mut().zip(be.rchunks_exact(4)) {
        *limb = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Some(out)
}

#[cfg(any(test, feature = "testkit"))]
pub fn to_be<const L: usize>(a: &Limbs<L>) -> Vec<u8> {
    a.iter().rev().flat_map(|x| x.to_be_bytes()).collect()
}
