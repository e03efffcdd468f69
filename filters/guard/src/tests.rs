use super::*;
use crate::detectors::{detect, Context, Kind, ALL_ENABLED};
use crate::scan::{scan_all, ScanConfig};
use nexus_filter_core::testing::MemMetrics;

/// The kinds found in `text` as a JSON string value of field `key`.
fn kinds_in(key: &str, text: &str) -> Vec<Kind> {
    let body = serde_json::json!({ key: text }).to_string();
    found(&body)
}

fn found(body: &str) -> Vec<Kind> {
    let config = ScanConfig {
        enabled: ALL_ENABLED,
        ..Default::default()
    };
    let s = scan_all(&config, body.as_bytes(), true, true);
    s.findings.iter().map(|f| f.kind).collect()
}

fn text_kinds(text: &str) -> Vec<Kind> {
    let mut hits = Vec::new();
    let ctx = Context {
        key: b"",
        enabled: ALL_ENABLED,
        credential: false,
    };
    detect(text.as_bytes(), &ctx, &mut hits);
    hits.iter().map(|h| h.kind).collect()
}

#[test]
fn emails_true_and_false_positives() {
    for t in [
        "jane.doe@example.com",
        "a+tag@sub.example.co.uk",
        "x_y@corp-mail.io",
    ] {
        assert_eq!(kinds_in("note", t), [Kind::Email], "{t}");
    }
    for t in [
        "user@localhost",
        "@handle",
        "a@b.c",
        "x@1.2.3",
        "foo@bar",
        ".@x.com",
    ] {
        assert_eq!(kinds_in("note", t), [], "{t}");
    }
    assert_eq!(
        text_kinds("mail me: <bob@example.org>, thanks"),
        [Kind::Email]
    );
}

#[test]
fn phones_true_and_false_positives() {
    for t in [
        "+14155552671",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "020 7946 0958",
        "1-415-555-2671",
    ] {
        assert_eq!(kinds_in("note", t), [Kind::Phone], "{t}");
    }
    // Bare digits are a phone only in a phone field.
    assert_eq!(kinds_in("mobile", "4155552671"), [Kind::Phone]);
    assert_eq!(kinds_in("note", "4155552671"), []);
    // Order ids, dates, versions, amounts and an exchange starting with 1.
    assert_eq!(kinds_in("order_id", "415-555-2671"), []);
    assert_eq!(kinds_in("note", "order #415-555-2671"), []);
    for t in [
        "2024-01-15",
        "1.2.3",
        "19.99",
        "415-155-2671",
        "12/03/2024",
        "+0123456789",
    ] {
        assert_eq!(kinds_in("note", t), [], "{t}");
    }
}

