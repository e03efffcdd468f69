//! nexus-cache, wired to proxy-wasm. Decisions are made in the `nexus-cache` crate; this
//! adapter moves bytes: headers, response body chunks, the `Get` / `Put` calls and the root
//! context's `Subscribe` stream.
//!
//! Hostcalls are made through `proxy_wasm::hostcalls` (which return errors) rather than the
//! SDK's context helpers that unwrap: a failed hostcall must never kill the VM.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use nexus_cache::coherency::{Subscription, TickAction};
use nexus_cache::{Cache, Exchange, ResponseStep, Step};
use nexus_filter_core::{Clock, HeaderMap, IdGenerator, Level, Log, Metrics};
use nexus_proxy_wasm::{
    apply, configure, HostClock, HostHeaders, HostLog, HostMetrics, HostSharedData,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|root_id| -> Box<dyn RootContext> {
        Box::new(Root { root_id, shared: None })
    });
}}

/// Reconnect backoff resolution; the stream itself is event driven.
const TICK: Duration = Duration::from_millis(100);

struct Shared {
    cache: Cache,
    metrics: HostMetrics,
    /// The root context's event stream (None: no service, or `subscribe: false`).
    subscription: RefCell<Option<Subscription>>,
    root_id: u32,
}

impl Shared {
    fn l1_live(&self) -> bool {
        self.subscription
            .borrow()
            .as_ref()
            .is_none_or(Subscription::live)
    }

    /// Write-through `Put`, fire-and-forget. Dispatched on behalf of the root context: Envoy
    /// cancels a context's calls when it is destroyed, and the request's context ends right
    /// after its response does. Its answer is not observed (the SDK routes it to the request's
    /// context, usually gone by then); only dispatch failures are counted.
    fn put(&self, message: &[u8], http_context: u32) {
        let Some(service) = self.cache.service() else {
            return;
        };
        let switched = hostcalls::set_effective_context(self.root_id).is_ok();
        let result = hostcalls::dispatch_grpc_call(
            &service.cluster,
            nexus_proto::CACHE_SERVICE,
            nexus_proto::CACHE_PUT,
            Vec::new(),
            Some(message),
            Duration::from_millis(service.timeout_ms),
        );
        if switched {
            let _ = hostcalls::set_effective_context(http_context);
        }
        if let Err(status) = result {
            self.metrics
                .increment(nexus_cache::metrics::SERVICE_ERRORS, 1);
            HostLog.log(
                Level::Debug,
                &format!("nexus-cache: Put not dispatched: {status:?}"),
            );
        }
    }
}

fn now_ms() -> u64 {
    HostClock.now_unix_nanos() / 1_000_000
}

struct Root {
    root_id: u32,
    shared: Option<Rc<Shared>>,
}

impl Root {
    fn with_subscription(&self, f: impl FnOnce(&mut Subscription, &Shared)) {
        if let Some(s) = &self.shared {
            if let Some(sub) = s.subscription.borrow_mut().as_mut() {
                f(sub, s);
            }
        }
    }
}

