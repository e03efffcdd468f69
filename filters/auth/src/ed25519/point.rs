//! Points of edwards25519 (−x² + y² = 1 + d·x²·y²) in extended coordinates, and the tables of
//! multiples that a verification sums without doubling.
//!
//! The formulas are those of Hisil–Wong–Carter–Dawson ("Twisted Edwards curves revisited",
//! 2008) as ref10 arranges them: additions and doublings produce a "completed" point
//! ([`Completed`]), which becomes extended with four multiplications. With a = −1 a square and
//! d not one, the addition is complete: no input (the identity, a point plus itself or its
//! negation, points of small order) needs a special case, and no Z is ever zero.

use super::field::{self, Fe};

/// d = −121665/121666.
pub const D: Fe =
    field::from_hex("52036cee2b6ffe738cc740797779e89800700a4d4141d8ab75eb4dca135978a3");
/// 2d.
pub const D2: Fe =
    field::from_hex("2406d9dc56dffce7198e80f2eef3d13000e0149a8283b156ebd69b9426b2f159");
/// √−1 = 2^((p−1)/4).
pub const SQRT_M1: Fe =
    field::from_hex("2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0");

/// `(X : Y : Z : T)` with x = X/Z, y = Y/Z, x·y = T/Z.
#[derive(Debug, Clone, Copy)]
pub struct Extended {
    pub x: Fe,
    pub y: Fe,
    pub z: Fe,
    pub t: Fe,
}

/// `((X : Z), (Y : T))`: x = X/Z, y = Y/T.
pub struct Completed {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// An affine point prepared for mixed addition: `(y + x, y − x, 2d·x·y)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Niels {
    pub ypx: Fe,
    pub ymx: Fe,
    pub xy2d: Fe,
}

/// An extended point prepared for addition: `(Y + X, Y − X, Z, 2d·T)`.
struct Cached {
    ypx: Fe,
    ymx: Fe,
    z: Fe,
    t2d: Fe,
}

pub const IDENTITY: Extended = Extended {
    x: field::ZERO,
    y: field::ONE,
    z: field::ONE,
    t: field::ZERO,
};

impl Completed {
    #[inline]
    pub fn to_extended(&self) -> Extended {
        Extended {
            x: field::mul(&self.x, &self.t),
            y: field::mul(&self.y, &self.z),
            z: field::mul(&self.z, &self.t),
            t: field::mul(&self.x, &self.y),
        }
    }
}

impl Extended {
    /// Decodes RFC 8032's encoding (§5.1.3) the way `ring` (BoringSSL's
    /// `x25519_ge_frombytes_vartime`) does: `y` is the low 255 bits taken mod p (a
    /// non-canonical `y ≥ p` is accepted), `x` the square root of `(y² − 1)/(d·y² + 1)` whose
    /// parity is bit 255 (for x = 0 the bit is ignored); `None` if there is no square root.
    pub fn decode(s: &[u8; 32]) -> Option<Self> {
        let y = field::from_bytes(s);
        let yy = field::sqr(&y);
        let u = field::sub(&yy, &field::ONE);
        let v = field::add(&field::mul(&yy, &D), &field::ONE);
        // x = u·v³·(u·v⁷)^((p−5)/8): the candidate root (RFC 8032 §5.1.3 step 2).
        let v3 = field::mul(&field::sqr(&v), &v);
        let uv7 = field::mul(&field::mul(&field::sqr(&v3), &v), &u);
        let mut x = field::mul(&field::mul(&field::pow_p58(&uv7), &v3), &u);
        let vxx = field::mul(&field::sqr(&x), &v);
        if !field::eq(&vxx, &u) {
            if !field::eq(&vxx, &field::neg(&u)) {
                return None;
            }
            x = field::mul(&x, &SQRT_M1);
        }
        if field::is_negative(&x) != (s[31] >> 7 == 1) {
            x = field::neg(&x);
        }
        Some(Self {
            t: field::mul(&x, &y),
            x,
            y,
            z: field::ONE,
        })
    }

    /// The canonical encoding: `y` in `[0, p)`, bit 255 the parity of `x`.
    pub fn encode(&self) -> [u8; 32] {
        let zinv = field::invert(&self.z);
        let x = field::mul(&self.x, &zinv);
        let y = field::mul(&self.y, &zinv);
        let mut out = field::to_bytes(&y);
        out[31] |= u8::from(field::is_negative(&x)) << 7;
        out
    }

    fn cached(&self) -> Cached {
        Cached {
            ypx: field::add(&self.y, &self.x),
            ymx: field::sub(&self.y, &self.x),
            z: self.z,
            t2d: field::mul(&self.t, &D2),
        }
    }

    pub fn double(&self) -> Completed {
        let xx = field::sqr(&self.x);
        let yy = field::sqr(&self.y);
        let zz2 = field::add(&field::sqr(&self.z), &field::sqr(&self.z));
        let xy2 = field::sqr(&field::add(&self.x, &self.y));
        let y = field::add(&yy, &xx);
        let z = field::sub(&yy, &xx);
        Completed {
            x: field::sub(&xy2, &y),
            y,
            z,
            t: field::sub(&zz2, &z),
        }
    }

