//! Arithmetic modulo p = 2²⁵⁵ − 19 on ten limbs of alternately 26 and 25 bits (radix 2^25.5),
//! so that a product of two elements is 100 `u32 × u32 → u64` multiplications (what wasm32
//! multiplies natively) summed without overflow, and the reduction of 2²⁵⁵ is a multiplication
//! by 19 of the high products. Every operation returns a *carried* element: limbs below
//! 2²⁶ (even) and 2²⁵ (odd) give or take a few units in limb 1, so any result may be fed to any
//! operation. Only [`to_bytes`] reduces fully (the unique value in `[0, p)`).

/// Ten limbs, limb `i` at bit `⌈25.5·i⌉`.
pub type Fe = [u32; 10];

const MASK26: u64 = (1 << 26) - 1;
const MASK25: u64 = (1 << 25) - 1;

pub const ZERO: Fe = [0; 10];
pub const ONE: Fe = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Bit positions of the limbs.
const POS: [u32; 10] = [0, 26, 51, 77, 102, 128, 153, 179, 204, 230];

/// The 255 low bits of a little-endian 32-byte string as an element (bit 255 ignored; values
/// in `[p, 2²⁵⁵)` are kept as they are, i.e. taken mod p, as `ring` does for a point's `y`).
pub const fn from_bytes(s: &[u8; 32]) -> Fe {
    let mut out = [0u32; 10];
    let mut i = 0;
    while i < 10 {
        let (pos, width) = (POS[i], if i % 2 == 0 { 26 } else { 25 });
        let byte = (pos / 8) as usize;
        // Up to 5 bytes cover a 26-bit limb at any bit offset.
        let mut word = 0u64;
        let mut b = 0;
        while b < 5 && byte + b < 32 {
            word |= (s[byte + b] as u64) << (8 * b);
            b += 1;
        }
        let mut v = (word >> (pos % 8)) & ((1 << width) - 1);
        if i == 9 {
            v &= (1 << 25) - 1; // bits 230..254
        }
        out[i] = v as u32;
        i += 1;
    }
    out
}

/// A big-endian hex constant (64 digits, below p) as an element, at compile time.
pub const fn from_hex(h: &str) -> Fe {
    let h = h.as_bytes();
    let mut le = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let hi = nibble(h[2 * i]);
        let lo = nibble(h[2 * i + 1]);
        le[31 - i] = (hi << 4) | lo;
        i += 1;
    }
    from_bytes(&le)
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0, // not hex: caught by the constant tests
    }
}

/// Carries wide limbs (each below 2⁶³) into a carried element.
#[inline(always)]
fn carry(h: [u64; 10]) -> Fe {
    let [mut h0, mut h1, mut h2, mut h3, mut h4, mut h5, mut h6, mut h7, mut h8, mut h9] = h;
    h1 += h0 >> 26;
    h0 &= MASK26;
    h2 += h1 >> 25;
    h1 &= MASK25;
    h3 += h2 >> 26;
    h2 &= MASK26;
    h4 += h3 >> 25;
    h3 &= MASK25;
    h5 += h4 >> 26;
    h4 &= MASK26;
    h6 += h5 >> 25;
    h5 &= MASK25;
    h7 += h6 >> 26;
    h6 &= MASK26;
    h8 += h7 >> 25;
    h7 &= MASK25;
    h9 += h8 >> 26;
    h8 &= MASK26;
    h0 += 19 * (h9 >> 25);
    h9 &= MASK25;
    h1 += h0 >> 26;
    h0 &= MASK26;
    [
        h0 as u32, h1 as u32, h2 as u32, h3 as u32, h4 as u32, h5 as u32, h6 as u32, h7 as u32,
        h8 as u32, h9 as u32,
    ]
}

/// `a + b`, carried.
#[inline(always)]
pub fn add(a: &Fe, b: &Fe) -> Fe {
    let mut h = [0u64; 10];
    for i in 0..10 {
        h[i] = u64::from(a[i]) + u64::from(b[i]);
    }
    carry(h)
}

/// 4p in limbs: what [`sub`] adds so that no limb goes negative (a carried `b` is below it).
const FOUR_P: [u64; 10] = [
    4 * ((1 << 26) - 19),
    4 * MASK25,
    4 * MASK26,
    4 * MASK25,
    4 * MASK26,
    4 * MASK25,
    4 * MASK26,
    4 * MASK25,
    4 * MASK26,
    4 * MASK25,
];

/// `a − b`, carried.
#[inline(always)]
pub fn sub(a: &Fe, b: &Fe) -> Fe {
    let mut h = [0u64; 10];
    for i in 0..10 {
        h[i] = u64::from(a[i]) + FOUR_P[i] - u64::from(b[i]);
    }
    carry(h)
}

