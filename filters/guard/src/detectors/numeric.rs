//! Digit runs: one scan gathers the run (digits with the separators people write numbers
//! with), then the detectors whose shape it has decide, most specific first: an IPv4 address
//! (three dots), an SSN (3-2-4), a payment card (Luhn), a phone number.

use super::{at, card, ip, phone, ssn, Context, Hit, Kind};

/// A run of digits and separators starting at a word boundary.
pub struct Run<'a> {
    pub text: &'a [u8],
    pub start: usize,
    pub end: usize,
    /// The digits alone (at most 24 kept: longer runs are no number we look for).
    pub digits: [u8; 24],
    pub n_digits: usize,
}

impl Run<'_> {
    pub fn digits(&self) -> &[u8] {
        self.digits.get(..self.n_digits).unwrap_or(&[])
    }
    /// Digit-group lengths, split on any separator.
    pub fn groups(&self) -> Vec<usize> {
        self.text
            .split(|b| !b.is_ascii_digit())
            .map(<[u8]>::len)
            .filter(|l| *l > 0)
            .collect()
    }
    /// The separators used between digits, in order (`(`, `)` and `+` not counted).
    pub fn separators(&self) -> impl Iterator<Item = u8> + '_ {
        self.text
            .iter()
            .copied()
            .filter(|b| matches!(b, b' ' | b'-' | b'.' | b'/'))
    }
    pub fn only_digits(&self) -> bool {
        self.text.iter().all(u8::is_ascii_digit)
    }
}

fn run_char(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'/')
}

/// Gathers the run at `start`: no doubled separator, at most 40 bytes, trailing separators
/// and an unbalanced `(` left out.
fn gather(seg: &[u8], start: usize) -> Run<'_> {
    let mut i = start;
    if at(seg, i) == b'+' {
        i += 1;
    }
    let mut digits = [0u8; 24];
    let mut n = 0;
    let mut prev_sep = false;
    while i < seg.len() && i - start < 40 {
        let b = at(seg, i);
        if b.is_ascii_digit() {
            if let Some(d) = digits.get_mut(n) {
                *d = b;
            }
            n += 1;
            prev_sep = false;
        } else if run_char(b) && !(prev_sep && b != b'(' && b != b')') {
            prev_sep = b != b')';
        } else {
            break;
        }
        i += 1;
    }
    while i > start && !at(seg, i - 1).is_ascii_digit() && at(seg, i - 1) != b')' {
        i -= 1;
    }
    let text = seg.get(start..i).unwrap_or(&[]);
    Run {
        text,
        start,
        end: i,
        digits,
        n_digits: n.min(24),
    }
}

/// A hit for the run at `start`, or where to go on scanning.
pub fn find(seg: &[u8], start: usize, ctx: &Context) -> Result<Hit, usize> {
    let run = gather(seg, start);
    let skip = run.end.max(start + 1);
    // A run glued to letters (`A1234`, `v1.2.3.4b`) is an identifier.
    // Fewer than four digits is no address, SSN, card or phone: most numbers in a body
    // (counts, amounts, small ids) end here.
    if run.n_digits < 4 || !super::boundary_after(seg, run.end) || run.n_digits > 23 {
        return Err(skip);
    }
    let hit = |kind| Hit {
        kind,
        start: run.start,
        end: run.end,
    };
    let before = super::before(seg, start);
    if ctx.on(Kind::Ip) && ip::is_v4(&run) {
        return Ok(hit(Kind::Ip));
    }
    if run.text.iter().filter(|b| **b == b'.').count() == 3 && run.separators().all(|s| s == b'.') {
        return Err(skip); // a dotted quad that is no address: a version, not a phone
    }
    if ctx.on(Kind::Ssn) && ssn::is_ssn(&run, ctx.key, before) {
        return Ok(hit(Kind::Ssn));
    }
    if ctx.on(Kind::Card) && card::is_card(&run, ctx.key, before) {
        return Ok(hit(Kind::Card));
    }
    if ctx.on(Kind::Phone) && phone::is_phone(&run, ctx.key, before) {
        return Ok(hit(Kind::Phone));
    }
    Err(skip)
}
