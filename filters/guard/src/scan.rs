//! The streaming body scanner: bytes in, in any chunking, findings out with absolute offsets.
//!
//! A body is cut into segments no finding crosses — in JSON a string's text between escapes,
//! or a number; in text a run between line breaks, quotes and angle brackets — and each
//! segment goes to [`detect`] once, with the JSON field it belongs to. Only the current
//! segment is held, so memory is bounded whatever the body's size: a segment longer than
//! [`SEGMENT_MAX`] is scanned in windows overlapping by [`OVERLAP`], a finding reported by
//! the window it starts in. The JSON tracking is lenient on purpose: it follows strings and
//! `"key":` pairs and never fails, so a malformed body is scanned as well as it can be.

use crate::detectors::{detect, key_is_credential, Context, Hit, Kind};

pub const SEGMENT_MAX: usize = 8192;
/// Longer than any finding but a pathological JWT.
pub const OVERLAP: usize = 2048;
/// No finding is shorter: `a@b.cd`, `::abcd` (an IPv4 address has 7 bytes, a phone number
/// 8 digits, every other kind more).
const SHORTEST_FINDING: usize = 6;
/// Field names are compared in their first bytes only.
const KEY_MAX: usize = 64;
/// Distinct field names whose judgement is remembered per body.
const JUDGED_MAX: usize = 64;

/// A finding in the body: `body[start..end]`. `in_string`: inside a JSON string (or text);
/// false for a bare JSON number, which redaction replaces whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    pub in_string: bool,
}

/// What a scan looks for; shared by every request of a policy.
#[derive(Debug, Clone, Default)]
pub struct ScanConfig {
    pub enabled: u16,
    /// Lower-case field names.
    pub allow: Vec<Vec<u8>>,
    pub deny: Vec<Vec<u8>>,
}

impl ScanConfig {
    fn allowed(&self, key: &[u8]) -> bool {
        !key.is_empty() && self.allow.iter().any(|a| a.as_slice() == key)
    }
    fn denied(&self, key: &[u8]) -> bool {
        !key.is_empty() && self.deny.iter().any(|d| d.as_slice() == key)
    }
}

#[derive(Debug)]
pub struct Scanner {
    json: bool,
    /// Keep each finding (redaction) or only count them (detect, block).
    keep: bool,
    pub findings: Vec<Finding>,
    pub counts: [u32; Kind::ALL.len()],
    /// Absolute offset of the next byte fed.
    offset: usize,
    seg: Vec<u8>,
    seg_start: usize,
    /// Findings starting before this absolute offset were reported by an earlier window.
    reported: usize,
    in_string: bool,
    /// Bytes of an escape still to skip: the letter after a backslash (1), or a `u`'s four hex digits.
    escape: u8,
    /// The escape letter comes next (a `u` then brings four hex digits).
    escape_letter: bool,
    /// A string just closed: a key if `:` follows, else a value (its bytes are still in `seg`).
    pending: bool,
    key: Vec<u8>,
    /// [`key_is_credential`] of `key`.
    credential: bool,
    /// Field names seen and whether they are credential-like: bodies repeat their field
    /// names (arrays of records), so each is judged once.
    judged: Vec<(Vec<u8>, bool)>,
    /// Where in `judged` the next field name is looked for first: records repeat their
    /// fields in the same order, so that guess is nearly always right.
    next_judged: usize,
    hits: Vec<Hit>,
}

