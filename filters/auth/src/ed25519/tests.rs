//! The verifier against `ring` (random keys, messages and signatures, valid and altered, and
//! the small-order and non-canonical encodings) and against Wycheproof's vectors; the
//! arithmetic against identities it must satisfy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::field::{self, Fe};
use super::point::{self, Extended, D, D2, SQRT_M1};
use super::*;

fn ring_verifies(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(msg, sig)
        .is_ok()
}

fn ours_verifies(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    PublicKey::new(key).is_some_and(|k| k.verify(msg, sig))
}

fn random_bytes<const N: usize>(rng: &SystemRandom) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill(&mut b).unwrap();
    b
}

fn fe_random(rng: &SystemRandom) -> Fe {
    field::from_bytes(&random_bytes(rng))
}

// --- arithmetic --------------------------------------------------------------------------------

/// A field element as a big integer (for checking against plain modular arithmetic).
fn fe_value(a: &Fe) -> [u8; 32] {
    field::to_bytes(a)
}

#[test]
fn field_arithmetic() {
    let rng = SystemRandom::new();
    // Constants: d·121666 = −121665, 2d = d + d, √−1² = −1.
    let small = |n: u32| -> Fe {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        field::from_bytes(&b)
    };
    assert!(field::eq(
        &field::mul(&D, &small(121_666)),
        &field::neg(&small(121_665))
    ));
    assert!(field::eq(&D2, &field::add(&D, &D)));
    assert!(field::eq(&field::sqr(&SQRT_M1), &field::neg(&field::ONE)));
    // p itself and p + 1 .. 2²⁵⁵ − 1 encode as their residues.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    assert_eq!(fe_value(&field::from_bytes(&p)), [0u8; 32]);
    let mut p1 = p;
    p1[0] = 0xee;
    assert_eq!(fe_value(&field::from_bytes(&p1)), fe_value(&field::ONE));
    let top = [0xffu8; 32]; // bit 255 ignored: 2²⁵⁵ − 1 = p + 18
    assert_eq!(fe_value(&field::from_bytes(&top)), fe_value(&small(18)));
    let mut pm1 = p;
    pm1[0] = 0xec;
    assert_eq!(fe_value(&field::from_bytes(&pm1)), pm1);
    let m1 = field::from_bytes(&pm1);
    assert!(field::eq(&field::mul(&m1, &m1), &field::ONE));
    for _ in 0..500 {
        let (a, b, c) = (fe_random(&rng), fe_random(&rng), fe_random(&rng));
        // Canonical bytes round-trip.
        let ab = fe_value(&a);
        assert_eq!(fe_value(&field::from_bytes(&ab)), ab);
        assert!(ab[31] < 0x80);
        assert!(field::eq(&field::sqr(&a), &field::mul(&a, &a)));
        assert!(field::eq(
            &field::mul(&field::mul(&a, &b), &c),
            &field::mul(&a, &field::mul(&b, &c))
        ));
        assert!(field::eq(
            &field::mul(&a, &field::add(&b, &c)),
            &field::add(&field::mul(&a, &b), &field::mul(&a, &c))
        ));
        assert!(field::eq(&field::sub(&field::add(&a, &b), &b), &a));
        assert!(field::eq(&field::add(&a, &field::neg(&a)), &field::ZERO));
        if !field::eq(&a, &field::ZERO) {
            assert!(field::eq(&field::mul(&a, &field::invert(&a)), &field::ONE));
        }
        // Long chains of products stay within the limb bounds.
        let mut x = a;
        for _ in 0..20 {
            x = field::sub(&field::mul(&x, &b), &c);
        }
        let mut y = a;
        for _ in 0..20 {
            y = field::add(&field::mul(&y, &b), &field::neg(&c));
        }
        assert!(field::eq(&x, &y));
    }
}

fn base() -> Extended {
    Extended::decode(&B_ENCODED).unwrap()
}

/// `[k]P` by double-and-add over the bits of a 32-byte scalar (the slow reference).
fn scalar_mul_slow(p: &Extended, k: &[u8; 32]) -> Extended {
    let mut acc = point::IDENTITY;
    for i in (0..256).rev() {
        acc = acc.double().to_extended();
        if (k[i / 8] >> (i % 8)) & 1 == 1 {
            acc = acc.add(p);
        }
    }
    acc
}