#[test]
fn cards_need_luhn_a_real_prefix_and_no_contrary_context() {
    for t in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "6011111111111117",
        "2223003122003222",
    ] {
        assert_eq!(kinds_in("note", t), [Kind::Card], "{t}");
    }
    // Luhn-valid numbers that are not cards in context.
    assert!(luhn_valid_str("4111111111111111"));
    assert_eq!(kinds_in("order_id", "4111111111111111"), []);
    assert_eq!(kinds_in("note", "invoice 4111111111111111"), []);
    assert_eq!(kinds_in("card_number", "4111111111111111"), [Kind::Card]);
    // Luhn-valid but no scheme issues it; Luhn-invalid; mixed separators.
    assert!(luhn_valid_str("1234567812345670"));
    assert_eq!(kinds_in("note", "1234567812345670"), []);
    assert_eq!(kinds_in("note", "4111111111111112"), []);
    assert_eq!(kinds_in("note", "4111-1111 1111-1111"), []);
    // A JSON number is a card too, and redaction keeps the document valid.
    assert_eq!(found(r#"{"pan": 4111111111111111}"#), [Kind::Card]);
}

fn luhn_valid_str(s: &str) -> bool {
    detectors::luhn_valid(s.as_bytes())
}

#[test]
fn ibans_by_mod_97_and_country_length() {
    for t in [
        "GB82WEST12345698765432",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
    ] {
        assert_eq!(kinds_in("note", t), [Kind::Iban], "{t}");
    }
    for t in [
        "GB82WEST12345698765433",
        "DE8937040044053201300",
        "XX82WEST12345698765432",
        "GB82WEST1234569876543299",
    ] {
        assert_eq!(kinds_in("note", t), [], "{t}");
    }
    assert!(detectors::iban_valid(b"GB82WEST12345698765432"));
}

#[test]
fn ssns_follow_the_issuing_rules() {
    assert_eq!(kinds_in("note", "123-45-6789"), [Kind::Ssn]);
    assert_eq!(kinds_in("note", "123 45 6789"), [Kind::Ssn]);
    assert_eq!(kinds_in("ssn", "123456789"), [Kind::Ssn]);
    assert_eq!(kinds_in("note", "123456789"), []);
    for t in [
        "000-12-3456",
        "666-12-3456",
        "912-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123-45 6789",
    ] {
        assert_eq!(kinds_in("note", t), [], "{t}");
    }
}

#[test]
fn ip_addresses_v4_and_v6() {
    for t in [
        "192.168.1.20",
        "8.8.8.8",
        "2001:db8::8a2e:370:7334",
        "fe80::1ff:fe23:4567:890a",
    ] {
        assert_eq!(kinds_in("note", t), [Kind::Ip], "{t}");
    }
    for t in [
        "256.1.1.1",
        "1.2.3",
        "01.2.3.4",
        "12:30:45",
        "aa:bb:cc:dd:ee:ff",
        "::1",
        "std::vec",
        "v1.2.3.4",
    ] {
        assert_eq!(kinds_in("note", t), [], "{t}");
    }
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn secrets_jwts_keys_and_keyed_entropy() {
    assert_eq!(kinds_in("note", &format!("Bearer {JWT}")), [Kind::Jwt]);
    assert_eq!(kinds_in("note", "eyJhbGciOi.notjwt"), []);
    for t in [
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "xoxb-123456789012-abcdefABCDEF",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
    ] {
        assert_eq!(kinds_in("note", t), [Kind::ApiKey], "{t}");
    }
    for t in ["ghp_short", "AKIA1234", "sk_live_", "skeleton_key_value"] {
        assert_eq!(kinds_in("note", t), [], "{t}");
    }
    assert_eq!(
        kinds_in("client_secret", "q8Z3vN0pR2xL7wK9mB4t"),
        [Kind::Secret]
    );
    assert_eq!(kinds_in("note", "q8Z3vN0pR2xL7wK9mB4t"), []);
    assert_eq!(kinds_in("token_type", "bearer"), []);
    assert_eq!(kinds_in("password", "aaaaaaaaaaaaaaaaaaaa"), []);
}

#[test]
fn field_lists_allow_and_deny() {
    let config = ScanConfig {
        enabled: ALL_ENABLED,
        allow: vec![b"contact".to_vec()],
        deny: vec![b"dob".to_vec()],
    };
    let body = br#"{"contact": "a@example.com", "DOB": "1990-01-01", "other": "b@example.com"}"#;
    let s = scan_all(&config, body, true, true);
    let kinds: Vec<Kind> = s.findings.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::Field, Kind::Email]);
}

#[test]
fn redaction_keeps_json_valid_and_masks_every_finding() {
    let body = format!(
        r#"{{"user": {{"email": "jane@example.com", "card": 4111111111111111, "tags": ["ok", "ssn 123-45-6789"]}}, "t": "{JWT}", "n": 1.5}}"#
    );
    let config = ScanConfig {
        enabled: ALL_ENABLED,
        ..Default::default()
    };
    let s = scan_all(&config, body.as_bytes(), true, true);
    let out = redact::redact(body.as_bytes(), &s.findings);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["user"]["email"], "[REDACTED:email]");
    assert_eq!(v["user"]["card"], "[REDACTED:card]");
    assert_eq!(v["user"]["tags"][1], "ssn [REDACTED:ssn]");
    assert_eq!(v["t"], "[REDACTED:jwt]");
    assert_eq!(v["n"], 1.5);
}

