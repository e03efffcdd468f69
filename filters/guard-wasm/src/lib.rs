//! nexus-guard, wired to proxy-wasm. Decisions are made in the `nexus-guard` crate; this
//! adapter moves headers and body bytes and keeps each request's [`Exchange`].

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_filter_core::{HeaderMap, Level, Log};
use nexus_guard::{BodyStep, Exchange, Guard, HeadersStep};
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
    streams: RefCell<HashMap<u32, Exchange>>,
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
        let guard = parse_config("nexus-guard", config, Guard::from_json)?;
        Some(Self {
            guard,
            metrics: HostMetrics::default(),
            streams: RefCell::new(HashMap::new()),
        })
    }

    fn on_request_headers_end(&self, context: u32, end_of_stream: bool) -> Action {
        let headers = HostHeaders::request().pairs();
        let mut ex = Exchange::default();
        let step = self
            .guard
            .on_request_headers(&mut ex, &headers, end_of_stream, &self.metrics);
        if ex.active() {
            self.streams.borrow_mut().insert(context, ex);
        }
        headers_step(step, HostHeaders::request())
    }

    fn on_request_body(&self, context: u32, size: usize, end_of_stream: bool) -> Action {
        let step = match self.streams.borrow_mut().get_mut(&context) {
            None => return Action::Continue,
            Some(ex) => self.guard.on_request_body(
                ex,
                size,
                end_of_stream,
                || read(BufferType::RequestBody, size),
                &self.metrics,
            ),
        };
        body_step(step, BufferType::RequestBody, size)
    }

    fn on_response_headers(&self, context: u32, end_of_stream: bool) -> Action {
        let step = match self.streams.borrow_mut().get_mut(&context) {
            None => return Action::Continue,
            Some(ex) => {
                let headers = HostHeaders::response().pairs();
                self.guard
                    .on_response_headers(ex, &headers, end_of_stream, &self.metrics)
            }
        };
        headers_step(step, HostHeaders::response())
    }

    fn on_response_body(&self, context: u32, size: usize, end_of_stream: bool) -> Action {
        let step = match self.streams.borrow_mut().get_mut(&context) {
            None => return Action::Continue,
            Some(ex) => self.guard.on_response_body(
                ex,
                size,
                end_of_stream,
                || read(BufferType::ResponseBody, size),
                &self.metrics,
            ),
        };
        body_step(step, BufferType::ResponseBody, size)
    }

    fn on_stream_end(&self, context: u32) {
        self.streams.borrow_mut().remove(&context);
    }
}
