//! Hashing and comparing byte strings a machine word at a time.
//!
//! In wasm32 the compiler's `memcmp` walks one byte per iteration and `std`'s default hasher is
//! SipHash; on a bearer token of several hundred bytes, looked up on every request, both show.
//! These are not cryptographic: use them only where a collision costs time, never a wrong
//! answer (keys are compared in full after the hash).

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// A whole 8-byte chunk as one load (a chunk from `chunks_exact(8)` always converts).
fn word8(chunk: &[u8]) -> u64 {
    <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes)
}

/// A tail shorter than 8 bytes, zero-padded.
fn word(chunk: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = chunk.len().min(8);
    b[..n].copy_from_slice(&chunk[..n]);
    u64::from_le_bytes(b)
}

/// FxHash over 8-byte words (the tail zero-padded), with the length mixed in.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(bytes);
    h.finish()
}

/// `a == b`, a word at a time.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (wa.remainder(), wb.remainder());
    wa.zip(wb).all(|(x, y)| word8(x) == word8(y)) && ta == tb
}

/// Whether every byte is ASCII, eight bytes per step: header text almost always is, and this
/// costs wasm about a third of a full UTF-8 validation (which walks four-byte words).
pub fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    words.fold(0u64, |acc, w| acc | word8(w)) & HIGH == 0 && tail.is_ascii()
}

/// FxHash as a [`Hasher`], for maps keyed by short strings (metric names, cache keys).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let words = bytes.chunks_exact(8);
        let tail = words.remainder();
        for w in words {
            self.add(word8(w));
        }
        if !tail.is_empty() {
            self.add(word(tail));
        }
        self.add(bytes.len() as u64);
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// For `HashMap<K, V, FxBuild>`.
pub type FxBuild = BuildHasherDefault<FxHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_matches_slice_equality_at_every_length_and_position() {
        let a: Vec<u8> = (0..40u8).collect();
        for len in 0..a.len() {
            assert!(eq(&a[..len], &a[..len]));
            for at in 0..len {
                let mut b = a[..len].to_vec();
                b[at] ^= 1;
                assert!(!eq(&a[..len], &b), "len {len} differs at {at}");
            }
            assert!(!eq(&a[..len], &a[..len + 1]));
        }
    }

    #[test]
    fn ascii_check_sees_a_high_bit_anywhere() {
        let text = b"authorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig";
        assert!(is_ascii(text));
        for at in 0..text.len() {
            let mut t = text.to_vec();
            t[at] |= 0x80;
            assert!(!is_ascii(&t), "byte {at}");
        }
    }

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let a = b"eyJhbGciOiJSUzI1NiJ9.payload.signature";
        for at in 0..a.len() {
            let mut b = a.to_vec();
            b[at] ^= 1;
            assert_ne!(hash(a), hash(&b), "byte {at}");
        }
        assert_ne!(hash(b"ab"), hash(b"ab\0"));
    }
}
