//! nexus-guard, wired to proxy-wasm. Decisions are made in the `nexus-guard` crate; this
//! adapter moves headers and body bytes and keeps each request's [`Exchange`].

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_filter_core::{HeaderMap, LocalResponse};
use nexus_guard::{BodyStep, Exchange, Guard, HeadersStep};
use nexus_proxy_wasm::hostcalls::{self, BufferType};
use nexus_proxy_wasm::{apply, parse_config, Action, Filter, HostHeaders, HostMetrics};

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

fn headers_step(step: HeadersStep) -> Action {
    match step {
        HeadersStep::Continue => Action::Continue,
        HeadersStep::Pause => Action::Pause,
        HeadersStep::Respond(r) => apply(nexus_filter_core::Action::Respond(r)),
    }
}

/// Applies a body step; `headers` are the same direction's (held while buffering).
fn body_step(step: BodyStep, kind: BufferType, size: usize, mut headers: HostHeaders) -> Action {
    match step {
        BodyStep::Continue => Action::Continue,
        BodyStep::Pause => Action::Pause,
        BodyStep::Replace(body) => {
            replace(kind, size, &body, &mut headers);
            Action::Continue
        }
        BodyStep::Respond(r) => apply(nexus_filter_core::Action::Respond(r)),
        BodyStep::ReplaceResponse(r) => {
            replace_response(&r, size, &mut headers);
            Action::Continue
        }
    }
}

fn replace(kind: BufferType, size: usize, body: &[u8], headers: &mut HostHeaders) {
    // Envoy does not fix content-length after a body change; the headers are still held.
    if hostcalls::replace_buffer(kind, size, body).is_ok() {
        headers.set("content-length", &body.len().to_string());
    }
}

fn replace_response(r: &LocalResponse, size: usize, headers: &mut HostHeaders) {
    headers.set(":status", &r.status.to_string());
    for (name, value) in &r.headers {
        headers.set(name, value);
    }
    replace(BufferType::ResponseBody, size, &r.body, headers);
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
        headers_step(step)
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
        body_step(step, BufferType::RequestBody, size, HostHeaders::request())
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
        headers_step(step)
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
        body_step(
            step,
            BufferType::ResponseBody,
            size,
            HostHeaders::response(),
        )
    }

    fn on_stream_end(&self, context: u32) {
        self.streams.borrow_mut().remove(&context);
    }
}