/// `−a`, carried.
pub fn neg(a: &Fe) -> Fe {
    sub(&ZERO, a)
}

/// The canonical little-endian encoding of the value in `[0, p)` (bit 255 clear).
pub fn to_bytes(a: &Fe) -> [u8; 32] {
    // One more carry pass brings every limb within its width (limb 1 may exceed by a little).
    let h = carry(a.map(u64::from));
    let mut h = h.map(u64::from);
    // q = 1 iff the value is ≥ p, i.e. value + 19 ≥ 2²⁵⁵.
    let mut q = (h[0] + 19) >> 26;
    for (i, hi) in h.iter().enumerate().skip(1) {
        q = (hi + q) >> if i % 2 == 0 { 26 } else { 25 };
    }
    // value − q·p = value + 19q − q·2²⁵⁵: add 19q, carry, drop bit 255.
    h[0] += 19 * q;
    for i in 0..9 {
        let w = if i % 2 == 0 { 26 } else { 25 };
        h[i + 1] += h[i] >> w;
        h[i] &= (1 << w) - 1;
    }
    h[9] &= MASK25;
    let mut out = [0u8; 32];
    for (i, hi) in h.iter().enumerate() {
        let pos = POS[i] as usize;
        let v = hi << (pos % 8);
        for b in 0..5 {
            if pos / 8 + b < 32 {
                out[pos / 8 + b] |= (v >> (8 * b)) as u8;
            }
        }
    }
    out
}

/// Whether two elements are equal mod p.
pub fn eq(a: &Fe, b: &Fe) -> bool {
    to_bytes(a) == to_bytes(b)
}

/// The low bit of the canonical value ("negative" in RFC 8032).
pub fn is_negative(a: &Fe) -> bool {
    to_bytes(a)[0] & 1 == 1
}

/// `a^(2^n)`.
fn sqr_n(a: &Fe, n: u32) -> Fe {
    let mut r = sqr(a);
    for _ in 1..n {
        r = sqr(&r);
    }
    r
}

/// `(z^(2²⁵⁰ − 1), z¹¹)`: the common head of the exponentiations by p − 2 and (p − 5)/8.
fn pow_2_250_1(z: &Fe) -> (Fe, Fe) {
    let z2 = sqr(z);
    let z9 = mul(&sqr_n(&z2, 2), z);
    let z11 = mul(&z9, &z2);
    let z_5_0 = mul(&sqr(&z11), &z9); // 2⁵ − 1
    let z_10_0 = mul(&sqr_n(&z_5_0, 5), &z_5_0);
    let z_20_0 = mul(&sqr_n(&z_10_0, 10), &z_10_0);
    let z_40_0 = mul(&sqr_n(&z_20_0, 20), &z_20_0);
    let z_50_0 = mul(&sqr_n(&z_40_0, 10), &z_10_0);
    let z_100_0 = mul(&sqr_n(&z_50_0, 50), &z_50_0);
    let z_200_0 = mul(&sqr_n(&z_100_0, 100), &z_100_0);
    let z_250_0 = mul(&sqr_n(&z_200_0, 50), &z_50_0);
    (z_250_0, z11)
}

/// `z⁻¹ = z^(p−2)`, `z^(2²⁵⁵ − 21)` (zero for zero).
pub fn invert(z: &Fe) -> Fe {
    let (t, z11) = pow_2_250_1(z);
    mul(&sqr_n(&t, 5), &z11)
}

/// `z^((p−5)/8) = z^(2²⁵² − 3)`, for square roots.
pub fn pow_p58(z: &Fe) -> Fe {
    let (t, _) = pow_2_250_1(z);
    mul(&sqr_n(&t, 2), z)
}