#[test]
fn tables_and_recoding_agree_with_double_and_add() {
    let rng = SystemRandom::new();
    let b = base();
    assert_eq!(b.encode(), B_ENCODED);
    // [L]B is the identity.
    let mut l = [0u8; 32];
    for (chunk, li) in l.chunks_exact_mut(8).zip(L) {
        chunk.copy_from_slice(&li.to_le_bytes());
    }
    assert_eq!(scalar_mul_slow(&b, &l).encode(), point::IDENTITY.encode());
    let a = scalar_mul_slow(&b, &random_bytes(&rng)).encode();
    let a = Extended::decode(&a).unwrap();
    let ta = point::table(&a, W_A);
    assert_eq!(ta.len(), point::windows(W_A) << (W_A - 1));
    assert_eq!(b_table().len(), point::windows(W_B) << (W_B - 1));
    let mut scalars = vec![[0u8; 32], l, {
        let mut l1 = l;
        l1[0] -= 1;
        l1
    }];
    let mut top = [0xffu8; 32];
    top[31] = 0x1f; // 2²⁵³ − 1
    scalars.push(top);
    for _ in 0..30 {
        let mut k: [u8; 32] = random_bytes(&rng);
        k[31] &= 0x1f;
        scalars.push(k);
    }
    for k in &scalars {
        let d = point::recode(k, W_A);
        let ours = point::multi_mul(&[(&d, &ta, W_A, false)]).unwrap();
        assert_eq!(ours.encode(), scalar_mul_slow(&a, k).encode());
        let neg = point::multi_mul(&[(&d, &ta, W_A, true)]).unwrap();
        assert_eq!(neg.add(&ours).encode(), point::IDENTITY.encode());
        let d = point::recode(k, W_B);
        let ours = point::multi_mul(&[(&d, b_table(), W_B, false)]).unwrap();
        assert_eq!(ours.encode(), scalar_mul_slow(&b, k).encode());
    }
}

#[test]
fn scalar_reduction() {
    let rng = SystemRandom::new();
    // Against a reduction by the identity 2²⁵² ≡ −δ, evaluated with the group: [h mod L]B =
    // [h]B for a 512-bit h written as h_hi·2²⁵⁶ + h_lo.
    let b = base();
    let two256 = {
        // 2²⁵⁶·B = 2·(2²⁵⁵·B)
        let mut k = [0u8; 32];
        k[31] = 0x80;
        scalar_mul_slow(&b, &k).double().to_extended()
    };
    for _ in 0..10 {
        let h: [u8; 64] = random_bytes(&rng);
        let r = reduce_wide(&h);
        assert!(below_l(&r));
        let lo: [u8; 32] = h[..32].try_into().unwrap();
        let hi: [u8; 32] = h[32..].try_into().unwrap();
        let expect = scalar_mul_slow(&two256, &hi).add(&scalar_mul_slow(&b, &lo));
        assert_eq!(scalar_mul_slow(&b, &r).encode(), expect.encode());
    }
    assert_eq!(reduce_wide(&[0; 64]), [0; 32]);
    let mut l64 = [0u8; 64];
    for (chunk, li) in l64.chunks_exact_mut(8).zip(L) {
        chunk.copy_from_slice(&li.to_le_bytes());
    }
    assert_eq!(reduce_wide(&l64), [0; 32]);
    assert!(!below_l(&l64[..32].try_into().unwrap()));
}

// --- against ring ------------------------------------------------------------------------------

struct Tally {
    valid: usize,
    invalid: usize,
}

