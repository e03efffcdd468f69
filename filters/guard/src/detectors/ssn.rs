//! US Social Security numbers: `AAA-GG-SSSS` (dashes or spaces) whose parts the SSA could
//! have issued — area not 000, 666 or 900–999, group not 00, serial not 0000 — and nine
//! bare digits only where a field name or preceding words say "ssn". A shaped number in a
//! field named like a part number or code is not one unless "ssn" is said too.

use super::mentions;
use super::numeric::Run;

const CONTEXT: &[&str] = &["ssn", "social", "security number", "taxpayer"];
/// Part numbers and codes share the 3-2-4 shape; their field names say so.
const NEGATIVE: &[&str] = &[
    "part", "sku", "code", "model", "order", "invoice", "ref", "serial", "tracking", "id", "#",
];

pub fn is_ssn(run: &Run, key: &[u8], before: &[u8]) -> bool {
    let d = run.digits();
    if d.len() != 9 {
        return false;
    }
    let shaped = run.groups() == [3, 2, 4]
        && {
            let mut seps = run.separators();
            let first = seps.next();
            matches!(first, Some(b'-') | Some(b' ')) && seps.all(|s| Some(s) == first)
        }
        && !run.text.contains(&b'(');
    let positive = mentions(key, CONTEXT) || mentions(before, CONTEXT);
    let negative = mentions(key, NEGATIVE) || mentions(before, NEGATIVE);
    let bare = run.only_digits() && positive;
    (shaped && (positive || !negative) || bare) && issuable(d)
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0'))
}

fn issuable(d: &[u8]) -> bool {
    let (area, group, serial) = (
        num(d.get(0..3).unwrap_or(&[])),
        num(d.get(3..5).unwrap_or(&[])),
        num(d.get(5..9).unwrap_or(&[])),
    );
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}
