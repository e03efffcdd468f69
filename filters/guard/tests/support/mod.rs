//! A seeded generator of labelled bodies, shared by the corpus and fuzz tests: no data set to
//! download, the same bodies on every machine.

#![allow(dead_code)]

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// splitmix64.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// One of `items`, for static strings (no double reference to undo).
    pub fn one(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len() as u64) as usize]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    pub fn chars(&mut self, n: usize, set: &[u8]) -> String {
        (0..n).map(|_| char::from(*self.pick(set))).collect()
    }
}

pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const FIRST: &[&str] = &[
    "jane", "john", "maria", "li", "olga", "ahmed", "sam", "noor", "kim", "pat",
];
const LAST: &[&str] = &[
    "doe", "smith", "garcia", "wang", "ivanova", "khan", "lee", "berg", "silva",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp-example.io",
    "example.co.uk",
    "uni.example.edu",
];
const WORDS: &[&str] = &[
    "please", "review", "the", "attached", "report", "for", "quarter", "status", "pending",
    "shipment", "customer", "account", "updated", "notes", "meeting", "today",
];

pub fn luhn_complete(partial: &str) -> String {
    // The check digit that makes partial + d Luhn-valid.
    let sum: u32 = partial
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    format!("{partial}{}", (10 - sum % 10) % 10)
}

pub fn email(r: &mut Rng) -> String {
    if r.chance(10) {
        return format!("{}.{}@{}", r.pick(FIRST), r.pick(LAST), r.pick(DOMAINS)).to_uppercase();
    }
    let sep = r.pick(&[".", "_", "", "-"]);
    let tag = if r.chance(15) {
        format!("+{}", r.pick(WORDS))
    } else {
        String::new()
    };
    let n = if r.chance(50) {
        r.below(100).to_string()
    } else {
        String::new()
    };
    format!(
        "{}{sep}{}{n}{tag}@{}",
        r.pick(FIRST),
        r.pick(LAST),
        r.pick(DOMAINS)
    )
}

pub fn card(r: &mut Rng) -> String {
    let (prefix, len) = *r.pick(&[
        ("4", 16),
        ("4", 16),
        ("51", 16),
        ("55", 16),
        ("2221", 16),
        ("34", 15),
        ("37", 15),
        ("6011", 16),
        ("65", 16),
        ("3530", 16),
        ("4", 13),
        ("62", 16),
    ]);
    let body = format!("{prefix}{}", r.digits(len - prefix.len() - 1));
    let pan = luhn_complete(&body);
    match r.below(3) {
        0 => pan,
        n => {
            let sep = if n == 1 { " " } else { "-" };
            let groups: &[usize] = if len == 15 {
                &[4, 6, 5]
            } else if len == 13 {
                &[4, 4, 5]
            } else {
                &[4, 4, 4, 4]
            };
            let mut out = Vec::new();
            let mut at = 0;
            for g in groups {
                out.push(&pan[at..at + g]);
                at += g;
            }
            out.join(sep)
        }
    }
}

fn mod97(s: &str) -> u32 {
    s.bytes().fold(0, |rem, b| match b {
        b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
        _ => (rem * 100 + u32::from(b - b'A' + 10)) % 97,
    })
}

pub fn iban(r: &mut Rng) -> String {
    let (cc, bban) = match r.below(6) {
        0 => (
            "GB",
            format!(
                "{}{}",
                r.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(14)
            ),
        ),
        1 => ("DE", r.digits(18)),
        2 => (
            "FR",
            format!(
                "{}{}{}",
                r.digits(10),
                r.chars(11, UPPER_DIGITS),
                r.digits(2)
            ),
        ),
        3 => (
            "NL",
            format!(
                "{}{}",
                r.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(10)
            ),
        ),
        4 => ("ES", r.digits(20)),
        _ => ("CH", r.digits(17)),
    };
    let check = 98 - mod97(&format!("{bban}{cc}00"));
    let iban = format!("{cc}{check:02}{bban}");
    if r.chance(30) {
        iban.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        iban
    }
}

pub fn ssn(r: &mut Rng) -> String {
    let mut area = r.range(1, 899);
    if area == 666 {
        area = 667;
    }
    let sep = if r.chance(85) { "-" } else { " " };
    format!(
        "{area:03}{sep}{:02}{sep}{:04}",
        r.range(1, 99),
        r.range(1, 9999)
    )
}

fn b64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

