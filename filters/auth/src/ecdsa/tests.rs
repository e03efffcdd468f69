//! The verifier against `ring` (random keys, messages and signatures, valid and altered) and
//! against Wycheproof's vectors; the arithmetic against identities it must satisfy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};

use super::field::to_be;
use super::point::{self, Jacobian};
use super::*;

// --- arithmetic --------------------------------------------------------------------------------

fn random_below<const L: usize>(rng: &SystemRandom, m: &Limbs<L>) -> Limbs<L> {
    loop {
        let mut be = vec![0u8; 4 * L];
        rng.fill(&mut be).unwrap();
        let k = from_be::<L>(&be).unwrap();
        if !ge(&k, m) {
            return k;
        }
    }
}

fn montgomery_identities<const L: usize>(m: &Modulus<L>) {
    let rng = SystemRandom::new();
    let mut one = [0u32; L];
    one[0] = 1;
    assert_eq!(m.mont_out(&m.one), one);
    assert_eq!(m.mont_in(&one), m.one);
    for _ in 0..50 {
        let a = random_below(&rng, &m.m);
        let b = random_below(&rng, &m.m);
        assert_eq!(m.mont_out(&m.mont_in(&a)), a);
        // (a·b)·c = a·(b·c), a·(b + c) = a·b + a·c, in Montgomery form.
        let (am, bm) = (m.mont_in(&a), m.mont_in(&b));
        let c = m.mont_in(&random_below(&rng, &m.m));
        assert_eq!(m.mul(&m.mul(&am, &bm), &c), m.mul(&am, &m.mul(&bm, &c)));
        assert_eq!(
            m.mul(&am, &m.add(&bm, &c)),
            m.add(&m.mul(&am, &bm), &m.mul(&am, &c))
        );
        assert_eq!(m.sub(&m.add(&a, &b), &b), a);
        if !is_zero(&a) {
            let inv = m.inv_vartime(&a).unwrap();
            assert_eq!(m.mont_out(&m.mul(&m.mont_in(&a), &m.mont_in(&inv))), one);
            assert_eq!(m.mul(&m.inv_mont(&am).unwrap(), &am), m.one);
        }
    }
    // Edges: m − 1 squared is 1; zero has no inverse.
    let mut m1 = m.m;
    m1[0] -= 1;
    let m1m = m.mont_in(&m1);
    assert_eq!(m.mul(&m1m, &m1m), m.one);
    assert_eq!(m.inv_vartime(&m1).unwrap(), m1);
    assert!(m.inv_vartime(&[0; L]).is_none());
    assert!(m.inv_vartime(&m.m).is_none());
}

#[test]
fn field_and_scalar_arithmetic() {
    montgomery_identities(&P256::P);
    montgomery_identities(&P256::N);
    montgomery_identities(&P384::P);
    montgomery_identities(&P384::N);
    // p ≡ −1 mod 2³² for both primes: the reduction multiplier is the low limb itself.
    assert_eq!(P256::P.m0inv, 1);
    assert_eq!(P384::P.m0inv, 1);
}

/// The sparse-prime reduction agrees with the generic Montgomery product, on random values and
/// on the extremes (0, 1, p − 1, values with long runs of ones and zeros).
fn sparse_matches_generic<C: Curve<L>, const L: usize>() {
    let rng = SystemRandom::new();
    let p = &C::P;
    let mut pm1 = p.m;
    pm1[0] -= 1;
    let mut one = [0u32; L];
    one[0] = 1;
    let mut edges = vec![[0u32; L], one, pm1, p.one, p.rr];
    let mut runs = [0u32; L];
    for (i, x) in runs.iter_mut().enumerate() {
        *x = if i % 2 == 0 { u32::MAX } else { 0 };
    }
    if !ge(&runs, &p.m) {
        edges.push(runs);
    }
    let mut high = [u32::MAX; L];
    sub_in_place_checked(&mut high, &p.m);
    edges.push(high);
    for _ in 0..2000 {
        edges.push(random_below(&rng, &p.m));
    }
    for (i, a) in edges.iter().enumerate() {
        let b = &edges[(i * 7 + 3) % edges.len()];
        assert_eq!(C::mul(a, b), p.mul(a, b), "{a:x?} · {b:x?}");
        assert_eq!(C::sqr(a), p.mul(a, a), "{a:x?}²");
        assert_eq!(C::mul(a, &pm1), p.mul(a, &pm1));
    }
}

fn sub_in_place_checked<const L: usize>(a: &mut Limbs<L>, b: &Limbs<L>) {
    assert!(!field::sub_in_place(a, b));
}

