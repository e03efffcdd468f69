//! E-mail addresses, found from their `@`: a local part of RFC 5322's unquoted characters
//! (no leading, trailing or doubled dot) and a domain of at least two labels whose last is
//! alphabetic (a TLD), which is what tells `user@host.example` from `a@b` or `x@1.2`.

use super::{at, is_word, Hit, Kind};

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

fn label_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

pub fn find(seg: &[u8], at_sign: usize, floor: usize) -> Option<Hit> {
    let mut start = at_sign;
    while start > floor && at_sign - start < 64 && local_char(at(seg, start - 1)) {
        start -= 1;
    }
    // A quote-like `'` or a dot cannot open the local part.
    while start < at_sign && matches!(at(seg, start), b'.' | b'\'') {
        start += 1;
    }
    let local = seg.get(start..at_sign)?;
    if local.is_empty() || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return None;
    }
    let end = domain_end(seg, at_sign + 1)?;
    if end < seg.len() && is_word(at(seg, end)) {
        return None;
    }
    Some(Hit {
        kind: Kind::Email,
        start,
        end,
    })
}

/// The end of a domain starting at `from`, or None when it is not one.
fn domain_end(seg: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let mut labels = 0;
    let mut last_label = (from, from);
    loop {
        let label_start = i;
        while i < seg.len() && label_char(at(seg, i)) && i - from < 253 {
            i += 1;
        }
        if i == label_start || at(seg, label_start) == b'-' || at(seg, i - 1) == b'-' {
            break;
        }
        labels += 1;
        last_label = (label_start, i);
        if at(seg, i) == b'.' && label_char(at(seg, i + 1)) {
            i += 1;
        } else {
            break;
        }
    }
    let tld = seg.get(last_label.0..last_label.1)?;
    let good = labels >= 2 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic);
    good.then_some(last_label.1)
}