impl Context for Root {
    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let message = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.with_subscription(|sub, s| {
            if sub.on_message(token, &message, &HostSharedData, &s.metrics, &HostLog) {
                // Envoy reports no close for a stream we cancel: account for it here.
                let _ = hostcalls::cancel_grpc_stream(token);
                sub.on_closed(token, now_ms(), &HostSharedData, &s.metrics);
            }
        });
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        self.with_subscription(|sub, s| {
            if sub.is_stream(token) {
                HostLog.log(
                    Level::Info,
                    &format!("nexus-cache: Subscribe stream closed (gRPC status {status}); L1 flushed, reconnecting"),
                );
            }
            sub.on_closed(token, now_ms(), &HostSharedData, &s.metrics);
        });
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Workers are separate VMs: the clock and context id make their default writers differ.
        let seed = HostClock.now_unix_nanos() ^ (u64::from(self.root_id) << 48);
        let writer = format!("nexus-cache-{:016x}", IdGenerator::new(seed).next_u64());
        let Some(cache) = configure("nexus-cache", |b| Cache::from_json(b, &writer)) else {
            return false;
        };
        let subscription = cache.subscription(cache.writer());
        if subscription.is_some() {
            if let Err(s) = hostcalls::set_tick_period(TICK) {
                HostLog.log(Level::Warn, &format!("nexus-cache: no ticks: {s:?}"));
            }
        }
        self.shared = Some(Rc::new(Shared {
            cache,
            metrics: HostMetrics::default(),
            subscription: RefCell::new(subscription),
            root_id: self.root_id,
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(s) = self.shared.clone() else {
            return;
        };
        let Some(service) = s.cache.service() else {
            return;
        };
        let mut guard = s.subscription.borrow_mut();
        let Some(sub) = guard.as_mut() else {
            return;
        };
        let now = now_ms();
        let TickAction::Open(request) = sub.on_tick(now) else {
            return;
        };
        let opened = hostcalls::open_grpc_stream(
            &service.cluster,
            nexus_proto::CACHE_SERVICE,
            nexus_proto::CACHE_SUBSCRIBE,
            Vec::new(),
        )
        .and_then(|token| {
            hostcalls::send_grpc_stream_message(token, Some(request.as_slice()), true)
                .map(|()| token)
        });
        if let Err(status) = &opened {
            HostLog.log(
                Level::Warn,
                &format!(
                    "nexus-cache: cannot subscribe on cluster {}: {status:?}",
                    service.cluster
                ),
            );
        }
        sub.on_opened(opened.ok(), now, &HostSharedData, &s.metrics);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone()?,
            context_id,
            exchange: Exchange::default(),
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    shared: Rc<Shared>,
    context_id: u32,
    exchange: Exchange,
    /// Token of the `Get` the request is paused on.
    pending: Option<u32>,
}

impl Http {
    fn lookup_answered(&mut self, answer: Result<&[u8], String>, resume: bool) -> Action {
        let s = self.shared.clone();
        let step = s.cache.on_lookup_response(
            &mut self.exchange,
            answer,
            &HostSharedData,
            &s.metrics,
            &HostLog,
            now_ms(),
        );
        match step {
            Step::Respond(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            _ => {
                if resume {
                    if let Err(st) = hostcalls::resume_http_request() {
                        HostLog.log(Level::Warn, &format!("nexus-cache: resume failed: {st:?}"));
                    }
                }
                Action::Continue
            }
        }
    }

    fn apply_response(&self, step: ResponseStep) {
        let mut headers = HostHeaders::response();
        for (name, value) in &step.headers {
            headers.set(name, value);
        }
        if let Some(put) = step.put {
            self.shared.put(&put, self.context_id);
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if self.pending != Some(token) {
            return;
        }
        self.pending = None;
        if status != 0 {
            let message = hostcalls::get_grpc_status()
                .ok()
                .and_then(|(_, m)| m)
                .unwrap_or_default();
            self.lookup_answered(Err(format!("gRPC status {status} {message}")), true);
            return;
        }
        let body = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.lookup_answered(Ok(&body), true);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let s = self.shared.clone();
        let headers = HostHeaders::request().pairs();
        let step = s.cache.on_request_headers(
            &mut self.exchange,
            &headers,
            s.l1_live(),
            &HostSharedData,
            &s.metrics,
            now_ms(),
        );
        match step {
            Step::Continue => Action::Continue,
            Step::Respond(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            Step::Lookup(message) => {
                let Some(service) = s.cache.service() else {
                    return Action::Continue;
                };
                match hostcalls::dispatch_grpc_call(
                    &service.cluster,
                    nexus_proto::CACHE_SERVICE,
                    nexus_proto::CACHE_GET,
                    Vec::new(),
                    Some(&message),
                    Duration::from_millis(service.timeout_ms),
                ) {
                    Ok(token) => {
                        self.pending = Some(token);
                        Action::Pause
                    }
                    Err(status) => {
                        self.lookup_answered(Err(format!("not dispatched: {status:?}")), false)
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, eos: bool) -> Action {
        let s = self.shared.clone();
        let headers = HostHeaders::response().pairs();
        let step = s.cache.on_response_headers(
            &mut self.exchange,
            &headers,
            eos,
            &HostSharedData,
            &s.metrics,
            now_ms(),
        );
        self.apply_response(step);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        // The body streams on (Continue): each callback sees only its chunk, which we copy.
        if !self.exchange.capturing() {
            return Action::Continue;
        }
        let s = self.shared.clone();
        let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let step = s.cache.on_response_body(
            &mut self.exchange,
            &chunk,
            eos,
            &HostSharedData,
            &s.metrics,
            now_ms(),
        );
        self.apply_response(step);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.shared.cache.on_response_trailers(&mut self.exchange);
        Action::Continue
    }
}