/// `f·g`, carried.
#[inline]
pub fn mul(f: &Fe, g: &Fe) -> Fe {
    let [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = f.map(u64::from);
    let [g0, g1, g2, g3, g4, g5, g6, g7, g8, g9] = g.map(u64::from);
    let g1_19 = 19 * g1;
    let g2_19 = 19 * g2;
    let g3_19 = 19 * g3;
    let g4_19 = 19 * g4;
    let g5_19 = 19 * g5;
    let g6_19 = 19 * g6;
    let g7_19 = 19 * g7;
    let g8_19 = 19 * g8;
    let g9_19 = 19 * g9;
    let f1_2 = 2 * f1;
    let f3_2 = 2 * f3;
    let f5_2 = 2 * f5;
    let f7_2 = 2 * f7;
    let f9_2 = 2 * f9;
    let h0 = f0 * g0
        + f1_2 * g9_19
        + f2 * g8_19
        + f3_2 * g7_19
        + f4 * g6_19
        + f5_2 * g5_19
        + f6 * g4_19
        + f7_2 * g3_19
        + f8 * g2_19
        + f9_2 * g1_19;
    let h1 = f0 * g1
        + f1 * g0
        + f2 * g9_19
        + f3 * g8_19
        + f4 * g7_19
        + f5 * g6_19
        + f6 * g5_19
        + f7 * g4_19
        + f8 * g3_19
        + f9 * g2_19;
    let h2 = f0 * g2
        + f1_2 * g1
        + f2 * g0
        + f3_2 * g9_19
        + f4 * g8_19
        + f5_2 * g7_19
        + f6 * g6_19
        + f7_2 * g5_19
        + f8 * g4_19
        + f9_2 * g3_19;
    let h3 = f0 * g3
        + f1 * g2
        + f2 * g1
        + f3 * g0
        + f4 * g9_19
        + f5 * g8_19
        + f6 * g7_19
        + f7 * g6_19
        + f8 * g5_19
        + f9 * g4_19;
    let h4 = f0 * g4
        + f1_2 * g3
        + f2 * g2
        + f3_2 * g1
        + f4 * g0
        + f5_2 * g9_19
        + f6 * g8_19
        + f7_2 * g7_19
        + f8 * g6_19
        + f9_2 * g5_19;
    let h5 = f0 * g5
        + f1 * g4
        + f2 * g3
        + f3 * g2
        + f4 * g1
        + f5 * g0
        + f6 * g9_19
        + f7 * g8_19
        + f8 * g7_19
        + f9 * g6_19;
    let h6 = f0 * g6
        + f1_2 * g5
        + f2 * g4
        + f3_2 * g3
        + f4 * g2
        + f5_2 * g1
        + f6 * g0
        + f7_2 * g9_19
        + f8 * g8_19
        + f9_2 * g7_19;
    let h7 = f0 * g7
        + f1 * g6
        + f2 * g5
        + f3 * g4
        + f4 * g3
        + f5 * g2
        + f6 * g1
        + f7 * g0
        + f8 * g9_19
        + f9 * g8_19;
    let h8 = f0 * g8
        + f1_2 * g7
        + f2 * g6
        + f3_2 * g5
        + f4 * g4
        + f5_2 * g3
        + f6 * g2
        + f7_2 * g1
        + f8 * g0
        + f9_2 * g9_19;
    let h9 = f0 * g9
        + f1 * g8
        + f2 * g7
        + f3 * g6
        + f4 * g5
        + f5 * g4
        + f6 * g3
        + f7 * g2
        + f8 * g1
        + f9 * g0;
    carry([h0, h1, h2, h3, h4, h5, h6, h7, h8, h9])
}

/// `f²`, carried.
#[inline]
pub fn sqr(f: &Fe) -> Fe {
    let [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = f.map(u64::from);
    let h0 = f0 * f0 + 76 * f1 * f9 + 38 * f2 * f8 + 76 * f3 * f7 + 38 * f4 * f6 + 38 * f5 * f5;
    let h1 = 2 * f0 * f1 + 38 * f2 * f9 + 38 * f3 * f8 + 38 * f4 * f7 + 38 * f5 * f6;
    let h2 = 2 * f0 * f2 + 2 * f1 * f1 + 76 * f3 * f9 + 38 * f4 * f8 + 76 * f5 * f7 + 19 * f6 * f6;
    let h3 = 2 * f0 * f3 + 2 * f1 * f2 + 38 * f4 * f9 + 38 * f5 * f8 + 38 * f6 * f7;
    let h4 = 2 * f0 * f4 + 4 * f1 * f3 + f2 * f2 + 76 * f5 * f9 + 38 * f6 * f8 + 38 * f7 * f7;
    let h5 = 2 * f0 * f5 + 2 * f1 * f4 + 2 * f2 * f3 + 38 * f6 * f9 + 38 * f7 * f8;
    let h6 = 2 * f0 * f6 + 4 * f1 * f5 + 2 * f2 * f4 + 2 * f3 * f3 + 76 * f7 * f9 + 19 * f8 * f8;
    let h7 = 2 * f0 * f7 + 2 * f1 * f6 + 2 * f2 * f5 + 2 * f3 * f4 + 38 * f8 * f9;
    let h8 = 2 * f0 * f8 + 4 * f1 * f7 + 2 * f2 * f6 + 4 * f3 * f5 + f4 * f4 + 38 * f9 * f9;
    let h9 = 2 * f0 * f9 + 2 * f1 * f8 + 2 * f2 * f7 + 2 * f3 * f6 + 2 * f4 * f5;
    carry([h0, h1, h2, h3, h4, h5, h6, h7, h8, h9])
}