#[test]
fn escapes_split_segments_and_chunking_does_not_change_findings() {
    let body = br#"{"a": "line\nmail: x@example.com\t+14155552671", "b": "4111111111111111"}"#;
    let whole = found(std::str::from_utf8(body).unwrap());
    assert_eq!(whole, [Kind::Email, Kind::Phone, Kind::Card]);
    let config = ScanConfig {
        enabled: ALL_ENABLED,
        ..Default::default()
    };
    for chunk in 1..body.len() {
        let mut s = Scanner::new(true, true);
        for c in body.chunks(chunk) {
            s.feed(&config, c);
        }
        s.finish(&config);
        let kinds: Vec<Kind> = s.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, whole, "chunk {chunk}");
    }
}

#[test]
fn a_long_segment_is_scanned_in_overlapping_windows() {
    let filler = "lorem ipsum ".repeat(2000);
    let text = format!("{filler} x@example.com {filler} 4111111111111111 {filler}");
    let body = serde_json::json!({ "note": text }).to_string();
    assert_eq!(found(&body), [Kind::Email, Kind::Card]);
}

#[test]
fn sanitize_refuses_each_rule_with_its_name() {
    use nexus_config::guard::GuardPolicy;
    let mut p = GuardPolicy::default();
    p.limits.max_headers = 6;
    p.limits.max_url_bytes = 64;
    p.methods = vec!["GET".into(), "POST".into()];
    p.content_types = vec!["application/json".into()];
    let base = [
        (":method", "POST"),
        (":path", "/lake/x"),
        ("content-type", "application/json"),
    ];
    let check = |extra: &[(&str, &str)], path: &str, has_body: bool| {
        let mut h: Vec<(&str, &str)> = base
            .iter()
            .copied()
            .filter(|(n, _)| *n != ":path")
            .collect();
        h.push((":path", path));
        h.extend_from_slice(extra);
        let list: HeaderList = h.into_iter().collect();
        sanitize::check_headers(&p, &list, has_body).err()
    };
    assert_eq!(check(&[], "/lake/x", true), None);
    assert_eq!(
        check(
            &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
            "/x",
            false
        ),
        Some(Refusal::TooManyHeaders)
    );
    assert_eq!(
        check(&[], &format!("/{}", "a".repeat(80)), false),
        Some(Refusal::UrlTooLong)
    );
    assert_eq!(
        check(&[("content-length", "999999999")], "/x", true),
        Some(Refusal::BodyTooLarge)
    );
    assert_eq!(check(&[], "/a%2Fb", false), Some(Refusal::EncodedSlash));
    assert_eq!(check(&[], "/a%5cb", false), Some(Refusal::EncodedSlash));
    assert_eq!(check(&[], "/a/%2e%2E/b", false), Some(Refusal::DotSegment));
    assert_eq!(check(&[], "/a/../b", false), Some(Refusal::DotSegment));
    assert_eq!(check(&[], "/a%00b", false), Some(Refusal::ControlCharacter));
    assert_eq!(check(&[], "/a%zz", false), Some(Refusal::BadEscape));
    assert_eq!(check(&[], "/a/b?x=../%2F", false), None);
    let form = [("content-type", "text/plain")];
    let list: HeaderList = [(":method", "POST"), (":path", "/x")]
        .into_iter()
        .chain(form)
        .collect();
    assert_eq!(
        sanitize::check_headers(&p, &list, true),
        Err(Refusal::UnsupportedContentType)
    );
    let put: HeaderList = [(":method", "PUT"), (":path", "/x")].into_iter().collect();
    assert_eq!(
        sanitize::check_headers(&p, &put, false),
        Err(Refusal::MethodNotAllowed)
    );
    let r = Refusal::EncodedSlash.response("lake");
    assert_eq!(r.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "encoded_slash");
}

