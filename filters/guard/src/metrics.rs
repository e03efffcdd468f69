//! Counter names, spelled out so no name is built per request.

use nexus_filter_core::Metrics;

use crate::detectors::Kind;
use crate::scan::Scanner;
use crate::Dir;

const REQUEST_FINDINGS: [&str; 10] = [
    "nexus_guard.request.findings.email",
    "nexus_guard.request.findings.phone",
    "nexus_guard.request.findings.card",
    "nexus_guard.request.findings.iban",
    "nexus_guard.request.findings.ssn",
    "nexus_guard.request.findings.ip",
    "nexus_guard.request.findings.jwt",
    "nexus_guard.request.findings.api_key",
    "nexus_guard.request.findings.secret",
    "nexus_guard.request.findings.field",
];
const RESPONSE_FINDINGS: [&str; 10] = [
    "nexus_guard.response.findings.email",
    "nexus_guard.response.findings.phone",
    "nexus_guard.response.findings.card",
    "nexus_guard.response.findings.iban",
    "nexus_guard.response.findings.ssn",
    "nexus_guard.response.findings.ip",
    "nexus_guard.response.findings.jwt",
    "nexus_guard.response.findings.api_key",
    "nexus_guard.response.findings.secret",
    "nexus_guard.response.findings.field",
];

/// `nexus_guard.<direction>.findings.<type>`.
pub fn findings(dir: Dir, kind: Kind) -> &'static str {
    let table = match dir {
        Dir::Request => &REQUEST_FINDINGS,
        Dir::Response => &RESPONSE_FINDINGS,
    };
    table
        .get(kind.index())
        .copied()
        .unwrap_or("nexus_guard.findings")
}

/// Bodies that passed unscanned: over `max_scan_bytes`, or compressed.
pub fn unscanned(dir: Dir) -> &'static str {
    match dir {
        Dir::Request => "nexus_guard.request.unscanned",
        Dir::Response => "nexus_guard.response.unscanned",
    }
}

pub fn redacted(dir: Dir) -> &'static str {
    match dir {
        Dir::Request => "nexus_guard.request.redacted",
        Dir::Response => "nexus_guard.response.redacted",
    }
}

pub fn blocked(dir: Dir) -> &'static str {
    match dir {
        Dir::Request => "nexus_guard.request.blocked",
        Dir::Response => "nexus_guard.response.blocked",
    }
}

pub fn scanned(dir: Dir) -> &'static str {
    match dir {
        Dir::Request => "nexus_guard.request.scanned",
        Dir::Response => "nexus_guard.response.scanned",
    }
}

pub fn count_findings(dir: Dir, s: &Scanner, metrics: &impl Metrics) {
    metrics.increment(scanned(dir), 1);
    for (kind, n) in Kind::ALL.iter().zip(s.counts) {
        if n > 0 {
            metrics.increment(findings(dir, *kind), i64::from(n));
        }
    }
}
