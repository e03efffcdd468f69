//! IBANs: a country code, two check digits and the country's fixed-length BBAN, written solid
//! or in groups of four; valid when the mod-97 check (ISO 7064) gives 1. The length table is
//! SWIFT's IBAN registry for the countries that issue them.

use super::{at, Hit, Kind};

const LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

fn length_of(country: &[u8]) -> Option<usize> {
    LENGTHS
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|(_, l)| *l)
}

/// mod-97 of the IBAN rearranged (first four characters moved to the end, letters as 10–35).
pub fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 5 || length_of(iban.get(..2).unwrap_or(&[])) != Some(iban.len()) {
        return false;
    }
    let rearranged = iban.iter().skip(4).chain(iban.iter().take(4));
    let mut rem = 0u32;
    for &b in rearranged {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return false,
        };
    }
    rem == 1
}

pub fn find(seg: &[u8], start: usize) -> Option<Hit> {
    let head = seg.get(start..start + 4)?;
    let [c1, c2, d1, d2] = [*head.first()?, *head.get(1)?, *head.get(2)?, *head.get(3)?];
    if !(c1.is_ascii_uppercase()
        && c2.is_ascii_uppercase()
        && d1.is_ascii_digit()
        && d2.is_ascii_digit())
    {
        return None;
    }
    let len = length_of(&[c1, c2])?;
    let mut compact = Vec::with_capacity(len);
    let mut i = start;
    // Solid, or groups of four separated by single spaces (the printed form).
    while compact.len() < len && i < seg.len() {
        let b = at(seg, i);
        if b.is_ascii_uppercase() || b.is_ascii_digit() {
            compact.push(b);
            i += 1;
        } else if b == b' ' && compact.len() % 4 == 0 && at(seg, i + 1).is_ascii_alphanumeric() {
            i += 1;
        } else {
            break;
        }
    }
    if !super::boundary_after(seg, i) || !iban_valid(&compact) {
        return None;
    }
    Some(Hit {
        kind: Kind::Iban,
        start,
        end: i,
    })
}
