//! The nexus-guard filter, host-agnostic.
//!
//! Per request, the first matching rule's policy (or the default) decides:
//! - on request headers, sanitization ([`sanitize`]): limits, methods, content types, paths;
//! - on each body, per direction, what happens to PII ([`detectors`], [`scan`]): `detect`
//!   scans the body as it streams by; `redact` and `block` buffer the body (up to
//!   `max_scan_bytes`) so they can still change or refuse it; a JSON request body is
//!   buffered too, to check its depth, field count, UTF-8 and syntax before it goes on.
//!
//! Proxy-Wasm (ABI 0.2.1, Envoy) always forwards headers before it hands a filter the body:
//! a `Pause` from a headers callback becomes Envoy's StopAllIterationAndWatermark and the
//! body callbacks never run. So headers always continue; where the body may change, its
//! `content-length` is removed first and Envoy frames the new body (chunked). The price: a
//! blocked request's headers have reached the upstream (its body never does, the upstream
//! request is reset), and a blocked response keeps the status already sent, its body
//! replaced by the refusal.
//!
//! A body beyond `max_scan_bytes` passes unscanned and is counted
//! (`nexus_guard.<direction>.unscanned`): the cap bounds the memory and time a request can
//! make the proxy spend, and is visible rather than silent.

// Indexing panics; the filter must not. Tests may index.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod audit;
pub mod detectors;
pub mod json;
pub mod metrics;
pub mod policy;
pub mod redact;
pub mod sanitize;
pub mod scan;

use nexus_config::guard::{GuardConfig, PiiAction};
use nexus_config::ConfigErrors;
use nexus_filter_core::audit::Unavailable;
use nexus_filter_core::{HeaderList, LocalResponse, Metrics};

use detectors::Kind;
use policy::{Direction, Policies, Policy};
use sanitize::Refusal;
use scan::Scanner;

/// Which body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Request,
    Response,
}

/// What the adapter does after a headers callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadersStep {
    Continue,
    /// Continue without `content-length`: the body will be buffered and may change length.
    ContinueUnsized,
    Respond(LocalResponse),
}

/// What the adapter does after a body callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    Continue,
    /// Keep buffering (Envoy's StopIterationAndBuffer).
    Pause,
    /// Replace the whole buffered body (its `content-length` was removed on the headers).
    Replace(Vec<u8>),
    /// Answer locally instead (requests: sanitization or block).
    Respond(LocalResponse),
    /// Replace the response body with this refusal's (responses: block; the status and
    /// headers have already gone out).
    ReplaceResponse(LocalResponse),
}

#[derive(Debug, Default)]
enum Mode {
    #[default]
    Skip,
    Stream(Scanner),
    Buffer {
        json: bool,
    },
}

#[derive(Debug, Default)]
struct Body {
    mode: Mode,
    /// Bytes seen while streaming (the buffered size comes with each callback).
    received: usize,
}

/// A decision the audit log records: the rule, what happened and the finding types, never
/// their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The guard rule (the router rule it is keyed on), `default` for the default policy.
    pub rule: String,
    pub direction: Dir,
    pub outcome: Outcome,
    /// The status of a refusal (`refused`, `blocked`).
    pub status: Option<u16>,
    /// A refusal's error code (`url_too_long`, `pii_detected`); empty for findings.
    pub reason: &'static str,
    pub types: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sanitization refused the request (400/405/413/415).
    Refused,
    /// PII refused the exchange (`block`).
    Blocked,
    Redacted,
    Detected,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::Blocked => "blocked",
            Outcome::Redacted => "redacted",
            Outcome::Detected => "detected",
        }
    }
}

/// One request's state between callbacks.
#[derive(Debug, Default)]
pub struct Exchange {
    policy: Option<usize>,
    request: Body,
    response: Body,
    decisions: Vec<Decision>,
}

impl Exchange {
    /// Does any later callback of this stream have work to do?
    pub fn active(&self) -> bool {
        self.policy.is_some()
    }

    /// The decisions made since the last call, for the audit log.
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.decisions)
    }
}

fn refused(decisions: &mut Vec<Decision>, rule: &str, r: Refusal) {
    decisions.push(Decision {
        rule: rule.to_string(),
        direction: Dir::Request,
        outcome: Outcome::Refused,
        status: Some(r.status()),
        reason: r.rule(),
        types: Vec::new(),
    });
}

