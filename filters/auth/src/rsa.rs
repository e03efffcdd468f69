//! RSA signature verification, RSASSA-PKCS1-v1_5 (RS256/384/512) and RSASSA-PSS (PS256/384/512),
//! with a Montgomery context made once per key.
//!
//! `ring` rebuilds its modulus context on every verification and multiplies through a generic
//! limb routine; in wasm32 (32-bit limbs, no assembly) that is ~8.9M instructions per RS256
//! check. Here the context (`-n⁻¹ mod 2³²`, `R² mod n`) is computed when the JWKS is parsed and
//! each Montgomery product is one tight CIOS loop over `u32` limbs with `u64` accumulators.
//!
//! Verification is a public-key operation on public data, so nothing here needs to be
//! constant-time. The check is the strict one of RFC 8017 §8.2.2: the signature, raised to `e`,
//! must equal byte for byte the expected encoding `00 01 FF… 00 ‖ DigestInfo ‖ H(m)`; nothing
//! is parsed out of the decrypted block. PSS is EMSA-PSS-VERIFY (§9.1.2) with MGF1 and a salt as
//! long as the hash, as JWS (RFC 7518 §3.5) and `ring` require. Bounds follow `ring`'s
//! `RSA_*_2048_8192_*`: 2048 to 8192-bit odd moduli, odd exponents from 3 to 2³³ − 1.

use ring::digest;

/// A public key ready for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The modulus, little-endian 32-bit limbs.
    n: Vec<u32>,
    /// `-n⁻¹ mod 2³²`.
    n0inv: u32,
    /// `R² mod n`, `R = 2^(32·limbs)`: multiplying by it enters Montgomery form.
    rr: Vec<u32>,
    e: u64,
    /// The modulus' length in bytes: a signature must have exactly this length.
    len: usize,
    /// The modulus' length in bits (PSS encodes into one bit less).
    bits: usize,
}

/// Which hash the signature covers (the JWS `alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The DER `DigestInfo` header that precedes the hash (RFC 8017 §9.2, note 1).
    fn digest_info(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }
    }
}

/// Big-endian bytes to little-endian limbs, `limbs` of them (the value must fit).
fn to_limbs(be: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (i, b) in be.iter().rev().enumerate() {
        if let Some(limb) = out.get_mut(i / 4) {
            *limb |= u32::from(*b) << (8 * (i % 4));
        }
    }
    out
}