#[test]
fn sparse_reduction_matches_montgomery() {
    sparse_matches_generic::<P256, 8>();
    sparse_matches_generic::<P384, 12>();
}

fn scalar_mul<C: Curve<L>, const L: usize>(table: &[Affine<L>], k: &Limbs<L>) -> Jacobian<L> {
    let d = point::recode::<C, L>(k, C::W_G).unwrap();
    point::multi_mul::<C, L>(&[(&d, table, C::W_G)]).unwrap()
}

fn group_laws<C: Curve<L>, const L: usize>(table: &[Affine<L>]) {
    assert!(point::on_curve::<C, L>(&C::G));
    assert_eq!(table.len(), point::windows(C::BITS, C::W_G) << (C::W_G - 1));
    assert_eq!(table[0], C::G);
    assert!(table.iter().all(point::on_curve::<C, L>));
    // n·G = O, (n − 1)·G = −G, 1·G = G, 2·G = G + G.
    assert!(scalar_mul::<C, L>(table, &C::N.m).is_infinity());
    let mut n1 = C::N.m;
    n1[0] -= 1;
    let minus_g = point::to_affine_batch::<C, L>(&[scalar_mul::<C, L>(table, &n1)]).unwrap();
    assert_eq!(minus_g[0], point::negate::<C, L>(&C::G));
    let mut one = [0u32; L];
    one[0] = 1;
    let g = point::to_affine_batch::<C, L>(&[scalar_mul::<C, L>(table, &one)]).unwrap();
    assert_eq!(g[0], C::G);
    let mut two = [0u32; L];
    two[0] = 2;
    let g2 = point::to_affine_batch::<C, L>(&[scalar_mul::<C, L>(table, &two)]).unwrap();
    assert_eq!(g2[0], table[1]);
    // (a + b)·G = a·G + b·G, through the joint sum with G's table twice.
    let rng = SystemRandom::new();
    for _ in 0..5 {
        let a = random_below(&rng, &C::N.m);
        let b = random_below(&rng, &C::N.m);
        let ab = C::N.add(&a, &b);
        let (da, db) = (
            point::recode::<C, L>(&a, C::W_G).unwrap(),
            point::recode::<C, L>(&b, C::W_G).unwrap(),
        );
        let joint =
            point::multi_mul::<C, L>(&[(&da, table, C::W_G), (&db, table, C::W_G)]).unwrap();
        let direct = scalar_mul::<C, L>(table, &ab);
        let both = point::to_affine_batch::<C, L>(&[joint, direct]).unwrap();
        assert_eq!(both[0], both[1]);
    }
}

#[test]
fn group_laws_hold() {
    group_laws::<P256, 8>(g_table_p256());
    group_laws::<P384, 12>(g_table_p384());
}

/// Σ dᵢ·2^(w·i) back into limbs (9 of them: the top must come out zero).
fn unrecode(d: &[i32], w: usize) -> ([u32; 8], i64) {
    let mut acc = [0i64; 10];
    for (i, di) in d.iter().enumerate() {
        let bit = w * i;
        // Split so that no shifted value leaves its i64.
        acc[bit / 32] += i64::from(*di) << (bit % 32);
    }
    let mut out = [0u32; 8];
    let mut carry = 0i64;
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        let x = a + carry;
        *o = x as u32;
        carry = x >> 32;
    }
    (out, acc[8] + acc[9] + carry)
}

#[test]
fn recoding_is_exact() {
    let rng = SystemRandom::new();
    for w in 4..=7 {
        let half = 1i32 << (w - 1);
        let mut ks: Vec<[u32; 8]> = (0..200)
            .map(|_| random_below(&rng, &[u32::MAX; 8]))
            .collect();
        ks.extend([[u32::MAX; 8], [0; 8], P256::N.m]);
        for k in ks {
            let d = point::recode::<P256, 8>(&k, w).unwrap();
            assert_eq!(d.len(), point::windows(256, w));
            assert!(d.iter().all(|x| (1 - half..=half).contains(x)), "{d:?}");
            assert_eq!(unrecode(&d, w), (k, 0), "w = {w}");
        }
    }
}

