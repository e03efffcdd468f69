//! IP addresses. IPv4: four decimal octets (no leading zeros: `010.1.1.1` is a version-like
//! string, not what anyone writes for an address). IPv6: found from a `:`, parsed with the
//! standard library's strict parser, which refuses times (`12:30:45`) and MAC addresses.

use super::numeric::Run;
use super::{at, Hit, Kind};

pub fn is_v4(run: &Run) -> bool {
    if run.text.iter().filter(|b| **b == b'.').count() != 3 || !(4..=12).contains(&run.n_digits) {
        return false;
    }
    let parts: Vec<&[u8]> = run.text.split(|b| *b == b'.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.iter().all(u8::is_ascii_digit)
                && (p.len() == 1 || p.first() != Some(&b'0'))
                && std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
                    .is_some_and(|v| v <= 255)
        })
}

fn v6_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

pub fn find_v6(seg: &[u8], colon: usize, floor: usize) -> Option<Hit> {
    let mut start = colon;
    while start > floor && colon - start < 40 && v6_char(at(seg, start - 1)) {
        start -= 1;
    }
    let mut end = colon;
    while end < seg.len() && end - start < 45 && v6_char(at(seg, end)) {
        end += 1;
    }
    while end > colon && at(seg, end - 1) == b'.' {
        end -= 1;
    }
    if !super::boundary_before(seg, start) || !super::boundary_after(seg, end) {
        return None;
    }
    let text = std::str::from_utf8(seg.get(start..end)?).ok()?;
    let colons = text.bytes().filter(|b| *b == b':').count();
    let hex = text.bytes().filter(u8::is_ascii_hexdigit).count();
    // `::1` and `::` are well-known constants, not someone's address.
    if colons < 2 || hex < 4 {
        return None;
    }
    text.parse::<std::net::Ipv6Addr>().ok()?;
    Some(Hit {
        kind: Kind::Ip,
        start,
        end,
    })
}
