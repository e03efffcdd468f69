//! Phone numbers. E.164: `+`, a country code not starting with 0, 8–15 digits in all. National
//! formats: North American `(212) 555-0100`, `212-555-0100`, `212.555.0100` (area code and
//! exchange start with 2–9), and trunk-prefixed `0…` numbers of 10–11 digits written in
//! groups (`020 7946 0958`, `030 1234567`). A bare digit string is a phone only in a
//! phone-like field: order ids and timestamps are bare digit strings too. A number in an
//! `order`/`id`/`ref` field is never a phone unless the field also says phone.

use super::mentions;
use super::numeric::Run;

const POSITIVE: &[&str] = &[
    "phone", "tel", "mobile", "cell", "fax", "contact", "call", "sms", "whatsapp",
];
const NEGATIVE: &[&str] = &[
    "part", "code", "model", "order", "invoice", "tracking", "ref", "sku", "id", "serial", "#",
    "no.",
];

pub fn is_phone(run: &Run, key: &[u8], before: &[u8]) -> bool {
    let d = run.digits();
    // Shape first, context last: context costs more and most numbers fail on shape.
    if !(8..=15).contains(&d.len()) {
        return false;
    }
    let shaped = if run.text.first() == Some(&b'+') {
        d.first() != Some(&b'0')
    } else if run.only_digits() {
        (10..=11).contains(&d.len())
    } else if run.separators().any(|s| s == b'/') {
        false // dates
    } else {
        nanp(run) || trunk(run)
    };
    if !shaped {
        return false;
    }
    let positive = mentions(key, POSITIVE) || mentions(before, POSITIVE);
    if run.only_digits() && run.text.first() != Some(&b'+') {
        return positive;
    }
    positive || !(mentions(key, NEGATIVE) || mentions(before, NEGATIVE))
}

fn nanp(run: &Run) -> bool {
    let mut d = run.digits();
    let mut groups = run.groups();
    if d.len() == 11 && d.first() == Some(&b'1') {
        d = d.get(1..).unwrap_or(&[]);
        groups.remove(0);
    }
    d.len() == 10
        && matches!(groups.as_slice(), [3, 3, 4] | [3, 7] | [6, 4])
        && d.first().is_some_and(|b| *b >= b'2')
        && d.get(3).is_some_and(|b| *b >= b'2')
        && (run.text.contains(&b'(') == run.text.contains(&b')'))
}

fn trunk(run: &Run) -> bool {
    let d = run.digits();
    let groups = run.groups();
    (10..=11).contains(&d.len())
        && d.first() == Some(&b'0')
        && d.get(1) != Some(&b'0')
        && groups.len() >= 2
        && groups.iter().all(|g| *g >= 2)
}