pub fn jwt(r: &mut Rng) -> String {
    let alg = r.pick(&["HS256", "RS256", "ES256"]);
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
    let payload = format!(
        r#"{{"sub":"{}","iat":{},"name":"{}"}}"#,
        r.digits(8),
        1_700_000_000 + r.below(1_000_000),
        r.pick(FIRST)
    );
    let sig_len = if *alg == "RS256" { 342 } else { 43 };
    format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes()),
        r.chars(sig_len, B64URL)
    )
}

pub fn phone(r: &mut Rng) -> String {
    let area = r.range(201, 989);
    let exch = r.range(200, 999);
    let line = r.digits(4);
    match r.below(8) {
        5 => format!("+49 30 {}", r.digits(7)),
        6 => format!("{area}.{exch}.{line}"),
        // A local seven-digit number: nothing tells it from any other number; expected misses.
        7 => format!("{exch}-{line}"),
        0 => format!("+1{area}{exch}{line}"),
        1 => format!("({area}) {exch}-{line}"),
        2 => format!("{area}-{exch}-{line}"),
        3 => format!("+44 20 {} {}", r.digits(4), r.digits(4)),
        _ => format!("0{} {}", r.range(20, 99), r.digits(8)),
    }
}

pub fn ip(r: &mut Rng) -> String {
    if r.chance(70) {
        format!(
            "{}.{}.{}.{}",
            r.range(1, 223),
            r.below(256),
            r.below(256),
            r.range(1, 254)
        )
    } else {
        format!(
            "2001:db8:{:x}:{:x}::{:x}",
            r.below(65536),
            r.below(65536),
            r.range(1, 65535)
        )
    }
}

pub fn api_key(r: &mut Rng) -> String {
    match r.below(4) {
        0 => format!("ghp_{}", r.chars(36, ALNUM)),
        1 => format!("AKIA{}", r.chars(16, UPPER_DIGITS)),
        2 => format!("sk_live_{}", r.chars(24, ALNUM)),
        _ => format!("xoxb-{}-{}", r.digits(12), r.chars(24, ALNUM)),
    }
}

pub fn words(r: &mut Rng, n: usize) -> String {
    (0..n).map(|_| *r.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

/// Values that look like PII but are not, with the field they come in.
pub fn distractor(r: &mut Rng) -> (&'static str, String) {
    match r.below(18) {
        // Neutral fields holding numbers shaped like cards, SSNs and phones: some are
        // indistinguishable from PII (Luhn-valid with a real IIN), the honest false positives.
        14 => ("value", r.digits(16)),
        15 => (
            "part",
            format!("{}-{}-{}", r.digits(3), r.digits(2), r.digits(4)),
        ),
        16 => (
            "code",
            format!(
                "{} {} {} {}",
                r.digits(4),
                r.digits(4),
                r.digits(4),
                r.digits(4)
            ),
        ),
        17 => (
            "note",
            format!("{} {} {}", words(r, 2), r.digits(10), words(r, 2)),
        ),
        // A Luhn-valid Visa-shaped number that is an order id.
        0 => ("order_id", luhn_complete(&format!("4{}", r.digits(14)))),
        1 => (
            "invoice",
            format!("INV {}", luhn_complete(&format!("5{}", r.digits(14)))),
        ),
        // Phone-shaped order and tracking ids.
        2 => (
            "order_id",
            format!(
                "{}-{}-{}",
                r.range(200, 999),
                r.range(200, 999),
                r.digits(4)
            ),
        ),
        3 => ("tracking_ref", r.digits(10)),
        4 => (
            "created_at",
            format!(
                "2024-{:02}-{:02}T{:02}:{:02}:00Z",
                r.range(1, 12),
                r.range(1, 28),
                r.below(24),
                r.below(60)
            ),
        ),
        5 => (
            "version",
            format!("{}.{}.{}", r.below(10), r.below(30), r.below(100)),
        ),
        6 => (
            "id",
            format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                r.next() as u32,
                r.below(65536),
                r.below(4096),
                r.below(4096),
                r.next() & 0xffff_ffff_ffff
            ),
        ),
        7 => (
            "amount",
            format!("{}.{:02}", r.below(100_000), r.below(100)),
        ),
        // Checksum-invalid IBAN and a never-issued SSN.
        8 => ("note", {
            let mut i = iban(r).replace(' ', "");
            let last = i.pop();
            i.push(if last == Some('0') { '1' } else { '0' });
            i
        }),
        9 => (
            "note",
            format!("666-{:02}-{:04}", r.range(1, 99), r.range(1, 9999)),
        ),
        10 => ("sha", r.chars(40, b"0123456789abcdef")),
        11 => ("count", r.digits(6)),
        12 => ("token_type", "Bearer".to_string()),
        _ => ("sku", format!("SKU-{}", r.digits(12))),
    }
}