/// A configured guard, shared by every request on a worker.
#[derive(Debug)]
pub struct Guard {
    policies: Policies,
}

impl Guard {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let config: GuardConfig = nexus_config::parse(bytes)?;
        Self::new(&config)
    }

    pub fn new(config: &GuardConfig) -> Result<Self, ConfigErrors> {
        let policies = Policies::compile(config).map_err(ConfigErrors)?;
        Ok(Self { policies })
    }

    fn policy(&self, ex: &Exchange) -> Option<&Policy> {
        ex.policy.and_then(|i| self.policies.get(i))
    }

    pub fn on_request_headers(
        &self,
        ex: &mut Exchange,
        headers: &HeaderList,
        end_of_stream: bool,
        metrics: &impl Metrics,
    ) -> HeadersStep {
        ex.policy = self.policies.select(headers);
        let Some(p) = self.policy(ex) else {
            return HeadersStep::Continue;
        };
        if let Err(r) = sanitize::check_headers(&p.config, headers, !end_of_stream) {
            metrics.increment(r.metric(), 1);
            refused(&mut ex.decisions, &p.name, r);
            return HeadersStep::Respond(r.response(&p.name));
        }
        if end_of_stream {
            return HeadersStep::Continue;
        }
        let ct = headers.get("content-type").unwrap_or("");
        let json = json::is_json(ct);
        let limits = &p.config.limits;
        let json_checks = json && (limits.max_json_depth > 0 || limits.max_json_fields > 0);
        let scannable = json || ct.is_empty() || json::is_text(ct);
        let mode = body_mode(&p.request, scannable, json, json_checks);
        // Blocking refuses a body, it never changes one: only redaction resizes a request.
        let resized = p.request.action == PiiAction::Redact;
        start_body(
            &mut ex.request,
            mode,
            resized,
            declared(headers),
            p.max_scan(),
            Dir::Request,
            metrics,
        )
    }

    pub fn on_response_headers(
        &self,
        ex: &mut Exchange,
        headers: &HeaderList,
        end_of_stream: bool,
        metrics: &impl Metrics,
    ) -> HeadersStep {
        let Some(p) = self.policy(ex) else {
            return HeadersStep::Continue;
        };
        if end_of_stream || p.response.action == PiiAction::Off {
            return HeadersStep::Continue;
        }
        let ct = headers.get("content-type").unwrap_or("");
        let json = json::is_json(ct);
        let scannable = json || ct.is_empty() || json::is_text(ct);
        // A compressed body cannot be read here; say so rather than pretend it was scanned.
        let encoded = headers
            .get("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        if scannable && encoded {
            metrics.increment(metrics::unscanned(Dir::Response), 1);
            return HeadersStep::Continue;
        }
        let mode = body_mode(&p.response, scannable, json, false);
        start_body(
            &mut ex.response,
            mode,
            true,
            declared(headers),
            p.max_scan(),
            Dir::Response,
            metrics,
        )
    }

    /// A request body callback: `size` bytes are available (all buffered ones after a
    /// `Pause`); `read` fetches them.
    pub fn on_request_body(
        &self,
        ex: &mut Exchange,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Vec<u8>,
        metrics: &impl Metrics,
    ) -> BodyStep {
        let Some(p) = ex.policy.and_then(|i| self.policies.get(i)) else {
            return BodyStep::Continue;
        };
        let total = match ex.request.mode {
            Mode::Buffer { .. } => size,
            _ => ex.request.received + size,
        };
        let max_body = p.config.limits.max_body_bytes as usize;
        if max_body > 0 && total > max_body {
            let r = Refusal::BodyTooLarge;
            metrics.increment(r.metric(), 1);
            refused(&mut ex.decisions, &p.name, r);
            return BodyStep::Respond(r.response(&p.name));
        }
        let at_end = |body: &[u8], json: bool, decisions: &mut Vec<Decision>| {
            request_end(p, body, json, decisions, metrics)
        };
        on_body(
            &mut ex.request,
            &mut ex.decisions,
            p,
            &p.request,
            Dir::Request,
            size,
            end_of_stream,
            read,
            at_end,
            metrics,
        )
    }

    pub fn on_response_body(
        &self,
        ex: &mut Exchange,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Vec<u8>,
        metrics: &impl Metrics,
    ) -> BodyStep {
        let Some(p) = ex.policy.and_then(|i| self.policies.get(i)) else {
            return BodyStep::Continue;
        };
        let at_end = |body: &[u8], json: bool, decisions: &mut Vec<Decision>| {
            let d = &p.response;
            decide(&p.name, d, Dir::Response, body, json, decisions, metrics)
        };
        on_body(
            &mut ex.response,
            &mut ex.decisions,
            p,
            &p.response,
            Dir::Response,
            size,
            end_of_stream,
            read,
            at_end,
            metrics,
        )
    }
}

