//! Payment card numbers (PANs): 12–19 digits, written bare or in groups separated by one
//! kind of space or dash, with a valid Luhn check digit and an issuer prefix (IIN) whose
//! scheme issues that length. One random number in ten passes Luhn, so context decides the
//! rest: a number in an `order_id`/`invoice`/`tracking` field or after "order #" is not a
//! card unless "card"/"pan"/"cc" is said too.

use super::mentions;
use super::numeric::Run;

const POSITIVE: &[&str] = &[
    "card", "pan", "cc", "credit", "debit", "visa", "master", "amex", "payment",
];
const NEGATIVE: &[&str] = &[
    "part", "code", "model", "order", "invoice", "tracking", "ref", "sku", "isbn", "id", "serial",
    "account", "#", "no.",
];

pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.iter().rev().enumerate() {
        let mut d = u32::from(b.wrapping_sub(b'0'));
        if d > 9 {
            return false;
        }
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

fn prefix(d: &[u8], n: usize) -> u32 {
    d.iter()
        .take(n)
        .fold(0, |acc, b| acc * 10 + u32::from(b.wrapping_sub(b'0')))
}

/// Does a scheme issue numbers of this prefix and length?
pub fn plausible_iin(d: &[u8]) -> bool {
    let len = d.len();
    let (p1, p2, p3, p4) = (prefix(d, 1), prefix(d, 2), prefix(d, 3), prefix(d, 4));
    match p1 {
        4 => matches!(len, 13 | 16 | 19),              // Visa
        5 if (51..=55).contains(&p2) => len == 16,     // Mastercard
        2 if (2221..=2720).contains(&p4) => len == 16, // Mastercard 2-series
        3 if p2 == 34 || p2 == 37 => len == 15,        // Amex
        3 if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 => {
            (14..=19).contains(&len)
        } // Diners
        3 if (3528..=3589).contains(&p4) => (16..=19).contains(&len), // JCB
        6 if p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) => (16..=19).contains(&len), // Discover
        6 if p2 == 62 => (16..=19).contains(&len), // UnionPay
        5 | 6 => (12..=19).contains(&len),         // Maestro
        _ => false,
    }
}

fn well_grouped(run: &Run) -> bool {
    if run
        .text
        .iter()
        .any(|b| matches!(b, b'(' | b')' | b'.' | b'/'))
    {
        return false;
    }
    let mut seps = run.separators();
    match seps.next() {
        None => true,
        Some(first) => seps.all(|s| s == first) && run.groups().iter().all(|g| (3..=6).contains(g)),
    }
}

pub fn is_card(run: &Run, key: &[u8], before: &[u8]) -> bool {
    let d = run.digits();
    if !(12..=19).contains(&d.len()) || !well_grouped(run) || !luhn_valid(d) || !plausible_iin(d) {
        return false;
    }
    let positive = mentions(key, POSITIVE) || mentions(before, POSITIVE);
    let negative = mentions(key, NEGATIVE) || mentions(before, NEGATIVE);
    positive || !negative
}
