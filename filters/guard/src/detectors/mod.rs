//! The PII detectors. [`detect`] runs every enabled one over one segment (a run of bytes no
//! finding crosses: a JSON string's text between escapes, a number, a line of text) in one
//! pass: each byte is looked at once for the few characters a finding can start with.

mod card;
mod email;
mod iban;
mod ip;
mod numeric;
mod phone;
mod secret;
mod ssn;

pub use card::luhn_valid;
pub use iban::iban_valid;

/// A finding's type. `Field` is a value of a deny-listed JSON field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Ip,
    Jwt,
    ApiKey,
    Secret,
    Field,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Email,
        Kind::Phone,
        Kind::Card,
        Kind::Iban,
        Kind::Ssn,
        Kind::Ip,
        Kind::Jwt,
        Kind::ApiKey,
        Kind::Secret,
        Kind::Field,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::Ssn => "ssn",
            Kind::Ip => "ip",
            Kind::Jwt => "jwt",
            Kind::ApiKey => "api_key",
            Kind::Secret => "secret",
            Kind::Field => "field",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn from_detector(d: nexus_config::guard::Detector) -> Kind {
        use nexus_config::guard::Detector as D;
        match d {
            D::Email => Kind::Email,
            D::Phone => Kind::Phone,
            D::Card => Kind::Card,
            D::Iban => Kind::Iban,
            D::Ssn => Kind::Ssn,
            D::Ip => Kind::Ip,
            D::Jwt => Kind::Jwt,
            D::ApiKey => Kind::ApiKey,
            D::Secret => Kind::Secret,
        }
    }
}

/// A finding within a segment: `seg[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// What a detector knows besides the segment: the JSON field the value belongs to (lower
/// case, empty outside JSON) and which detectors run.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub key: &'a [u8],
    pub enabled: u16,
    /// The field's name says it holds a credential (see [`key_is_credential`]), computed once
    /// per field rather than per value.
    pub credential: bool,
}

/// Does a (lower-case) field name say its value is a credential?
pub fn key_is_credential(key: &[u8]) -> bool {
    secret::key_like(key)
}

impl Context<'_> {
    pub fn on(&self, kind: Kind) -> bool {
        self.enabled & kind.bit() != 0
    }
}

/// Every detector enabled.
pub const ALL_ENABLED: u16 = (1 << 10) - 1;

pub(crate) fn at(seg: &[u8], i: usize) -> u8 {
    seg.get(i).copied().unwrap_or(0)
}

/// Letters, digits and `_`: a finding must not start or end next to one.
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

pub(crate) fn boundary_before(seg: &[u8], i: usize) -> bool {
    i == 0 || !is_word(at(seg, i - 1))
}

pub(crate) fn boundary_after(seg: &[u8], end: usize) -> bool {
    end >= seg.len() || !is_word(at(seg, end))
}

/// Case-insensitive: does `hay` contain any of `words` (given in lower case)? Words of up to
/// three letters count only as whole words (`id` in `order_id`, not in `paid`; `cc` not in
/// `account`), longer ones anywhere (`phone` in `phone_number`).
pub(crate) fn mentions(hay: &[u8], words: &[&str]) -> bool {
    words.iter().any(|w| contains_word(hay, w.as_bytes()))
}

fn contains_word(hay: &[u8], w: &[u8]) -> bool {
    let Some(&first) = w.first() else {
        return false;
    };
    let whole = w.len() <= 3;
    let last = hay.len().saturating_sub(w.len());
    // Compare only where the first letter matches: most positions fail on one byte.
    (0..=last).any(|i| {
        at(hay, i).eq_ignore_ascii_case(&first)
            && hay
                .get(i..i + w.len())
                .is_some_and(|win| win.eq_ignore_ascii_case(w))
            && (!whole
                || (i == 0 || !at(hay, i - 1).is_ascii_alphabetic())
                    && !at(hay, i + w.len()).is_ascii_alphabetic())
    }) && hay.len() >= w.len()
}

/// The end of the word going on at `from`.
fn word_end(seg: &[u8], from: usize) -> usize {
    seg.get(from..)
        .and_then(|rest| rest.iter().position(|b| class(*b) & WORD == 0))
        .map_or(seg.len(), |n| from + n)
}

/// Up to 32 bytes before `start`: where "card", "order #" and the like are written.
pub(crate) fn before(seg: &[u8], start: usize) -> &[u8] {
    seg.get(start.saturating_sub(32)..start).unwrap_or(&[])
}

/// What a byte can start, and whether it is a word byte ([`is_word`]): [`detect`] looks
/// each byte up here instead of dispatching on it.
const NOTHING: u8 = 0;
const AT_SIGN: u8 = 1;
const NUMBER: u8 = 2;
/// A JWT, an API-key prefix or an IBAN.
const TOKEN: u8 = 3;
const COLON: u8 = 4;
const STARTS_MASK: u8 = 7;
const WORD: u8 = 8;

// Built at compile time: an index out of range fails the build, never a request.
#[allow(clippy::indexing_slicing)]
static CLASS: [u8; 256] = {
    let mut t = [NOTHING; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'@' => AT_SIGN,
            b'0'..=b'9' | b'+' | b'(' => NUMBER,
            b'A'..=b'Z' | b'e' | b'g' | b's' | b'r' | b'x' => TOKEN,
            b':' => COLON,
            _ => NOTHING,
        };
        if c.is_ascii_alphanumeric() || c == b'_' {
            t[b] |= WORD;
        }
        b += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    CLASS.get(usize::from(b)).copied().unwrap_or(NOTHING)
}

/// Runs the enabled detectors over `seg`, appending non-overlapping hits in order.
///
/// Numbers and tokens start only at a word boundary, and `@` and `:` are no word bytes, so
/// nothing starts inside a word: each word is looked at by its first byte, and the rest of it
/// skipped whole.
pub fn detect(seg: &[u8], ctx: &Context, out: &mut Vec<Hit>) {
    let first = out.len();
    let mut i = 0;
    let mut last_end = 0;
    while i < seg.len() {
        let c = class(at(seg, i));
        let hit = match c & STARTS_MASK {
            AT_SIGN if ctx.on(Kind::Email) => email::find(seg, i, last_end),
            NUMBER if boundary_before(seg, i) => match numeric::find(seg, i, ctx) {
                Ok(hit) => Some(hit),
                Err(skip) => {
                    i = skip.max(i + 1);
                    continue;
                }
            },
            TOKEN if boundary_before(seg, i) => secret::find_token(seg, i, ctx).or_else(|| {
                if ctx.on(Kind::Iban) {
                    iban::find(seg, i)
                } else {
                    None
                }
            }),
            COLON if ctx.on(Kind::Ip) => ip::find_v6(seg, i, last_end),
            _ => None,
        };
        match hit {
            Some(h) => {
                i = h.end.max(i + 1);
                last_end = h.end;
                out.push(h);
            }
            None if c & WORD != 0 => i = word_end(seg, i + 1),
            None => i += 1,
        }
    }
    if out.len() == first && ctx.on(Kind::Secret) {
        if let Some(h) = secret::find_keyed(seg, ctx.credential) {
            out.push(h);
        }
    }
}