    fn add_cached(&self, q: &Cached) -> Completed {
        let a = field::mul(&field::add(&self.y, &self.x), &q.ypx);
        let b = field::mul(&field::sub(&self.y, &self.x), &q.ymx);
        let c = field::mul(&q.t2d, &self.t);
        let d = field::mul(&self.z, &q.z);
        let d2 = field::add(&d, &d);
        Completed {
            x: field::sub(&a, &b),
            y: field::add(&a, &b),
            z: field::add(&d2, &c),
            t: field::sub(&d2, &c),
        }
    }

    /// `self + q` (`sub`: `self − q`) for an affine `q`: seven multiplications with the
    /// conversion back to extended coordinates.
    #[inline]
    pub fn add_niels(&self, q: &Niels, sub: bool) -> Extended {
        let (qp, qm) = if sub {
            (&q.ymx, &q.ypx)
        } else {
            (&q.ypx, &q.ymx)
        };
        let a = field::mul(&field::add(&self.y, &self.x), qp);
        let b = field::mul(&field::sub(&self.y, &self.x), qm);
        let c = field::mul(&q.xy2d, &self.t);
        let d2 = field::add(&self.z, &self.z);
        let (z, t) = if sub {
            (field::sub(&d2, &c), field::add(&d2, &c))
        } else {
            (field::add(&d2, &c), field::sub(&d2, &c))
        };
        Completed {
            x: field::sub(&a, &b),
            y: field::add(&a, &b),
            z,
            t,
        }
        .to_extended()
    }

    #[cfg(test)]
    pub fn add(&self, q: &Extended) -> Extended {
        self.add_cached(&q.cached()).to_extended()
    }
}

/// Windows of `w` bits a scalar below 2²⁵³ needs in signed digits (`⌈254/w⌉`: the top digit
/// then absorbs the last carry).
pub const fn windows(w: usize) -> usize {
    254_usize.div_ceil(w)
}

/// The table of `j·2^(w·i)·P` for every window `i` and `j` in `1..=2^(w−1)`, at index
/// `i·2^(w−1) + j − 1`, as affine points (one inversion for the whole table).
pub fn table(p: &Extended, w: usize) -> Vec<Niels> {
    let half = 1usize << (w - 1);
    let mut points = Vec::with_capacity(windows(w) * half);
    let mut base = *p;
    for _ in 0..windows(w) {
        let cached = base.cached();
        let mut m = base;
        points.push(m);
        for _ in 1..half {
            m = m.add_cached(&cached).to_extended();
            points.push(m);
        }
        // 2^(w−1)·base doubled is the next window's base.
        base = m.double().to_extended();
    }
    to_niels(&points)
}

/// Affine forms of many points with one inversion (Montgomery's trick). Z is never zero.
fn to_niels(points: &[Extended]) -> Vec<Niels> {
    let mut prefix = Vec::with_capacity(points.len());
    let mut acc = field::ONE;
    for p in points {
        prefix.push(acc);
        acc = field::mul(&acc, &p.z);
    }
    let mut inv = field::invert(&acc);
    let mut out = vec![
        Niels {
            ypx: field::ZERO,
            ymx: field::ZERO,
            xy2d: field::ZERO,
        };
        points.len()
    ];
    for ((p, before), slot) in points.iter().zip(&prefix).zip(out.iter_mut()).rev() {
        let zinv = field::mul(&inv, before);
        inv = field::mul(&inv, &p.z);
        let x = field::mul(&p.x, &zinv);
        let y = field::mul(&p.y, &zinv);
        *slot = Niels {
            ypx: field::add(&y, &x),
            ymx: field::sub(&y, &x),
            xy2d: field::mul(&field::mul(&x, &y), &D2),
        };
    }
    out
}

/// Signed digits of a scalar below 2²⁵³ (32 little-endian bytes): `windows(w)` digits in
/// `[−2^(w−1), 2^(w−1)]` with `Σ dᵢ·2^(w·i)` the scalar.
pub fn recode(k: &[u8; 32], w: usize) -> Vec<i32> {
    let n = windows(w);
    let mut digits = Vec::with_capacity(n);
    let mut carry = 0i32;
    let bit = |i: usize| -> i32 {
        if i < 256 {
            i32::from((k[i / 8] >> (i % 8)) & 1)
        } else {
            0
        }
    };
    for i in 0..n {
        let mut v = carry;
        for b in 0..w {
            v += bit(i * w + b) << b;
        }
        if v > 1 << (w - 1) {
            v -= 1 << w;
            carry = 1;
        } else {
            carry = 0;
        }
        digits.push(v);
    }
    digits
}

/// `Σ dᵢ·Tᵢ` over the digits of each (digits, table, window, negate) term: one mixed addition
/// per nonzero digit, no doubling. `None` if a table is shorter than its digits need.
pub fn multi_mul(terms: &[(&[i32], &[Niels], usize, bool)]) -> Option<Extended> {
    let mut acc = IDENTITY;
    for &(digits, table, w, negate) in terms {
        let half = 1usize << (w - 1);
        for (i, &d) in digits.iter().enumerate() {
            if d == 0 {
                continue;
            }
            let entry = table.get(i * half + d.unsigned_abs() as usize - 1)?;
            acc = acc.add_niels(entry, (d < 0) != negate);
        }
    }
    Some(acc)
}