#[test]
fn json_limits() {
    assert_eq!(json::check(br#"{"a": [1, 2, {"b": 3}]}"#, 3, 5), Ok(()));
    assert_eq!(
        json::check(br#"{"a": [1, 2, {"b": 3}]}"#, 2, 0),
        Err(json::JsonRefusal::TooDeep)
    );
    assert_eq!(
        json::check(br#"{"a": [1, 2, {"b": 3}]}"#, 0, 4),
        Err(json::JsonRefusal::TooManyFields)
    );
    assert_eq!(json::check(br#"{"a": "x,y,{,["}"#, 1, 1), Ok(()));
    assert_eq!(
        json::check(b"{\"a\": \"\xff\"}", 0, 0),
        Err(json::JsonRefusal::InvalidUtf8)
    );
    assert_eq!(
        json::check(br#"{"a": }"#, 0, 0),
        Err(json::JsonRefusal::Invalid)
    );
    assert_eq!(
        json::check(&[b'['; 1000], 64, 0),
        Err(json::JsonRefusal::TooDeep)
    );
}

const CONFIG: &str = r#"{"rules": [
  {"name": "block", "match": {"path": {"prefix": "/block/"}},
   "policy": {"request": {"action": "block"}, "response": {"action": "redact"}, "max_scan_bytes": 4096}},
  {"name": "detect", "match": {"path": {"prefix": "/detect/"}},
   "policy": {"request": {"action": "detect"}, "response": {"action": "detect"}, "max_scan_bytes": 4096}}
]}"#;

fn headers(method: &str, path: &str, extra: &[(&'static str, &'static str)]) -> HeaderList {
    let mut h = vec![(":method", method), (":path", path), (":authority", "x")];
    h.extend_from_slice(extra);
    h.into_iter().collect()
}

#[test]
fn request_with_pii_is_blocked_naming_types_only() {
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    let mut ex = Exchange::default();
    let h = headers("POST", "/block/x", &[("content-type", "application/json")]);
    assert_eq!(
        guard.on_request_headers(&mut ex, &h, false, &m),
        HeadersStep::Continue
    );
    let body = br#"{"card": "4111 1111 1111 1111", "mail": "a@example.com"}"#;
    assert_eq!(
        guard.on_request_body(&mut ex, 10, false, Vec::new, &m),
        BodyStep::Pause
    );
    let BodyStep::Respond(r) =
        guard.on_request_body(&mut ex, body.len(), true, || body.to_vec(), &m)
    else {
        panic!("not refused");
    };
    assert_eq!(r.status, 422);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("email") && text.contains("card"), "{text}");
    assert!(
        !text.contains("4111") && !text.contains("example.com"),
        "{text}"
    );
    assert_eq!(m.value("nexus_guard.request.blocked"), 1);
    assert_eq!(m.value("nexus_guard.request.findings.card"), 1);
}

#[test]
fn response_is_redacted_and_over_cap_passes_counted() {
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    let mut ex = Exchange::default();
    assert_eq!(
        guard.on_request_headers(&mut ex, &headers("GET", "/block/x", &[]), true, &m),
        HeadersStep::Continue
    );
    let rh = headers("GET", "/", &[("content-type", "application/json")]);
    assert_eq!(
        guard.on_response_headers(&mut ex, &rh, false, &m),
        HeadersStep::ContinueUnsized
    );
    let body = br#"{"email": "a@example.com"}"#;
    let BodyStep::Replace(out) =
        guard.on_response_body(&mut ex, body.len(), true, || body.to_vec(), &m)
    else {
        panic!("not redacted");
    };
    assert_eq!(out, br#"{"email": "[REDACTED:email]"}"#);
    // Over the cap: declared, then discovered while buffering a chunked body.
    let mut ex = Exchange::default();
    guard.on_request_headers(&mut ex, &headers("GET", "/block/x", &[]), true, &m);
    let big = headers(
        "GET",
        "/",
        &[
            ("content-type", "application/json"),
            ("content-length", "5000"),
        ],
    );
    assert_eq!(
        guard.on_response_headers(&mut ex, &big, false, &m),
        HeadersStep::Continue
    );
    let mut ex = Exchange::default();
    guard.on_request_headers(&mut ex, &headers("GET", "/block/x", &[]), true, &m);
    assert_eq!(
        guard.on_response_headers(&mut ex, &rh, false, &m),
        HeadersStep::ContinueUnsized
    );
    assert_eq!(
        guard.on_response_body(&mut ex, 5000, false, Vec::new, &m),
        BodyStep::Continue
    );
    assert_eq!(
        guard.on_response_body(&mut ex, 6000, true, Vec::new, &m),
        BodyStep::Continue
    );
    assert_eq!(m.value("nexus_guard.response.unscanned"), 2);
}

#[test]
fn detect_streams_and_counts() {
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    let mut ex = Exchange::default();
    let h = headers("POST", "/detect/x", &[("content-type", "text/plain")]);
    assert_eq!(
        guard.on_request_headers(&mut ex, &h, false, &m),
        HeadersStep::Continue
    );
    let body = b"call +14155552671 or mail a@example.com";
    for (i, c) in body.chunks(7).enumerate() {
        let last = (i + 1) * 7 >= body.len();
        assert_eq!(
            guard.on_request_body(&mut ex, c.len(), last, || c.to_vec(), &m),
            BodyStep::Continue
        );
    }
    assert_eq!(m.value("nexus_guard.request.findings.phone"), 1);
    assert_eq!(m.value("nexus_guard.request.findings.email"), 1);
}

#[test]
fn invalid_json_request_and_large_body_are_refused() {
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    let mut ex = Exchange::default();
    let h = headers("POST", "/detect/x", &[("content-type", "application/json")]);
    assert_eq!(
        guard.on_request_headers(&mut ex, &h, false, &m),
        HeadersStep::Continue
    );
    assert_eq!(
        guard.on_request_body(&mut ex, 1, false, Vec::new, &m),
        BodyStep::Pause
    );
    let BodyStep::Respond(r) = guard.on_request_body(&mut ex, 3, true, || b"{\"a".to_vec(), &m)
    else {
        panic!("accepted");
    };
    assert_eq!((r.status, r.details.as_str()), (400, "nexus_invalid_json"));
    let small: Guard =
        Guard::from_json(br#"{"default": {"limits": {"max_body_bytes": 10}}}"#).unwrap();
    let mut ex = Exchange::default();
    small.on_request_headers(
        &mut ex,
        &headers("POST", "/", &[("content-type", "application/octet-stream")]),
        false,
        &m,
    );
    assert_eq!(
        small.on_request_body(&mut ex, 8, false, Vec::new, &m),
        BodyStep::Continue
    );
    let BodyStep::Respond(r) = small.on_request_body(&mut ex, 8, true, Vec::new, &m) else {
        panic!("accepted");
    };
    assert_eq!(r.status, 413);
}

#[test]
fn unmatched_requests_are_not_looked_at() {
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    let mut ex = Exchange::default();
    assert_eq!(
        guard.on_request_headers(&mut ex, &headers("GET", "/a%2Fb", &[]), false, &m),
        HeadersStep::Continue
    );
    assert!(!ex.active());
}

#[test]
fn each_decision_is_kept_for_the_audit_log_with_types_never_values() {
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    // A blocked request.
    let mut ex = Exchange::default();
    let h = headers("POST", "/block/x", &[("content-type", "application/json")]);
    guard.on_request_headers(&mut ex, &h, false, &m);
    let body = br#"{"card": "4111 1111 1111 1111", "mail": "a@example.com"}"#;
    guard.on_request_body(&mut ex, body.len(), true, || body.to_vec(), &m);
    let d = ex.take_decisions();
    assert_eq!(
        d,
        [Decision {
            rule: "block".into(),
            direction: Dir::Request,
            outcome: Outcome::Blocked,
            status: Some(422),
            reason: "pii_detected",
            types: vec!["email", "card"],
        }]
    );
    assert!(ex.take_decisions().is_empty(), "taken once");
    // A sanitization refusal.
    let mut ex = Exchange::default();
    let h = headers("GET", "/block/a%2Fb", &[]);
    guard.on_request_headers(&mut ex, &h, true, &m);
    let d = ex.take_decisions();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].outcome, d[0].status), (Outcome::Refused, Some(400)));
    assert_eq!(d[0].reason, "encoded_slash");
    // A streamed detection; a clean body decides nothing.
    for (text, n) in [(&b"call +1 415 555 2671"[..], 1), (b"nothing here", 0)] {
        let mut ex = Exchange::default();
        let h = headers("POST", "/detect/x", &[("content-type", "text/plain")]);
        guard.on_request_headers(&mut ex, &h, false, &m);
        guard.on_request_body(&mut ex, text.len(), true, || text.to_vec(), &m);
        let d = ex.take_decisions();
        assert_eq!(d.len(), n);
        if n == 1 {
            assert_eq!(d[0].outcome, Outcome::Detected);
            assert_eq!(d[0].types, ["phone"]);
        }
    }
}

#[test]
fn audit_refuse_answers_503_to_guarded_requests_while_records_cannot_be_delivered() {
    use nexus_config::audit::{AuditSink, OnUnavailable};
    use nexus_filter_core::audit::{AuditQueue, REFUSED};
    let guard = Guard::from_json(CONFIG.as_bytes()).unwrap();
    let m = MemMetrics::default();
    let mut queue = AuditQueue::new(&AuditSink {
        on_unavailable: OnUnavailable::Refuse,
        ..AuditSink::new("audit")
    });
    let headers_step = |queue: &AuditQueue, path: &str, ex: &mut Exchange| {
        let h = headers("POST", path, &[("content-type", "application/json")]);
        let step = guard.on_request_headers(ex, &h, false, &m);
        audit_gate(ex, step, queue.refusing(), &m)
    };
    // The service took everything so far: requests go on.
    let mut ex = Exchange::default();
    assert_eq!(
        headers_step(&queue, "/block/x", &mut ex),
        HeadersStep::Continue
    );
    // A batch it did not take: guarded requests are refused, before any body.
    queue.push("{}".into(), &m);
    queue.next_batch().unwrap();
    queue.sent(false, &m);
    let mut ex = Exchange::default();
    let HeadersStep::Respond(r) = headers_step(&queue, "/block/x", &mut ex) else {
        panic!("not refused");
    };
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "audit_unavailable");
    assert!(!ex.active(), "a refused request's bodies are not looked at");
    assert_eq!(m.value(REFUSED), 1);
    // A request no policy applies to records nothing: it goes on.
    let mut ex = Exchange::default();
    let h = headers("GET", "/elsewhere", &[]);
    let step = guard.on_request_headers(&mut ex, &h, true, &m);
    assert_eq!(
        audit_gate(&mut ex, step, queue.refusing(), &m),
        HeadersStep::Continue
    );
    // A refusal the guard decided stands, naming its rule.
    let mut ex = Exchange::default();
    let HeadersStep::Respond(r) = headers_step(&queue, "/block/a%2Fb", &mut ex) else {
        panic!("not refused");
    };
    assert_eq!(r.status, 400);
    assert_eq!(m.value(REFUSED), 1);
    // The service takes the retried batch: requests go on again.
    queue.next_batch().unwrap();
    queue.sent(true, &m);
    let mut ex = Exchange::default();
    assert_eq!(
        headers_step(&queue, "/block/x", &mut ex),
        HeadersStep::Continue
    );
    assert!(ex.active());
}