#[test]
fn a_point_prepared_again_reuses_its_table() {
    let [p256, _] = suites();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(p256.sign, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(p256.sign, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let (a, b) = (
        PublicKey::new(CurveId::P256, point).unwrap(),
        PublicKey::new(CurveId::P256, point).unwrap(),
    );
    let (Inner::P256(ta), Inner::P256(tb)) = (&a.inner, &b.inner) else {
        panic!("P-256 keys");
    };
    assert!(Arc::ptr_eq(ta, tb));
    assert_eq!(a, b);
    // The same bytes on the other curve are not the same key (and not on it).
    assert!(PublicKey::new(CurveId::P384, point).is_none());
    let sig = pair.sign(&rng, b"m").unwrap();
    assert!(b.verify(b"m", sig.as_ref()));
}

// --- against ring ------------------------------------------------------------------------------

struct Suite {
    curve: CurveId,
    sign: &'static signature::EcdsaSigningAlgorithm,
    verify: &'static signature::EcdsaVerificationAlgorithm,
    n: Vec<u8>,
    p: Vec<u8>,
}

fn suites() -> [Suite; 2] {
    [
        Suite {
            curve: CurveId::P256,
            sign: &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            verify: &signature::ECDSA_P256_SHA256_FIXED,
            n: to_be(&P256::N.m),
            p: to_be(&P256::P.m),
        },
        Suite {
            curve: CurveId::P384,
            sign: &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            verify: &signature::ECDSA_P384_SHA384_FIXED,
            n: to_be(&P384::N.m),
            p: to_be(&P384::P.m),
        },
    ]
}

/// Verdicts of both verifiers over one case (`key`: ours, prepared from `point`, if it could
/// be); panics if they differ. Returns the verdict.
fn agree(
    suite: &Suite,
    point: &[u8],
    key: Option<&PublicKey>,
    message: &[u8],
    sig: &[u8],
    what: &str,
) -> bool {
    let ours = key.is_some_and(|k| k.verify(message, sig));
    let theirs = UnparsedPublicKey::new(suite.verify, point)
        .verify(message, sig)
        .is_ok();
    assert_eq!(
        ours, theirs,
        "{:?} {what}: ours {ours}, ring {theirs}",
        suite.curve
    );
    ours
}

/// `a + b` on big-endian byte strings of one length (wrapping).
fn be_add(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut carry = 0u16;
    for i in (0..a.len()).rev() {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    out
}

fn be_sub(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        out[i] = d as u8;
        borrow = i16::from(d < 0);
    }
    out
}

#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
}

impl Tally {
    fn add(&mut self, verdict: bool) {
        if verdict {
            self.valid += 1;
        } else {
            self.invalid += 1;
        }
    }
}

#[test]
fn agrees_with_ring_p256() {
    // The test profile optimises nexus-auth (workspace Cargo.toml); a release run covers more.
    let [p256, _] = suites();
    against_ring(
        &p256,
        if cfg!(debug_assertions) {
            (12, 20)
        } else {
            (40, 40)
        },
    );
}

#[test]
fn agrees_with_ring_p384() {
    // ring's own P-384 check is the slow side here.
    let [_, p384] = suites();
    against_ring(
        &p384,
        if cfg!(debug_assertions) {
            (6, 14)
        } else {
            (30, 30)
        },
    );
}

/// Random keys, messages and signatures: each valid one, and altered in every way listed, must
/// get ring's verdict.
fn against_ring(suite: &Suite, (keys, per_key): (usize, usize)) {
    let rng = SystemRandom::new();
    {
        let len = suite.n.len();
        let mut t = Tally::default();
        let mut other_sig: Option<(Vec<u8>, Vec<u8>)> = None;
        for k in 0..keys {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(suite.sign, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(suite.sign, pkcs8.as_ref(), &rng).unwrap();
            let point = pair.public_key().as_ref().to_vec();
            let key = PublicKey::new(suite.curve, &point).unwrap();
            for i in 0..per_key {
                let mut lenbuf = [0u8; 1];
                rng.fill(&mut lenbuf).unwrap();
                let mut message = vec![0u8; usize::from(lenbuf[0]) % 120];
                rng.fill(&mut message).unwrap();
                let sig = pair.sign(&rng, &message).unwrap().as_ref().to_vec();
                assert!(key.verify(&message, &sig));
                t.add(agree(suite, &point, Some(&key), &message, &sig, "valid"));
                let (r, s) = sig.split_at(len);
                // Every byte position of r‖s, spread over the run (all of them for key 0).
                let positions: Vec<usize> = if k == 0 && i == 0 {
                    (0..2 * len).collect()
                } else {
                    vec![
                        (k * per_key + i) % (2 * len),
                        (k * 7 + i * 13 + 5) % (2 * len),
                    ]
                };
                for pos in positions {
                    let mut bad = sig.clone();
                    bad[pos] ^= 1 << (i % 8);
                    t.add(agree(
                        suite,
                        &point,
                        Some(&key),
                        &message,
                        &bad,
                        "flipped sig",
                    ));
                }
                if !message.is_empty() {
                    let mut m = message.clone();
                    let pos = (k + i) % m.len();
                    m[pos] ^= 0x80;
                    t.add(agree(
                        suite,
                        &point,
                        Some(&key),
                        &m,
                        &sig,
                        "flipped message",
                    ));
                }
                let mut longer = message.clone();
                longer.push(0);
                t.add(agree(
                    suite,
                    &point,
                    Some(&key),
                    &longer,
                    &sig,
                    "longer message",
                ));
                // r or s replaced by 0, 1, n − 1, n, n + 1, 2^k − 1; r + n (if it fits); n − s
                // (the high/low-s twin: valid for both).
                let zero = vec![0u8; len];
                let mut one = vec![0u8; len];
                one[len - 1] = 1;
                let n_minus_1 = be_sub(&suite.n, &one);
                let n_plus_1 = be_add(&suite.n, &one);
                let ff = vec![0xffu8; len];
                let r_plus_n = be_add(r, &suite.n);
                let neg_s = be_sub(&suite.n, s);
                let cases: [(&str, &[u8], &[u8]); 14] = [
                    ("r = 0", &zero, s),
                    ("s = 0", r, &zero),
                    ("r = 1", &one, s),
                    ("s = 1", r, &one),
                    ("r = n-1", &n_minus_1, s),
                    ("s = n-1", r, &n_minus_1),
                    ("r = n", &suite.n, s),
                    ("s = n", r, &suite.n),
                    ("r = n+1", &n_plus_1, s),
                    ("s = n+1", r, &n_plus_1),
                    ("r = ff..", &ff, s),
                    ("s = ff..", r, &ff),
                    ("r + n", &r_plus_n, s),
                    ("s ↔ r", s, r),
                ];
                for (what, rr, ss) in cases {
                    let mut forged = rr.to_vec();
                    forged.extend_from_slice(ss);
                    t.add(agree(suite, &point, Some(&key), &message, &forged, what));
                }
                let mut twin = r.to_vec();
                twin.extend_from_slice(&neg_s);
                assert!(agree(suite, &point, Some(&key), &message, &twin, "n - s"));
                t.add(true);
                // Wrong lengths.
                t.add(agree(
                    suite,
                    &point,
                    Some(&key),
                    &message,
                    &sig[1..],
                    "short",
                ));
                let mut extra = sig.clone();
                extra.push(0);
                t.add(agree(suite, &point, Some(&key), &message, &extra, "long"));
                t.add(agree(suite, &point, Some(&key), &message, &[], "empty"));
                // Another key's signature of the same message.
                if let Some((m, other)) = &other_sig {
                    t.add(agree(suite, &point, Some(&key), m, other, "other key"));
                }
                other_sig = Some((message.clone(), sig.clone()));
                // The key altered: off the curve, a coordinate ≥ p, infinity, compressed.
                if i == 0 {
                    let mut off = point.clone();
                    off[1 + 2 * len - 1] ^= 1;
                    t.add(agree(
                        suite,
                        &off,
                        PublicKey::new(suite.curve, &off).as_ref(),
                        &message,
                        &sig,
                        "point off the curve",
                    ));
                    let mut off = point.clone();
                    off[1] ^= 0x10;
                    t.add(agree(
                        suite,
                        &off,
                        PublicKey::new(suite.curve, &off).as_ref(),
                        &message,
                        &sig,
                        "x altered",
                    ));
                    let mut big = vec![4u8];
                    big.extend_from_slice(&be_add(&point[1..1 + len], &suite.p));
                    big.extend_from_slice(&point[1 + len..]);
                    t.add(agree(
                        suite,
                        &big,
                        PublicKey::new(suite.curve, &big).as_ref(),
                        &message,
                        &sig,
                        "x + p",
                    ));
                    t.add(agree(
                        suite,
                        &[0],
                        PublicKey::new(suite.curve, &[0]).as_ref(),
                        &message,
                        &sig,
                        "infinity",
                    ));
                    let mut zero_point = vec![4u8];
                    zero_point.extend_from_slice(&vec![0; 2 * len]);
                    t.add(agree(
                        suite,
                        &zero_point,
                        PublicKey::new(suite.curve, &zero_point).as_ref(),
                        &message,
                        &sig,
                        "(0, 0)",
                    ));
                    let mut compressed = vec![2 + (point[2 * len] & 1)];
                    compressed.extend_from_slice(&point[1..1 + len]);
                    t.add(agree(
                        suite,
                        &compressed,
                        PublicKey::new(suite.curve, &compressed).as_ref(),
                        &message,
                        &sig,
                        "compressed",
                    ));
                    let mut tag = point.clone();
                    tag[0] = 6;
                    t.add(agree(
                        suite,
                        &tag,
                        PublicKey::new(suite.curve, &tag).as_ref(),
                        &message,
                        &sig,
                        "hybrid tag",
                    ));
                }
            }
        }
        println!(
            "{:?}: {} cases agree with ring ({} valid, {} invalid)",
            suite.curve,
            t.valid + t.invalid,
            t.valid,
            t.invalid
        );
        assert!(t.valid >= keys * per_key * 2);
        assert!(t.valid + t.invalid >= 1000);
    }
}

// --- Wycheproof --------------------------------------------------------------------------------

fn wycheproof(name: wycheproof::ecdsa::TestName, curve: CurveId) -> (usize, usize) {
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    let (mut valid, mut invalid, mut acceptable, mut refused_keys) = (0, 0, 0, 0);
    for group in &set.test_groups {
        let point: &[u8] = group.key.key.as_ref();
        let key = PublicKey::new(curve, point);
        refused_keys += usize::from(key.is_none());
        for test in &group.tests {
            let ours = key.as_ref().is_some_and(|k| k.verify(&test.msg, &test.sig));
            let expected = match test.result {
                wycheproof::TestResult::Valid => true,
                wycheproof::TestResult::Invalid => false,
                // None in these files; ring and JWS would take them as valid signatures.
                wycheproof::TestResult::Acceptable => {
                    acceptable += 1;
                    ours
                }
            };
            assert_eq!(
                ours, expected,
                "{curve:?} tc {} ({}): {:?}",
                test.tc_id, test.comment, test.flags
            );
            if ours {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
    }
    println!(
        "Wycheproof {curve:?}: {} groups ({refused_keys} keys refused), {valid} valid and \
         {invalid} invalid vectors agree ({acceptable} 'acceptable')",
        set.test_groups.len()
    );
    assert_eq!(valid + invalid, set.number_of_tests);
    (valid, invalid)
}

#[test]
fn wycheproof_p256_sha256_p1363() {
    let (valid, invalid) = wycheproof(
        wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
        CurveId::P256,
    );
    assert!(valid > 100 && invalid > 50, "{valid} {invalid}");
}

#[test]
fn wycheproof_p384_sha384_p1363() {
    let (valid, invalid) = wycheproof(
        wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363,
        CurveId::P384,
    );
    assert!(valid > 100 && invalid > 50, "{valid} {invalid}");
}

fn affine_bytes<C: Curve<L>, const L: usize>(a: &Affine<L>) -> Vec<u8> {
    let mut out = vec![4u8];
    out.extend_from_slice(&to_be(&C::P.mont_out(&a.x)));
    out.extend_from_slice(&to_be(&C::P.mont_out(&a.y)));
    out
}

/// Keys whose table shares points with G's (d = 1, 2, n − 1: Q = G, 2G, −G), so the joint sum
/// meets `P = Q` and `P = −Q` in its additions: the exceptional cases must be computed exactly.
fn special_keys<C: Curve<L>, const L: usize>(suite: &Suite, g: &[Affine<L>]) -> usize {
    let rng = SystemRandom::new();
    let len = 4 * L;
    let mut n1 = C::N.m;
    n1[0] -= 1;
    let mut cases = 0;
    for (d, q) in [(1u32, g[0]), (2, g[1]), (0, point::negate::<C, L>(&g[0]))] {
        let mut scalar = [0u32; L];
        scalar[0] = d;
        let scalar = if d == 0 { n1 } else { scalar };
        let public = affine_bytes::<C, L>(&q);
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            suite.sign,
            &to_be(&scalar),
            &public,
            &rng,
        )
        .unwrap();
        let key = PublicKey::new(suite.curve, &public).unwrap();
        for i in 0..if cfg!(debug_assertions) { 50 } else { 200 } {
            let message = format!("message {i}").into_bytes();
            let sig = pair.sign(&rng, &message).unwrap().as_ref().to_vec();
            assert!(agree(
                suite,
                &public,
                Some(&key),
                &message,
                &sig,
                "special key"
            ));
            let mut bad = sig.clone();
            bad[i % (2 * len)] ^= 4;
            assert!(!agree(
                suite,
                &public,
                Some(&key),
                &message,
                &bad,
                "special key, altered"
            ));
            cases += 2;
        }
    }
    cases
}

#[test]
fn keys_sharing_points_with_the_generator() {
    let [p256, p384] = suites();
    let a = special_keys::<P256, 8>(&p256, g_table_p256());
    let b = special_keys::<P384, 12>(&p384, g_table_p384());
    println!("special keys: {a} P-256 and {b} P-384 cases agree with ring");
}
