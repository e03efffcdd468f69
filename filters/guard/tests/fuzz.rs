//! Seeded property tests of the body scanner, the JSON redactor and the whole guard (the
//! workspace has no proptest; a fixed seed keeps every run identical and offline):
//! - any bytes, in any chunking: no panic, and the same findings as one whole scan;
//! - a valid JSON document: the redacted output is valid JSON, with every other value kept;
//! - the guard's callbacks with random sizes and chunkings never panic.

mod support;

use nexus_config::guard::{BodyPolicy, GuardConfig, GuardPolicy, PiiAction};
use nexus_filter_core::testing::MemMetrics;
use nexus_filter_core::HeaderList;
use nexus_guard::detectors::ALL_ENABLED;
use nexus_guard::redact::redact;
use nexus_guard::scan::{scan_all, ScanConfig, Scanner};
use nexus_guard::{BodyStep, Exchange, Guard};
use serde_json::Value;
use support::*;

const CASES: u64 = 1500;

fn config() -> ScanConfig {
    ScanConfig {
        enabled: ALL_ENABLED,
        allow: vec![b"skip".to_vec()],
        deny: vec![b"password".to_vec()],
    }
}

/// A PII value or a fragment of one, to make the detectors work.
fn piece(r: &mut Rng) -> String {
    let v = match r.below(9) {
        0 => email(r),
        1 => card(r),
        2 => iban(r),
        3 => ssn(r),
        4 => jwt(r),
        5 => phone(r),
        6 => ip(r),
        7 => api_key(r),
        _ => words(r, 3),
    };
    if r.chance(20) {
        let cut = r.below(v.len() as u64 + 1) as usize;
        v.get(..cut).unwrap_or(&v).to_string()
    } else {
        v
    }
}

fn json_value(r: &mut Rng, depth: u32) -> Value {
    match r.below(if depth > 4 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => Value::from(r.next() as i64 % 100_000_000_000_000_000),
        2 => Value::from(
            luhn_complete(&format!("4{}", r.digits(14)))
                .parse::<u64>()
                .unwrap_or(0),
        ),
        3 => {
            let mut s = piece(r);
            if r.chance(30) {
                s.push_str(r.pick::<&str>(&["\n", "\"q\"", "\\", "é", "\u{1F600}", "\t", "\u{0}"]));
                s.push_str(&piece(r));
            }
            Value::from(s)
        }
        4 | 5 => {
            let keys = [
                "email", "password", "skip", "note", "card", "id", "token", "phone", "data",
            ];
            let n = r.below(5);
            Value::Object(
                (0..n)
                    .map(|_| ((*r.pick(&keys)).to_string(), json_value(r, depth + 1)))
                    .collect(),
            )
        }
        _ => Value::Array((0..r.below(5)).map(|_| json_value(r, depth + 1)).collect()),
    }
}

fn random_bytes(r: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..r.below(40) {
        match r.below(4) {
            0 => out.extend((0..r.below(20)).map(|_| r.next() as u8)),
            1 => out.extend_from_slice(piece(r).as_bytes()),
            2 => out.extend_from_slice(
                r.one(&["\"", "\\", ":", "{", "}", "[", ",", "\"k\":"])
                    .as_bytes(),
            ),
            _ => out.extend_from_slice(
                serde_json::to_string(&json_value(r, 3))
                    .unwrap_or_default()
                    .as_bytes(),
            ),
        }
    }
    out
}

fn chunked(config: &ScanConfig, body: &[u8], json: bool, r: &mut Rng) -> Vec<(usize, usize)> {
    let mut s = Scanner::new(json, true);
    let mut at = 0;
    while at < body.len() {
        let n = (r.range(1, 64) as usize).min(body.len() - at);
        s.feed(config, &body[at..at + n]);
        at += n;
    }
    s.finish(config);
    s.findings.iter().map(|f| (f.start, f.end)).collect()
}

#[test]
fn any_bytes_in_any_chunking_scan_without_panic_and_alike() {
    let config = config();
    let mut r = Rng::new(1);
    for case in 0..CASES {
        let body = random_bytes(&mut r);
        for json in [true, false] {
            let whole = scan_all(&config, &body, json, true);
            let spans: Vec<(usize, usize)> =
                whole.findings.iter().map(|f| (f.start, f.end)).collect();
            assert_eq!(chunked(&config, &body, json, &mut r), spans, "case {case}");
            for f in &whole.findings {
                assert!(f.start <= f.end && f.end <= body.len(), "case {case}");
            }
            // Redaction of anything (valid JSON or not) never panics.
            let _ = redact(&body, &whole.findings);
        }
    }
}

#[test]
fn redacted_json_stays_valid_json() {
    let config = config();
    let mut r = Rng::new(2);
    let mut redacted = 0;
    for case in 0..CASES {
        let doc = json_value(&mut r, 0);
        let text = if r.chance(50) {
            serde_json::to_string(&doc).unwrap()
        } else {
            serde_json::to_string_pretty(&doc).unwrap()
        };
        let s = scan_all(&config, text.as_bytes(), true, true);
        let out = redact(text.as_bytes(), &s.findings);
        let parsed: Result<Value, _> = serde_json::from_slice(&out);
        assert!(
            parsed.is_ok(),
            "case {case}: {text}\n=> {}",
            String::from_utf8_lossy(&out)
        );
        if !s.findings.is_empty() {
            redacted += 1;
        }
    }
    assert!(
        redacted > CASES / 4,
        "too few documents with findings: {redacted}"
    );
}

#[test]
fn the_guard_survives_random_exchanges() {
    let mut r = Rng::new(3);
    let policies: Vec<GuardPolicy> = [PiiAction::Detect, PiiAction::Redact, PiiAction::Block]
        .into_iter()
        .map(|action| GuardPolicy {
            max_scan_bytes: 4096,
            request: BodyPolicy {
                action,
                ..Default::default()
            },
            response: BodyPolicy {
                action,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let m = MemMetrics::default();
    for case in 0..CASES {
        let policy = r.pick(&policies).clone();
        let guard = Guard::new(&GuardConfig {
            rules: vec![],
            default: Some(policy),
            audit: None,
        })
        .unwrap();
        let body = random_bytes(&mut r);
        let ct = *r.pick(&[
            "application/json",
            "text/plain",
            "",
            "application/octet-stream",
        ]);
        let mut h = vec![(":method", "POST"), (":path", "/x")];
        if !ct.is_empty() {
            h.push(("content-type", ct));
        }
        let headers: HeaderList = h.into_iter().collect();
        let mut ex = Exchange::default();
        guard.on_request_headers(&mut ex, &headers, false, &m);
        let mut buffered = Vec::new();
        let mut at = 0;
        loop {
            let n = (r.range(1, 512) as usize).min(body.len() - at);
            let chunk = &body[at..at + n];
            at += n;
            buffered.extend_from_slice(chunk);
            let eos = at == body.len();
            let all = buffered.clone();
            let step = guard.on_request_body(&mut ex, all.len(), eos, || all, &m);
            if let BodyStep::Replace(out) = &step {
                if serde_json::from_slice::<Value>(&body).is_ok() {
                    assert!(serde_json::from_slice::<Value>(out).is_ok(), "case {case}");
                }
            }
            if step != BodyStep::Pause {
                buffered.clear();
            }
            if eos || !matches!(step, BodyStep::Pause | BodyStep::Continue) {
                break;
            }
        }
    }
}