/// Fail closed on the audit log (`on_unavailable: refuse`): while records cannot be
/// delivered (`unavailable`), a request a guard policy applies to is answered 503
/// `audit_unavailable` (counted) instead of going on. Every such request may lead to a record
/// (a refusal, or findings in either body, known only once the bodies pass), so all are
/// refused, at the headers, before anything reaches the upstream. A refusal already decided
/// stands: it names the broken rule, and nothing passes either way.
pub fn audit_gate(
    ex: &mut Exchange,
    step: HeadersStep,
    unavailable: Option<Unavailable>,
    metrics: &impl Metrics,
) -> HeadersStep {
    match (unavailable, &step) {
        (Some(why), HeadersStep::Continue | HeadersStep::ContinueUnsized) if ex.active() => {
            // Nothing more happens to this request: its bodies are not looked at.
            ex.policy = None;
            HeadersStep::Respond(why.refusal(metrics))
        }
        _ => step,
    }
}

fn declared(headers: &HeaderList) -> Option<usize> {
    headers
        .get("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
}

/// How a body is handled: buffered when it may change or be refused, streamed when only
/// counted, skipped when there is nothing to do.
fn body_mode(d: &Direction, scannable: bool, json: bool, json_checks: bool) -> Mode {
    match d.action {
        PiiAction::Redact | PiiAction::Block if scannable => Mode::Buffer { json },
        _ if json_checks => Mode::Buffer { json },
        PiiAction::Detect if scannable => Mode::Stream(Scanner::new(json, false)),
        _ => Mode::Skip,
    }
}

/// `resized`: a buffered body may come out with another length.
fn start_body(
    body: &mut Body,
    mode: Mode,
    resized: bool,
    declared: Option<usize>,
    cap: usize,
    dir: Dir,
    metrics: &impl Metrics,
) -> HeadersStep {
    if matches!(mode, Mode::Skip) {
        return HeadersStep::Continue;
    }
    if declared.is_some_and(|n| n > cap) {
        metrics.increment(metrics::unscanned(dir), 1);
        return HeadersStep::Continue;
    }
    let buffering = matches!(mode, Mode::Buffer { .. });
    body.mode = mode;
    if buffering && resized {
        HeadersStep::ContinueUnsized
    } else {
        HeadersStep::Continue
    }
}

#[allow(clippy::too_many_arguments)]
fn on_body(
    body: &mut Body,
    decisions: &mut Vec<Decision>,
    p: &Policy,
    d: &Direction,
    dir: Dir,
    size: usize,
    eos: bool,
    read: impl FnOnce() -> Vec<u8>,
    at_end: impl FnOnce(&[u8], bool, &mut Vec<Decision>) -> BodyStep,
    metrics: &impl Metrics,
) -> BodyStep {
    let cap = p.max_scan();
    match &mut body.mode {
        Mode::Skip => {
            body.received += size;
            BodyStep::Continue
        }
        Mode::Stream(scanner) => {
            body.received += size;
            if body.received > cap {
                metrics.increment(metrics::unscanned(dir), 1);
                body.mode = Mode::Skip;
                return BodyStep::Continue;
            }
            scanner.feed(&d.scan, &read());
            if eos {
                scanner.finish(&d.scan);
                metrics::count_findings(dir, scanner, metrics);
                if scanner.total() > 0 {
                    decisions.push(finding(&p.name, dir, Outcome::Detected, scanner, None));
                }
            }
            BodyStep::Continue
        }
        Mode::Buffer { json } => {
            let json = *json;
            if size > cap {
                metrics.increment(metrics::unscanned(dir), 1);
                body.mode = Mode::Skip;
                return BodyStep::Continue;
            }
            if !eos {
                return BodyStep::Pause;
            }
            body.mode = Mode::Skip;
            at_end(&read(), json, decisions)
        }
    }
}

/// A PII decision: the types found, never the values.
fn finding(
    rule: &str,
    dir: Dir,
    outcome: Outcome,
    s: &Scanner,
    refusal: Option<&LocalResponse>,
) -> Decision {
    Decision {
        rule: rule.to_string(),
        direction: dir,
        outcome,
        status: refusal.map(|r| r.status),
        reason: match (refusal, dir) {
            (None, _) => "",
            (Some(_), Dir::Request) => "pii_detected",
            (Some(_), Dir::Response) => "pii_in_response",
        },
        types: s.kinds().iter().map(|k| k.name()).collect(),
    }
}

/// The whole request body: JSON checks first, then the PII action.
fn request_end(
    p: &Policy,
    body: &[u8],
    json: bool,
    decisions: &mut Vec<Decision>,
    metrics: &impl Metrics,
) -> BodyStep {
    let limits = &p.config.limits;
    if json && (limits.max_json_depth > 0 || limits.max_json_fields > 0) {
        if let Err(e) = json::check(body, limits.max_json_depth, limits.max_json_fields) {
            let r = match e {
                json::JsonRefusal::TooDeep => Refusal::JsonTooDeep,
                json::JsonRefusal::TooManyFields => Refusal::JsonTooManyFields,
                json::JsonRefusal::InvalidUtf8 => Refusal::InvalidUtf8,
                json::JsonRefusal::Invalid => Refusal::InvalidJson,
            };
            metrics.increment(r.metric(), 1);
            refused(decisions, &p.name, r);
            return BodyStep::Respond(r.response(&p.name));
        }
    }
    decide(
        &p.name,
        &p.request,
        Dir::Request,
        body,
        json,
        decisions,
        metrics,
    )
}

/// Scans a whole body and applies the direction's action.
fn decide(
    rule: &str,
    d: &Direction,
    dir: Dir,
    body: &[u8],
    json: bool,
    decisions: &mut Vec<Decision>,
    metrics: &impl Metrics,
) -> BodyStep {
    if d.action == PiiAction::Off {
        return BodyStep::Continue;
    }
    let keep = d.action == PiiAction::Redact;
    let s = scan::scan_all(&d.scan, body, json, keep);
    metrics::count_findings(dir, &s, metrics);
    if s.total() == 0 {
        return BodyStep::Continue;
    }
    match d.action {
        PiiAction::Redact => {
            metrics.increment(metrics::redacted(dir), 1);
            decisions.push(finding(rule, dir, Outcome::Redacted, &s, None));
            BodyStep::Replace(redact::redact(body, &s.findings))
        }
        PiiAction::Block => {
            metrics.increment(metrics::blocked(dir), 1);
            let resp = blocked(dir, &s.kinds());
            decisions.push(finding(rule, dir, Outcome::Blocked, &s, Some(&resp)));
            match dir {
                Dir::Request => BodyStep::Respond(resp),
                Dir::Response => BodyStep::ReplaceResponse(resp),
            }
        }
        _ => {
            decisions.push(finding(rule, dir, Outcome::Detected, &s, None));
            BodyStep::Continue
        }
    }
}

/// The refusal of a body with PII: the finding types, never their values. A request gets
/// 422 (its content, not its credentials, is refused: 403 stays auth's). For a response the
/// body is what replaces the upstream's; its status (502: the upstream answered something the
/// gateway will not pass on) is kept for hosts that can still send it, which Envoy under
/// Proxy-Wasm 0.2.1 cannot (the response headers have gone out).
pub fn blocked(dir: Dir, kinds: &[Kind]) -> LocalResponse {
    let types: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let (status, error, what) = match dir {
        Dir::Request => (422, "pii_detected", "request"),
        Dir::Response => (502, "pii_in_response", "response"),
    };
    let body = serde_json::json!({
        "error": error,
        "detail": format!("the {what} body contains: {}", types.join(", ")),
        "types": types,
    })
    .to_string();
    LocalResponse {
        status,
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: body.into_bytes(),
        details: format!("nexus_{error}"),
    }
}

#[cfg(test)]
mod tests;