impl Scanner {
    pub fn new(json: bool, keep: bool) -> Self {
        Self {
            json,
            keep,
            findings: Vec::new(),
            counts: [0; Kind::ALL.len()],
            offset: 0,
            seg: Vec::new(),
            seg_start: 0,
            reported: 0,
            in_string: false,
            escape: 0,
            escape_letter: false,
            pending: false,
            key: Vec::new(),
            credential: false,
            judged: Vec::new(),
            next_judged: 0,
            hits: Vec::new(),
        }
    }

    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// The finding types seen, in [`Kind::ALL`] order.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .iter()
            .zip(self.counts)
            .filter(|(_, c)| *c > 0)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn feed(&mut self, config: &ScanConfig, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            // Fast path: runs of plain bytes (a string's text, a number, a line of text) are
            // found with one table lookup per byte and copied whole.
            let stop = self.bulk_stop();
            if stop != 0 {
                let n = if stop == STRING_STOP {
                    quote_or_backslash(rest)
                } else {
                    rest.iter()
                        .position(|b| stops(*b) & stop != 0)
                        .unwrap_or(rest.len())
                };
                if n > 0 && n < SEGMENT_MAX && self.seg.is_empty() {
                    if let Some(after) = self.in_place(config, stop, rest, n) {
                        rest = after;
                        continue;
                    }
                }
                if let Some((run, after)) = rest.split_at_checked(n).filter(|_| n > 0) {
                    self.push_run(config, run);
                    rest = after;
                    continue;
                }
            }
            if self.json {
                self.json_byte(config, b);
            } else {
                self.text_byte(config, b);
            }
            self.offset += 1;
            rest = tail;
        }
    }

    /// A run of `n` plain bytes at the start of `rest` that is a whole segment, ended in this
    /// chunk: handled where it lies instead of copied (most segments of a body are). What
    /// follows it, or None where the general path must take it: the segment held until the
    /// next chunk says whether a string was a key.
    fn in_place<'c>(
        &mut self,
        config: &ScanConfig,
        stop: u8,
        rest: &'c [u8],
        n: usize,
    ) -> Option<&'c [u8]> {
        let (run, after) = rest.split_at_checked(n)?;
        let &end = after.first()?;
        if stop != STRING_STOP {
            // A number or literal, or a line of text: its stop byte flushes nothing more.
            self.seg_start = self.offset;
            self.scan(config, run, stop == TEXT_STOP, n, true);
            self.reported = 0;
            self.offset += n;
            return Some(after);
        }
        if end != b'"' {
            return None; // an escape follows: the string goes on
        }
        let after_quote = after.get(1..)?;
        // A key if the next byte that is not whitespace is `:`.
        let next = after_quote.iter().find(|b| !b.is_ascii_whitespace())?;
        self.seg_start = self.offset;
        if *next == b':' {
            self.set_key(run);
        } else {
            self.scan(config, run, true, n, true);
        }
        self.reported = 0;
        self.in_string = false;
        self.offset += n + 1;
        Some(after_quote)
    }

    /// The [`STOPS`] bit of the bytes that end a plain run in the current state, or 0 where
    /// each byte is handled alone (in an escape; after a string, until `:` or the next value).
    fn bulk_stop(&self) -> u8 {
        match (self.json, self.in_string) {
            (false, _) => TEXT_STOP,
            (true, true) if self.escape == 0 => STRING_STOP,
            (true, false) if !self.pending => VALUE_STOP,
            _ => 0,
        }
    }

    /// Appends plain bytes to the segment, windowing as it fills.
    fn push_run(&mut self, config: &ScanConfig, mut data: &[u8]) {
        while !data.is_empty() {
            if self.seg.is_empty() {
                self.seg_start = self.offset;
            }
            let room = SEGMENT_MAX.saturating_sub(self.seg.len()).max(1);
            let Some((head, tail)) = data.split_at_checked(room.min(data.len())) else {
                break;
            };
            self.seg.extend_from_slice(head);
            self.offset += head.len();
            data = tail;
            if self.seg.len() >= SEGMENT_MAX {
                self.window(config);
            }
        }
    }

    /// The body ended: scans what is held.
    pub fn finish(&mut self, config: &ScanConfig) {
        let in_string = self.pending || self.in_string;
        self.pending = false;
        self.flush(config, in_string);
    }

    fn push(&mut self, config: &ScanConfig, b: u8) {
        if self.seg.is_empty() {
            self.seg_start = self.offset;
        }
        self.seg.push(b);
        if self.seg.len() >= SEGMENT_MAX {
            self.window(config);
        }
    }

    fn text_byte(&mut self, config: &ScanConfig, b: u8) {
        if text_stop(b) {
            self.flush(config, true);
        } else {
            self.push(config, b);
        }
    }

    fn json_byte(&mut self, config: &ScanConfig, b: u8) {
        if self.in_string {
            return self.string_byte(config, b);
        }
        if self.pending {
            if b.is_ascii_whitespace() {
                return;
            }
            self.pending = false;
            if b == b':' {
                self.take_key();
                return;
            }
            self.flush(config, true);
        }
        match b {
            b'"' => {
                self.flush(config, false);
                self.in_string = true;
            }
            b',' | b'{' | b'}' | b'[' | b']' | b':' => {
                self.flush(config, false);
                if b == b'{' || b == b'}' {
                    self.key.clear();
                    self.credential = false;
                }
            }
            b if b.is_ascii_whitespace() => self.flush(config, false),
            _ => self.push(config, b),
        }
    }

    fn string_byte(&mut self, config: &ScanConfig, b: u8) {
        if self.escape > 0 {
            // `\n`, `\"`, `\u00e9`: no part of an escape is part of a finding, and a mask
            // must never land between `\u` and its digits.
            if self.escape_letter && b == b'u' {
                self.escape = 4;
            } else {
                self.escape -= 1;
            }
            self.escape_letter = false;
            return;
        }
        match b {
            b'\\' => {
                self.flush(config, true);
                self.escape = 1;
                self.escape_letter = true;
            }
            b'"' => {
                self.in_string = false;
                self.pending = true;
                if self.seg.is_empty() {
                    self.seg_start = self.offset;
                }
            }
            _ => self.push(config, b),
        }
    }

    fn take_key(&mut self) {
        let seg = std::mem::take(&mut self.seg);
        self.set_key(&seg);
        self.seg = seg;
        self.seg.clear();
        self.reported = 0;
    }

    fn set_key(&mut self, name: &[u8]) {
        self.key.clear();
        self.key
            .extend(name.iter().take(KEY_MAX).map(u8::to_ascii_lowercase));
        self.credential = self.judge_key();
    }

    fn judge_key(&mut self) -> bool {
        let n = self.judged.len();
        let (head, tail) = self.judged.split_at(self.next_judged.min(n));
        if let Some(i) = tail.iter().chain(head).position(|(k, _)| *k == self.key) {
            let i = i + self.next_judged;
            let i = if i >= n { i - n } else { i };
            self.next_judged = i + 1;
            return self.judged.get(i).is_some_and(|(_, c)| *c);
        }
        let c = key_is_credential(&self.key);
        if n < JUDGED_MAX {
            self.judged.push((self.key.clone(), c));
            self.next_judged = n + 1;
        }
        c
    }

    /// Scans the held segment; `in_string` says what it was (a number when false in JSON).
    fn flush(&mut self, config: &ScanConfig, in_string: bool) {
        let in_string = in_string || !self.json;
        if !self.seg.is_empty() {
            let seg = std::mem::take(&mut self.seg);
            self.scan(config, &seg, in_string, seg.len(), true);
            self.seg = seg;
        }
        self.seg.clear();
        self.reported = 0;
    }

    /// A segment grew to [`SEGMENT_MAX`]: scan it, keep the last [`OVERLAP`] bytes.
    fn window(&mut self, config: &ScanConfig) {
        if self.json && !self.in_string {
            // An 8 KiB JSON number or literal holds nothing we look for; drop it.
            self.seg.clear();
            return;
        }
        let cut = self.seg.len().saturating_sub(OVERLAP);
        let seg = std::mem::take(&mut self.seg);
        self.scan(config, &seg, true, cut, false);
        self.seg = seg;
        self.seg.drain(..cut);
        self.seg_start += cut;
        self.reported = self.seg_start;
    }

    /// Scans `seg`, reporting hits that start before `cut` and after what was reported.
    fn scan(&mut self, config: &ScanConfig, seg: &[u8], in_string: bool, cut: usize, whole: bool) {
        if config.allowed(&self.key) {
            return;
        }
        self.hits.clear();
        let denied = whole && config.denied(&self.key);
        if !denied && seg.len() < SHORTEST_FINDING {
            // Most values of a JSON body (small numbers, flags, short words) end here.
            return;
        }
        if denied {
            let len = seg.len();
            self.hits.push(Hit {
                kind: Kind::Field,
                start: 0,
                end: len,
            });
        } else {
            let ctx = Context {
                key: &self.key,
                enabled: config.enabled,
                credential: self.credential,
            };
            detect(seg, &ctx, &mut self.hits);
        }
        let (seg_start, reported, seg_len) = (self.seg_start, self.reported, seg.len());
        for i in 0..self.hits.len() {
            let Some(h) = self.hits.get(i).copied() else {
                break;
            };
            let start = seg_start + h.start;
            if start < reported || h.start >= cut {
                continue;
            }
            // A bare JSON number is replaced whole, so the finding spans all of it.
            let (s, e) = if in_string {
                (h.start, h.end)
            } else {
                (0, seg_len)
            };
            self.record(Finding {
                kind: h.kind,
                start: seg_start + s,
                end: seg_start + e,
                in_string,
            });
        }
    }

    fn record(&mut self, f: Finding) {
        if let Some(c) = self.counts.get_mut(f.kind.index()) {
            *c += 1;
        }
        if self.keep {
            self.findings.push(f);
        }
    }
}

