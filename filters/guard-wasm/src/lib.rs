//! nexus-guard, wired to proxy-wasm. Decisions are made in the `nexus-guard` crate; this
//! adapter moves headers and body bytes, keeps each request's [`Exchange`] and, with an
//! `audit` sink configured, hands each decision's record to the [`AuditSender`].

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_config::guard::GuardConfig;
use nexus_filter_core::audit::RequestMeta;
use nexus_filter_core::{HeaderMap, Level, Log};
use nexus_guard::audit;
use nexus_guard::{BodyStep, Exchange, Guard, HeadersStep};
use nexus_proxy_wasm::audit::AuditSender;
use nexus_proxy_wasm::hostcalls::{self, BufferType};
use nexus_proxy_wasm::{apply, parse_config, Action, Filter, HostHeaders, HostLog, HostMetrics};

nexus_proxy_wasm::export_filter!(
    GuardFilter,
    [
        request_headers,
        request_body,
        response_headers,
        response_body,
        stream_end
    ]
);

struct GuardFilter {
    guard: Guard,
    metrics: HostMetrics,
    /// Requests a policy applies to, by context id.
    streams: RefCell<HashMap<u32, Stream>>,
    audit: Option<AuditSender>,
}

struct Stream {
    ex: Exchange,
    /// Who asked, for the audit records (read only with a sink configured).
    meta: RequestMeta,
}

impl GuardFilter {
    /// Queues a record of each decision `ex` made since the last call.
    fn audit(&self, stream: &mut Stream) {
        let Some(sender) = &self.audit else {
            return;
        };
        let decisions = stream.ex.take_decisions();
        if decisions.is_empty() {
            return;
        }
        let time_ms = hostcalls::now_unix_nanos() / 1_000_000;
        for d in &decisions {
            sender.push(audit::record(d, &stream.meta, time_ms), &self.metrics);
        }
    }

    /// Runs `f` on the request's stream (if a policy applies to it), then audits.
    fn with_stream<T>(&self, context: u32, f: impl FnOnce(&mut Exchange) -> T) -> Option<T> {
        let mut streams = self.streams.borrow_mut();
        let stream = streams.get_mut(&context)?;
        let out = f(&mut stream.ex);
        self.audit(stream);
        Some(out)
    }
}

fn headers_step(step: HeadersStep, mut headers: HostHeaders) -> Action {
    match step {
        HeadersStep::Continue => Action::Continue,
        HeadersStep::ContinueUnsized => {
            headers.remove("content-length");
            Action::Continue
        }
        HeadersStep::Respond(r) => apply(nexus_filter_core::Action::Respond(r)),
    }
}

/// Applies a body step to the buffered body of `kind`, `size` bytes long.
fn body_step(step: BodyStep, kind: BufferType, size: usize) -> Action {
    match step {
        BodyStep::Continue => Action::Continue,
        BodyStep::Pause => Action::Pause,
        BodyStep::Replace(body) => replace(kind, size, &body),
        BodyStep::Respond(r) => apply(nexus_filter_core::Action::Respond(r)),
        BodyStep::ReplaceResponse(r) => replace(kind, size, &r.body),
    }
}

fn replace(kind: BufferType, size: usize, body: &[u8]) -> Action {
    if let Err(status) = hostcalls::replace_buffer(kind, size, body) {
        HostLog.log(
            Level::Error,
            &format!("nexus-guard: replacing the body failed: {status}"),
        );
    }
    Action::Continue
}

fn read(kind: BufferType, size: usize) -> Vec<u8> {
    hostcalls::buffer(kind, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Filter for GuardFilter {
    fn configure(_root_id: u32, config: &[u8]) -> Option<Self> {
        let (guard, sink) = parse_config("nexus-guard", config, |bytes| {
            let config: GuardConfig = nexus_config::parse(bytes)?;
            Guard::new(&config).map(|guard| (guard, config.audit))
        })?;
        Some(Self {
            guard,
            metrics: HostMetrics::default(),
            streams: RefCell::new(HashMap::new()),
            audit: sink.map(AuditSender::start),
        })
    }

    fn on_tick(&self) {
        if let Some(sender) = &self.audit {
            sender.flush(&self.metrics);
        }
    }

    fn on_http_call_response(&self, token: u32, status: Option<u32>, _body: &[u8]) {
        if let Some(sender) = &self.audit {
            sender.on_http_call_response(token, status, &self.metrics);
        }
    }

    fn on_request_headers_end(&self, context: u32, end_of_stream: bool) -> Action {
        let headers = HostHeaders::request().pairs();
        let mut ex = Exchange::default();
        let step = self
            .guard
            .on_request_headers(&mut ex, &headers, end_of_stream, &self.metrics);
        let unavailable = self.audit.as_ref().and_then(AuditSender::refusing);
        let step = nexus_guard::audit_gate(&mut ex, step, unavailable, &self.metrics);
        if ex.active() {
            let meta = match self.audit {
                Some(_) => RequestMeta::from_headers(&headers),
                None => RequestMeta::default(),
            };
            let mut stream = Stream { ex, meta };
            self.audit(&mut stream);
            self.streams.borrow_mut().insert(context, stream);
        }
        headers_step(step, HostHeaders::request())
    }

    fn on_request_body(&self, context: u32, size: usize, end_of_stream: bool) -> Action {
        let read_body = || read(BufferType::RequestBody, size);
        let step = self.with_stream(context, |ex| {
            self.guard
                .on_request_body(ex, size, end_of_stream, read_body, &self.metrics)
        });
        match step {
            None => Action::Continue,
            Some(step) => body_step(step, BufferType::RequestBody, size),
        }
    }

    fn on_response_headers(&self, context: u32, end_of_stream: bool) -> Action {
        let step = self.with_stream(context, |ex| {
            let headers = HostHeaders::response().pairs();
            self.guard
                .on_response_headers(ex, &headers, end_of_stream, &self.metrics)
        });
        match step {
            None => Action::Continue,
            Some(step) => headers_step(step, HostHeaders::response()),
        }
    }

    fn on_response_body(&self, context: u32, size: usize, end_of_stream: bool) -> Action {
        let read_body = || read(BufferType::ResponseBody, size);
        let step = self.with_stream(context, |ex| {
            self.guard
                .on_response_body(ex, size, end_of_stream, read_body, &self.metrics)
        });
        match step {
            None => Action::Continue,
            Some(step) => body_step(step, BufferType::ResponseBody, size),
        }
    }

    fn on_stream_end(&self, context: u32) {
        self.streams.borrow_mut().remove(&context);
    }
}
