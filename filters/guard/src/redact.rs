//! Masking findings in place. A finding inside a JSON string (or text) becomes
//! `[REDACTED:<type>]`; a bare JSON number becomes the string `"[REDACTED:<type>]"`. Findings
//! never hold a quote, backslash or control byte (those end segments), and the masks hold
//! none either, so a valid JSON body stays valid and valid UTF-8 stays UTF-8.

use crate::scan::Finding;

/// The body with every finding masked; findings must be in order and not overlap.
pub fn redact(body: &[u8], findings: &[Finding]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + findings.len() * 8);
    let mut at = 0;
    for f in findings {
        if f.start < at || f.end > body.len() || f.start > f.end {
            continue; // cannot happen with the scanner's findings; never mask twice
        }
        out.extend_from_slice(body.get(at..f.start).unwrap_or(&[]));
        if !f.in_string {
            out.push(b'"');
        }
        out.extend_from_slice(b"[REDACTED:");
        out.extend_from_slice(f.kind.name().as_bytes());
        out.push(b']');
        if !f.in_string {
            out.push(b'"');
        }
        at = f.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or(&[]));
    out
}