/// `a >= b`, equal lengths.
fn ge(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// `a -= b`, equal lengths; returns the borrow out.
fn sub_in_place(a: &mut [u32], b: &[u32]) -> bool {
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

impl PublicKey {
    /// The key, if `ring` would accept it for verification; `None` otherwise (and the verifier
    /// refuses every signature, as `ring` would).
    pub fn new(n_be: &[u8], e_be: &[u8]) -> Option<Self> {
        let n_be = &n_be[n_be.iter().position(|b| *b != 0)?..];
        let bits = n_be.len() * 8 - n_be.first()?.leading_zeros() as usize;
        if !(2048..=8192).contains(&bits) || n_be.last()? & 1 == 0 {
            return None;
        }
        let e_be = &e_be[e_be.iter().position(|b| *b != 0)?..];
        if e_be.len() > 8 {
            return None;
        }
        let e = e_be.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if e < 3 || e & 1 == 0 || e >= 1 << 33 {
            return None;
        }
        let limbs = n_be.len().div_ceil(4);
        let n = to_limbs(n_be, limbs);
        // Newton's iteration doubles the correct low bits each step: 1 → 2 → … → 32.
        let n0 = n[0];
        let mut inv = 1u32;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        // R² mod n = 2^(64·limbs) mod n by doubling, reduced each step, once per key. Start
        // from 2^(bits-1), the largest power of two below n, not from 1: half the doublings.
        let mut rr = vec![0u32; limbs];
        rr[(bits - 1) / 32] = 1 << ((bits - 1) % 32);
        for _ in 0..2 * 32 * limbs - (bits - 1) {
            let mut carry = 0u32;
            for limb in rr.iter_mut() {
                let top = *limb >> 31;
                *limb = (*limb << 1) | carry;
                carry = top;
            }
            if carry != 0 || ge(&rr, &n) {
                sub_in_place(&mut rr, &n);
            }
        }
        Some(Self {
            n,
            n0inv: inv.wrapping_neg(),
            rr,
            e,
            len: n_be.len(),
            bits,
        })
    }

    /// `a · b · R⁻¹ mod n` into `out`, inputs below `n`; `t` is scratch of `2·limbs + 1`.
    ///
    /// Separated operand scanning: the whole product first, then one reduction row per limb.
    /// Each inner loop walks two slices in step (no index arithmetic, no bounds checks), which
    /// in wasm is about half the instructions of the interleaved (CIOS) form.
    fn mont_mul(&self, a: &[u32], b: &[u32], t: &mut [u32], out: &mut [u32]) {
        let s = self.n.len();
        t.iter_mut().for_each(|x| *x = 0);
        for (i, &ai) in a.iter().enumerate() {
            let ai = u64::from(ai);
            let mut c = 0u64;
            for (tj, &bj) in t[i..i + s].iter_mut().zip(b) {
                let x = u64::from(*tj) + ai * u64::from(bj) + c;
                *tj = x as u32;
                c = x >> 32;
            }
            t[i + s] = c as u32;
        }
        self.reduce(t, out);
    }

    /// `a² · R⁻¹ mod n`: each cross product `aᵢ·aⱼ` once, doubled, plus the squares — about a
    /// quarter fewer limb products than [`Self::mont_mul`], and an exponentiation is mostly
    /// squarings.
    fn mont_sqr(&self, a: &[u32], t: &mut [u32], out: &mut [u32]) {
        let s = self.n.len();
        t.iter_mut().for_each(|x| *x = 0);
        for (i, &ai) in a.iter().enumerate() {
            let ai = u64::from(ai);
            let mut c = 0u64;
            for (tj, &aj) in t[2 * i + 1..i + s].iter_mut().zip(&a[i + 1..]) {
                let x = u64::from(*tj) + ai * u64::from(aj) + c;
                *tj = x as u32;
                c = x >> 32;
            }
            t[i + s] = c as u32;
        }
        // Double the cross products (they fit: below 2^(64·limbs - 1)), then add the squares.
        let mut top = 0u32;
        for x in t[..2 * s].iter_mut() {
            let next = *x >> 31;
            *x = (*x << 1) | top;
            top = next;
        }
        let mut c = 0u64;
        for (pair, &ai) in t[..2 * s].chunks_exact_mut(2).zip(a) {
            let sq = u64::from(ai) * u64::from(ai);
            let lo = u64::from(pair[0]) + (sq & 0xffff_ffff) + c;
            pair[0] = lo as u32;
            let hi = u64::from(pair[1]) + (sq >> 32) + (lo >> 32);
            pair[1] = hi as u32;
            c = hi >> 32;
        }
        self.reduce(t, out);
    }

    /// Montgomery reduction of the `2·limbs`-limb product in `t`: `t · R⁻¹ mod n` into `out`.
    fn reduce(&self, t: &mut [u32], out: &mut [u32]) {
        let s = self.n.len();
        t[2 * s] = 0;
        for i in 0..s {
            let m = u64::from(t[i].wrapping_mul(self.n0inv));
            let mut c = 0u64;
            for (tj, &nj) in t[i..i + s].iter_mut().zip(&self.n) {
                let x = u64::from(*tj) + m * u64::from(nj) + c;
                *tj = x as u32;
                c = x >> 32;
            }
            // Carry into the upper half; it stops within a limb or two.
            for tj in &mut t[i + s..] {
                if c == 0 {
                    break;
                }
                let x = u64::from(*tj) + c;
                *tj = x as u32;
                c = x >> 32;
            }
        }
        out.copy_from_slice(&t[s..2 * s]);
        if t[2 * s] != 0 || ge(out, &self.n) {
            sub_in_place(out, &self.n);
        }
    }

    /// `sig^e mod n`, big-endian, `len` bytes; `None` if the signature is not a number below
    /// `n` of exactly the modulus' length.
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.len {
            return None;
        }
        let s = self.n.len();
        let x = to_limbs(sig, s);
        if ge(&x, &self.n) {
            return None;
        }
        let mut t = vec![0u32; 2 * s + 1];
        let mut base = vec![0u32; s];
        self.mont_mul(&x, &self.rr, &mut t, &mut base);
        let mut acc = base.clone();
        let mut tmp = vec![0u32; s];
        let top = 63 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            self.mont_sqr(&acc, &mut t, &mut tmp);
            std::mem::swap(&mut acc, &mut tmp);
            if (self.e >> bit) & 1 == 1 {
                self.mont_mul(&acc, &base, &mut t, &mut tmp);
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        let mut one = vec![0u32; s];
        one[0] = 1;
        self.mont_mul(&acc, &one, &mut t, &mut tmp);
        let mut out = vec![0u8; self.len];
        for (i, b) in out.iter_mut().rev().enumerate() {
            *b = (tmp[i / 4] >> (8 * (i % 4))) as u8;
        }
        Some(out)
    }

    /// RSASSA-PKCS1-v1_5 verification of `sig` over `message`.
    pub fn verify(&self, hash: Hash, message: &[u8], sig: &[u8]) -> bool {
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        let h = digest::digest(hash.algorithm(), message);
        let info = hash.digest_info();
        let t_len = info.len() + h.as_ref().len();
        // At least eight 0xFF bytes of padding (RFC 8017 §9.2 step 3).
        let Some(ps_len) = self.len.checked_sub(3 + t_len).filter(|n| *n >= 8) else {
            return false;
        };
        let mut expected = Vec::with_capacity(self.len);
        expected.extend_from_slice(&[0x00, 0x01]);
        expected.resize(2 + ps_len, 0xff);
        expected.push(0x00);
        expected.extend_from_slice(info);
        expected.extend_from_slice(h.as_ref());
        em == expected
    }
}

impl PublicKey {
    /// RSASSA-PSS verification of `sig` over `message`: MGF1 with the same hash, salt length
    /// equal to the hash length.
    pub fn verify_pss(&self, hash: Hash, message: &[u8], sig: &[u8]) -> bool {
        let Some(full) = self.public_op(sig) else {
            return false;
        };
        let alg = hash.algorithm();
        let h_len = alg.output_len();
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        // The encoded message is the low em_len bytes; any byte above it must be zero.
        let (high, em) = full.split_at(full.len() - em_len);
        if high.iter().any(|b| *b != 0) || em_len < 2 * h_len + 2 {
            return false;
        }
        let (masked_db, rest) = em.split_at(em_len - h_len - 1);
        let (h, trailer) = rest.split_at(h_len);
        let unused_bits = 8 * em_len - em_bits;
        let top_mask = 0xffu8.checked_shr(unused_bits as u32).unwrap_or(0);
        if trailer != [0xbc] || masked_db.first().is_none_or(|b| b & !top_mask != 0) {
            return false;
        }
        // DB = maskedDB XOR MGF1(H).
        let mut db = masked_db.to_vec();
        for (counter, block) in (0u32..).zip(db.chunks_mut(h_len)) {
            let mut ctx = digest::Context::new(alg);
            ctx.update(h);
            ctx.update(&counter.to_be_bytes());
            for (d, m) in block.iter_mut().zip(ctx.finish().as_ref()) {
                *d ^= m;
            }
        }
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        // DB = zeros ‖ 0x01 ‖ salt, the salt h_len bytes long.
        let (padding, salt) = db.split_at(db.len() - h_len);
        let Some((one, zeros)) = padding.split_last() else {
            return false;
        };
        if *one != 0x01 || zeros.iter().any(|b| *b != 0) {
            return false;
        }
        let mut ctx = digest::Context::new(alg);
        ctx.update(&[0u8; 8]);
        ctx.update(digest::digest(alg, message).as_ref());
        ctx.update(salt);
        ctx.finish().as_ref() == h
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ring::rand::SystemRandom;
    use ring::signature::{self, RsaKeyPair};

    use super::*;
    use crate::testkit::{RSA_A, RSA_B};

    fn key(der: &[u8]) -> (RsaKeyPair, PublicKey) {
        let pair = RsaKeyPair::from_der(der).unwrap();
        let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let public = PublicKey::new(&c.n, &c.e).unwrap();
        (pair, public)
    }

    fn sign(pair: &RsaKeyPair, hash: Hash, message: &[u8]) -> Vec<u8> {
        let alg = match hash {
            Hash::Sha256 => &signature::RSA_PKCS1_SHA256,
            Hash::Sha384 => &signature::RSA_PKCS1_SHA384,
            Hash::Sha512 => &signature::RSA_PKCS1_SHA512,
        };
        let mut sig = vec![0u8; pair.public().modulus_len()];
        pair.sign(alg, &SystemRandom::new(), message, &mut sig)
            .unwrap();
        sig
    }

    #[test]
    fn agrees_with_ring_on_valid_and_altered_signatures() {
        for der in [RSA_A, RSA_B] {
            let (pair, public) = key(der);
            let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
            for (hash, ring_alg) in [
                (Hash::Sha256, &signature::RSA_PKCS1_2048_8192_SHA256),
                (Hash::Sha384, &signature::RSA_PKCS1_2048_8192_SHA384),
                (Hash::Sha512, &signature::RSA_PKCS1_2048_8192_SHA512),
            ] {
                for i in 0..8u8 {
                    let message = vec![i; 10 + usize::from(i) * 37];
                    let sig = sign(&pair, hash, &message);
                    assert!(public.verify(hash, &message, &sig), "{hash:?} #{i}");
                    assert!(c.verify(ring_alg, &message, &sig).is_ok());
                    // Every altered input fails in both.
                    let mut bad = sig.clone();
                    bad[usize::from(i) * 31 % sig.len()] ^= 0x01;
                    assert!(!public.verify(hash, &message, &bad));
                    assert!(c.verify(ring_alg, &message, &bad).is_err());
                    let mut other = message.clone();
                    other.push(0);
                    assert!(!public.verify(hash, &other, &sig));
                    let wrong_hash = if hash == Hash::Sha256 {
                        Hash::Sha512
                    } else {
                        Hash::Sha256
                    };
                    assert!(!public.verify(wrong_hash, &message, &sig));
                }
            }
        }
    }

    #[test]
    fn pss_agrees_with_ring() {
        for der in [RSA_A, RSA_B] {
            let (pair, public) = key(der);
            let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
            for (hash, sign_alg, ring_alg) in [
                (
                    Hash::Sha256,
                    &signature::RSA_PSS_SHA256,
                    &signature::RSA_PSS_2048_8192_SHA256,
                ),
                (
                    Hash::Sha384,
                    &signature::RSA_PSS_SHA384,
                    &signature::RSA_PSS_2048_8192_SHA384,
                ),
                (
                    Hash::Sha512,
                    &signature::RSA_PSS_SHA512,
                    &signature::RSA_PSS_2048_8192_SHA512,
                ),
            ] {
                for i in 0..6u8 {
                    let message = vec![i; 3 + usize::from(i) * 51];
                    let mut sig = vec![0u8; pair.public().modulus_len()];
                    pair.sign(sign_alg, &SystemRandom::new(), &message, &mut sig)
                        .unwrap();
                    assert!(public.verify_pss(hash, &message, &sig), "{hash:?} #{i}");
                    assert!(c.verify(ring_alg, &message, &sig).is_ok());
                    // PKCS#1 and PSS are not interchangeable.
                    assert!(!public.verify(hash, &message, &sig));
                    let mut bad = sig.clone();
                    bad[usize::from(i) * 41 % sig.len()] ^= 0x80;
                    assert!(!public.verify_pss(hash, &message, &bad));
                    assert!(c.verify(ring_alg, &message, &bad).is_err());
                    let mut other = message.clone();
                    other.push(1);
                    assert!(!public.verify_pss(hash, &other, &sig));
                }
                let pkcs1 = sign(&pair, hash, b"m");
                assert!(!public.verify_pss(hash, b"m", &pkcs1));
            }
        }
    }

    #[test]
    fn another_keys_signature_and_malformed_signatures_fail() {
        let (pair_a, public_a) = key(RSA_A);
        let (pair_b, _) = key(RSA_B);
        let message = b"eyJhbGciOiJSUzI1NiJ9.e30";
        let sig_b = sign(&pair_b, Hash::Sha256, message);
        assert!(!public_a.verify(Hash::Sha256, message, &sig_b));
        let sig = sign(&pair_a, Hash::Sha256, message);
        assert!(!public_a.verify(Hash::Sha256, message, &sig[1..]));
        let mut longer = vec![0u8];
        longer.extend_from_slice(&sig);
        assert!(!public_a.verify(Hash::Sha256, message, &longer));
        // A "signature" equal to the modulus (or above) is not a number mod n.
        let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair_a.public());
        assert!(!public_a.verify(Hash::Sha256, message, &c.n));
        assert!(!public_a.verify(Hash::Sha256, message, &vec![0xff; sig.len()]));
        assert!(!public_a.verify(Hash::Sha256, message, &vec![0x00; sig.len()]));
        // 1^e = 1: never a valid encoding.
        let mut one = vec![0u8; sig.len()];
        *one.last_mut().unwrap() = 1;
        assert!(!public_a.verify(Hash::Sha256, message, &one));
    }

    #[test]
    fn keys_ring_would_refuse_are_not_prepared() {
        let (pair, _) = key(RSA_A);
        let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        assert!(PublicKey::new(&c.n[..128], &c.e).is_none(), "1024-bit");
        let mut even = c.n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(PublicKey::new(&even, &c.e).is_none(), "even modulus");
        assert!(PublicKey::new(&c.n, &[1]).is_none(), "e = 1");
        assert!(PublicKey::new(&c.n, &[4]).is_none(), "even e");
        assert!(PublicKey::new(&c.n, &[2, 0, 0, 0, 1]).is_none(), "e ≥ 2^33");
        assert!(
            PublicKey::new(&c.n, &[0, 1, 0, 1]).is_some(),
            "leading zeros"
        );
    }
}