impl Tally {
    fn check(&mut self, what: &str, key: &[u8], msg: &[u8], sig: &[u8]) {
        let theirs = ring_verifies(key, msg, sig);
        let ours = ours_verifies(key, msg, sig);
        assert_eq!(ours, theirs, "{what}: key {} sig {}", hex(key), hex(sig));
        if ours {
            self.valid += 1;
        } else {
            self.invalid += 1;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `a + b` for 32-byte little-endian numbers (no overflow past 2²⁵⁶ in the uses here).
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    out
}

fn l_bytes() -> [u8; 32] {
    let mut l = [0u8; 32];
    for (chunk, li) in l.chunks_exact_mut(8).zip(L) {
        chunk.copy_from_slice(&li.to_le_bytes());
    }
    l
}

#[test]
fn agrees_with_ring_on_random_and_altered_signatures() {
    let rng = SystemRandom::new();
    let mut t = Tally {
        valid: 0,
        invalid: 0,
    };
    let mut previous: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = None;
    for n in 0..100 {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = pair.public_key().as_ref().to_vec();
        let mut msg = vec![0u8; n * 7 % 300];
        rng.fill(&mut msg).unwrap();
        let sig = pair.sign(&msg).as_ref().to_vec();
        t.check("valid", &key, &msg, &sig);
        assert!(ours_verifies(&key, &msg, &sig));
        // Every byte of the signature altered (a random nonzero xor).
        for i in 0..64 {
            let mut bad = sig.clone();
            let x: [u8; 1] = random_bytes(&rng);
            bad[i] ^= x[0].max(1);
            t.check("byte flipped", &key, &msg, &bad);
        }
        // S + L (the same S mod L, not canonical) and S = L.
        let s: [u8; 32] = sig[32..].try_into().unwrap();
        let mut bad = sig.clone();
        bad[32..].copy_from_slice(&add_le(&s, &l_bytes()));
        t.check("S + L", &key, &msg, &bad);
        bad[32..].copy_from_slice(&l_bytes());
        t.check("S = L", &key, &msg, &bad);
        // Wrong lengths.
        t.check("short", &key, &msg, &sig[..63]);
        t.check("long", &key, &msg, &[&sig[..], &[0]].concat());
        // The message altered, extended, truncated.
        if !msg.is_empty() {
            let mut m = msg.clone();
            m[n % msg.len()] ^= 1;
            t.check("message altered", &key, &m, &sig);
            t.check("message truncated", &key, &msg[..msg.len() - 1], &sig);
        }
        t.check("message extended", &key, &[&msg[..], b"x"].concat(), &sig);
        // Another key's signature, and this signature under another key.
        if let Some((k2, m2, s2)) = &previous {
            t.check("other key's signature", &key, m2, s2);
            t.check("signature under other key", k2, &msg, &sig);
        }
        // The key altered.
        let mut k = key.clone();
        k[n % 32] ^= 1 << (n % 8);
        t.check("key altered", &k, &msg, &sig);
        previous = Some((key, msg, sig));
    }
    println!(
        "ed25519 vs ring: {} valid, {} invalid agree",
        t.valid, t.invalid
    );
    assert!(
        t.valid >= 100 && t.invalid > 7_000,
        "{} {}",
        t.valid,
        t.invalid
    );
}

/// The eight points of small order (identity, order 2, two of order 4, four of order 8) and
/// non-canonical encodings (y ≥ p, x = 0 with the sign bit set), as keys and as R.
fn odd_encodings() -> Vec<[u8; 32]> {
    let h = |s: &str| -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    };
    let mut v = vec![
        h("0100000000000000000000000000000000000000000000000000000000000000"),
        h("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        h("0000000000000000000000000000000000000000000000000000000000000000"),
        h("0000000000000000000000000000000000000000000000000000000000000080"),
        h("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
        h("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
        h("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        h("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
        // Non-canonical: y = p (≡ 0), y = p + 1 (≡ 1), y = 2²⁵⁵ − 1, each with both signs,
        // and the identity and order-2 point with the sign bit set.
        h("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        h("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        h("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        h("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        h("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        h("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        h("0100000000000000000000000000000000000000000000000000000000000080"),
        h("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    ];
    // y = p + 2 .. p + 18 (residues 2..18), both signs.
    for r in 2u8..=18 {
        let mut e = h("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        e[0] = 0xed + r;
        v.push(e);
        e[31] |= 0x80;
        v.push(e);
    }
    v
}

#[test]
fn agrees_with_ring_on_small_order_and_non_canonical_points() {
    let rng = SystemRandom::new();
    let mut t = Tally {
        valid: 0,
        invalid: 0,
    };
    let encodings = odd_encodings();
    let l = l_bytes();
    let mut decoded = 0;
    // A real key too, so R of small order meets a key of large order.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut keys: Vec<Vec<u8>> = encodings.iter().map(|e| e.to_vec()).collect();
    keys.push(pair.public_key().as_ref().to_vec());
    for key in &keys {
        decoded += usize::from(PublicKey::new(key).is_some());
        for r in &encodings {
            for (m, msg) in [&b""[..], &random_bytes::<40>(&rng)].iter().enumerate() {
                // S = 0 (then R = −[k]A, a small-order point a fraction of the time), S = L.
                for s in [[0u8; 32], l] {
                    let sig = [&r[..], &s[..]].concat();
                    t.check(&format!("odd point, message {m}"), key, msg, &sig);
                }
            }
        }
    }
    // A = identity: [S]B − [k]A = [S]B, so R = encode([S]B) verifies any message.
    let identity = &encodings[0];
    for _ in 0..20 {
        let mut s: [u8; 32] = random_bytes(&rng);
        s[31] &= 0x0f;
        let r = point::multi_mul(&[(&point::recode(&s, W_B), b_table(), W_B, false)])
            .unwrap()
            .encode();
        let sig = [&r[..], &s[..]].concat();
        t.check("identity key", identity, b"any", &sig);
        assert!(ours_verifies(identity, b"any", &sig));
        // The same with the identity's non-canonical encoding as the key.
        t.check("identity key, y = p + 1", &encodings[10], b"any", &sig);
    }
    println!(
        "ed25519 vs ring, small-order and non-canonical points: {} keys of {} decode; {} valid, \
         {} invalid agree",
        decoded,
        keys.len(),
        t.valid,
        t.invalid
    );
    assert!(
        t.valid > 20 && t.invalid > 1000,
        "{} {}",
        t.valid,
        t.invalid
    );
}

#[test]
fn random_keys_decode_as_ring_decodes() {
    // ring has no decoding of its own to compare with, but a key that does not decode makes
    // every signature fail in both, and one that does lets S = 0, R = encode(−[k]A) ... which
    // needs k: so compare on signatures R = identity, S = 0, valid iff [k]A = identity.
    let rng = SystemRandom::new();
    let mut t = Tally {
        valid: 0,
        invalid: 0,
    };
    let mut decoded = 0;
    for _ in 0..300 {
        let key: [u8; 32] = random_bytes(&rng);
        decoded += usize::from(PublicKey::new(&key).is_some());
        let sig: [u8; 64] = random_bytes(&rng);
        t.check("random key and signature", &key, b"m", &sig);
    }
    println!("random encodings: {decoded} of 300 decode");
    assert!(decoded > 100 && decoded < 200);
}

#[test]
fn a_key_prepared_again_reuses_its_table() {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let a = PublicKey::new(pair.public_key().as_ref()).unwrap();
    let b = PublicKey::new(pair.public_key().as_ref()).unwrap();
    assert!(Arc::ptr_eq(&a.table, &b.table));
    assert_eq!(a, b);
    assert!(PublicKey::new(&[0u8; 31]).is_none());
}

// --- Wycheproof --------------------------------------------------------------------------------

#[test]
fn wycheproof_ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let (mut valid, mut invalid, mut refused_keys) = (0, 0, 0);
    for group in &set.test_groups {
        let pk: &[u8] = group.key.pk.as_ref();
        let key = PublicKey::new(pk);
        refused_keys += usize::from(key.is_none());
        for test in &group.tests {
            let ours = key.as_ref().is_some_and(|k| k.verify(&test.msg, &test.sig));
            let expected = match test.result {
                wycheproof::TestResult::Valid => true,
                wycheproof::TestResult::Invalid => false,
                wycheproof::TestResult::Acceptable => ring_verifies(pk, &test.msg, &test.sig),
            };
            assert_eq!(
                ours, expected,
                "tc {} ({}): {:?}",
                test.tc_id, test.comment, test.flags
            );
            assert_eq!(ours, ring_verifies(pk, &test.msg, &test.sig));
            if ours {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
    }
    println!(
        "Wycheproof Ed25519: {} groups ({refused_keys} keys refused), {valid} valid and {invalid} \
         invalid vectors agree",
        set.test_groups.len()
    );
    assert_eq!(valid + invalid, set.number_of_tests);
    assert!(valid > 50 && invalid > 50, "{valid} {invalid}");
}