/// Bytes that end a text segment.
fn text_stop(b: u8) -> bool {
    stops(b) & TEXT_STOP != 0
}

/// [`STOPS`] bits: the byte ends a text segment; the plain run of a JSON string; a JSON
/// number or literal (structure, whitespace, a quote).
const TEXT_STOP: u8 = 1;
const STRING_STOP: u8 = 2;
const VALUE_STOP: u8 = 4;

// Built at compile time: an index out of range fails the build, never a request.
#[allow(clippy::indexing_slicing)]
static STOPS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if matches!(c, b'\n' | b'\r' | b'\t' | b'"' | b'<' | b'>' | 0) {
            t[b] |= TEXT_STOP;
        }
        if matches!(c, b'"' | b'\\') {
            t[b] |= STRING_STOP;
        }
        if matches!(c, b'"' | b',' | b'{' | b'}' | b'[' | b']' | b':') || c.is_ascii_whitespace() {
            t[b] |= VALUE_STOP;
        }
        b += 1;
    }
    t
};

/// The index of the first `"` or `\` in `s` (its length if none), eight bytes at a time:
/// the text of JSON strings is most of a JSON body.
fn quote_or_backslash(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: its high bit is set in `zero(x)`; the lowest set bit is exact.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or([0; 8]));
        let found = zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = words.remainder();
    at + tail
        .iter()
        .position(|b| matches!(b, b'"' | b'\\'))
        .unwrap_or(tail.len())
}

fn stops(b: u8) -> u8 {
    STOPS.get(usize::from(b)).copied().unwrap_or(0)
}

/// Scans a whole body at once.
pub fn scan_all(config: &ScanConfig, body: &[u8], json: bool, keep: bool) -> Scanner {
    let mut s = Scanner::new(json, keep);
    s.feed(config, body);
    s.finish(config);
    s
}
