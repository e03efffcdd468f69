//! Secrets: JWTs (three base64url parts, the first two JSON objects, so both start `eyJ`),
//! API keys by their issuers' documented prefixes, and high-entropy values of fields whose
//! name says they hold a credential.

use super::{at, boundary_after, mentions, Context, Hit, Kind};

fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// (prefix, body charset, shortest body, longest body).
struct Prefix {
    prefix: &'static [u8],
    upper_only: bool,
    min: usize,
    max: usize,
}

const fn p(prefix: &'static [u8], upper_only: bool, min: usize, max: usize) -> Prefix {
    Prefix {
        prefix,
        upper_only,
        min,
        max,
    }
}

/// Prefixes documented by their issuers: GitHub tokens, Stripe keys, AWS access key ids,
/// Google API keys, Slack tokens, GitLab personal tokens.
const PREFIXES: &[Prefix] = &[
    p(b"ghp_", false, 36, 40),
    p(b"gho_", false, 36, 40),
    p(b"ghu_", false, 36, 40),
    p(b"ghs_", false, 36, 40),
    p(b"ghr_", false, 36, 40),
    p(b"github_pat_", false, 22, 255),
    p(b"glpat-", false, 20, 64),
    p(b"sk_live_", false, 16, 255),
    p(b"sk_test_", false, 16, 255),
    p(b"rk_live_", false, 16, 255),
    p(b"AKIA", true, 16, 16),
    p(b"ASIA", true, 16, 16),
    p(b"AIza", false, 35, 35),
    p(b"xoxb-", false, 10, 255),
    p(b"xoxp-", false, 10, 255),
    p(b"xoxa-", false, 10, 255),
    p(b"xoxs-", false, 10, 255),
];

pub fn find_token(seg: &[u8], start: usize, ctx: &Context) -> Option<Hit> {
    let first = at(seg, start);
    if first == b'e' && ctx.on(Kind::Jwt) {
        return jwt(seg, start);
    }
    if !ctx.on(Kind::ApiKey) {
        return None;
    }
    let rest = seg.get(start..)?;
    // Most words start with a letter no prefix starts with: compare that byte first.
    let pre = PREFIXES
        .iter()
        .find(|p| p.prefix.first() == Some(&first) && rest.starts_with(p.prefix))?;
    let body_start = start + pre.prefix.len();
    let mut end = body_start;
    while end < seg.len() && end - body_start < pre.max {
        let b = at(seg, end);
        let ok = if pre.upper_only {
            b.is_ascii_uppercase() || b.is_ascii_digit()
        } else {
            b64url(b)
        };
        if !ok {
            break;
        }
        end += 1;
    }
    (end - body_start >= pre.min && boundary_after(seg, end) && at(seg, end) != b'-').then_some(
        Hit {
            kind: Kind::ApiKey,
            start,
            end,
        },
    )
}

/// End of a base64url run starting at `i`.
fn run_end(seg: &[u8], mut i: usize) -> usize {
    while i < seg.len() && b64url(at(seg, i)) {
        i += 1;
    }
    i
}

fn jwt(seg: &[u8], start: usize) -> Option<Hit> {
    if !seg.get(start..)?.starts_with(b"eyJ") {
        return None;
    }
    let h_end = run_end(seg, start);
    if h_end - start < 10 || at(seg, h_end) != b'.' {
        return None;
    }
    let p_start = h_end + 1;
    let p_end = run_end(seg, p_start);
    if p_end - p_start < 10 || !seg.get(p_start..)?.starts_with(b"eyJ") || at(seg, p_end) != b'.' {
        return None;
    }
    // An unsigned token (`alg: none`) has an empty signature.
    let end = run_end(seg, p_end + 1);
    (end >= seg.len() || !matches!(at(seg, end), b'.' | b'=')).then_some(Hit {
        kind: Kind::Jwt,
        start,
        end,
    })
}

const KEY_LIKE: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "private_key",
    "credential",
    "auth",
    "session",
    "signature",
];

/// A whole value under a credential-like field name, when it looks generated: one word of at
/// least 16 token characters, at least three character classes or ≥ 3.5 bits per character.
pub fn key_like(key: &[u8]) -> bool {
    !key.is_empty() && mentions(key, KEY_LIKE)
}

pub fn find_keyed(seg: &[u8], credential: bool) -> Option<Hit> {
    if !credential {
        return None;
    }
    let start = seg.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = seg.len() - seg.iter().rev().position(|b| !b.is_ascii_whitespace())?;
    let v = seg.get(start..end)?;
    let token_char = |b: &u8| b.is_ascii_alphanumeric() || b"+/=_-.~".contains(b);
    if v.len() < 16 || !v.iter().all(token_char) {
        return None;
    }
    let classes = [
        v.iter().any(u8::is_ascii_lowercase),
        v.iter().any(u8::is_ascii_uppercase),
        v.iter().any(u8::is_ascii_digit),
        v.iter().any(|b| !b.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|c| **c)
    .count();
    (classes >= 3 || entropy(v) >= 3.5).then_some(Hit {
        kind: Kind::Secret,
        start,
        end,
    })
}

/// Shannon entropy in bits per byte.
pub fn entropy(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in v {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}
