//! Correlation ids: `x-request-id` and W3C Trace Context `traceparent`.

use nexus_filter_core::IdGenerator;

/// Accepts what tracing systems and Envoy generate (UUIDs, hex ids, ULIDs) and nothing that
/// could smuggle structure into logs: 1..=128 of `[A-Za-z0-9._-]`.
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `version-traceid-parentid-flags` per W3C Trace Context level 1: lower-case hex, version
/// not `ff`, trace id and parent id not all zeros. Unknown future versions may append fields.
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    if parts.len() < 4 {
        return false;
    }
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.len() != 4) {
        return false;
    }
    hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
}

pub fn uuid_v4(ids: &mut IdGenerator) -> String {
    let hi = ids.next_u64();
    let lo = ids.next_u64();
    let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000; // version 4
    let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000; // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// A new sampled trace: a random non-zero trace id and span id.
pub fn new_traceparent(ids: &mut IdGenerator) -> String {
    let t1 = ids.next_u64();
    let t2 = ids.next_u64() | 1; // never all zeros
    let span = ids.next_u64() | 1;
    format!("00-{t1:016x}{t2:016x}-{span:016x}-01")
}
