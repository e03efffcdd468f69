//! nexus-cache, wired to proxy-wasm. Decisions are made in the `nexus-cache` crate; this
//! adapter moves bytes: headers, response body chunks, the `Get` / `Put` calls and the root
//! context's `Subscribe` stream.

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_cache::coherency::{Subscription, TickAction};
use nexus_cache::{Cache, Exchange, ResponseStep, Step};
use nexus_filter_core::{Clock, HeaderMap, IdGenerator, Level, Log, Metrics};
use nexus_proxy_wasm::hostcalls::{self, BufferType};
use nexus_proxy_wasm::{
    apply, parse_config, resume_request, Action, Answered, Filter, HostClock, HostHeaders, HostLog,
    HostMetrics, HostSharedData, PausedCalls,
};

nexus_proxy_wasm::export_filter!(
    CacheFilter,
    [
        request_headers,
        response_headers,
        response_body,
        response_trailers,
        stream_end
    ]
);

/// Reconnect backoff resolution; the stream itself is event driven.
const TICK_MS: u32 = 100;

struct CacheFilter {
    cache: Cache,
    metrics: HostMetrics,
    /// The root context's event stream (None: no service, or `subscribe: false`).
    subscription: RefCell<Option<Subscription>>,
    root_id: u32,
    /// Requests the response phase has work for, by context id.
    streams: RefCell<HashMap<u32, Exchange>>,
    /// Requests paused on a `Get` to the shared cache.
    gets: PausedCalls<Exchange>,
}

fn now_ms() -> u64 {
    HostClock.now_unix_nanos() / 1_000_000
}

impl CacheFilter {
    fn l1_live(&self) -> bool {
        self.subscription
            .borrow()
            .as_ref()
            .is_none_or(Subscription::live)
    }

    /// Write-through `Put`, fire-and-forget. Dispatched on behalf of the root context: Envoy
    /// cancels a context's calls when it is destroyed, and the request's context ends right
    /// after its response does. Its answer reaches the root, which ignores it; only dispatch
    /// failures are counted.
    fn put(&self, message: &[u8], http_context: u32) {
        let Some(service) = self.cache.service() else {
            return;
        };
        let switched = hostcalls::set_effective_context(self.root_id).is_ok();
        let result = hostcalls::grpc_call(
            &service.cluster,
            nexus_proto::CACHE_SERVICE,
            nexus_proto::CACHE_PUT,
            message,
            service.timeout_ms,
        );
        if switched {
            let _ = hostcalls::set_effective_context(http_context);
        }
        if let Err(status) = result {
            self.metrics
                .increment(nexus_cache::metrics::SERVICE_ERRORS, 1);
            HostLog.log(
                Level::Debug,
                &format!("nexus-cache: Put not dispatched: {status}"),
            );
        }
    }

    /// Decides a request after its `Get` answered (or failed); `resume` when it was paused.
    fn lookup_answered(
        &self,
        context: u32,
        mut exchange: Exchange,
        answer: Result<&[u8], String>,
        resume: bool,
    ) -> Action {
        let step = self.cache.on_lookup_response(
            &mut exchange,
            answer,
            &HostSharedData,
            &self.metrics,
            &HostLog,
            now_ms(),
        );
        match step {
            Step::Respond(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            _ => {
                self.keep(context, exchange);
                if resume {
                    resume_request("nexus-cache");
                }
                Action::Continue
            }
        }
    }

    fn keep(&self, context: u32, exchange: Exchange) {
        if exchange.wants_response() {
            self.streams.borrow_mut().insert(context, exchange);
        }
    }

    /// Runs a response step on the stream's exchange, if the stream has one.
    fn respond(&self, context: u32, step: impl FnOnce(&mut Exchange) -> ResponseStep) {
        let result = {
            let mut streams = self.streams.borrow_mut();
            let Some(exchange) = streams.get_mut(&context) else {
                return;
            };
            step(exchange)
        };
        let mut headers = HostHeaders::response();
        for (name, value) in &result.headers {
            headers.set(name, value);
        }
        if let Some(put) = result.put {
            self.put(&put, context);
        }
    }

    /// The `Get` a paused request waits on answered or failed. False: not a `Get` token.
    fn on_get_answer(&self, token: u32, answer: Result<&[u8], String>) -> bool {
        match self.gets.answered(token) {
            Answered::Request { context, state } => {
                self.lookup_answered(context, state, answer, true);
                true
            }
            Answered::Gone => true,
            Answered::NotOurs => false,
        }
    }
}

impl Filter for CacheFilter {
    fn configure(root_id: u32, config: &[u8]) -> Option<Self> {
        // Workers are separate VMs: the clock and context id make their default writers differ.
        let seed = HostClock.now_unix_nanos() ^ (u64::from(root_id) << 48);
        let writer = format!("nexus-cache-{:016x}", IdGenerator::new(seed).next_u64());
        let cache = parse_config("nexus-cache", config, |b| Cache::from_json(b, &writer))?;
        let subscription = cache.subscription(cache.writer());
        if subscription.is_some() {
            if let Err(s) = hostcalls::set_tick_period_ms(TICK_MS) {
                HostLog.log(Level::Warn, &format!("nexus-cache: no ticks: {s}"));
            }
        }
        Some(Self {
            cache,
            metrics: HostMetrics::default(),
            subscription: RefCell::new(subscription),
            root_id,
            streams: RefCell::new(HashMap::new()),
            gets: PausedCalls::default(),
        })
    }

    fn on_tick(&self) {
        let Some(service) = self.cache.service() else {
            return;
        };
        let mut guard = self.subscription.borrow_mut();
        let Some(sub) = guard.as_mut() else {
            return;
        };
        let now = now_ms();
        let TickAction::Open(request) = sub.on_tick(now) else {
            return;
        };
        let opened = hostcalls::grpc_server_stream(
            &service.cluster,
            nexus_proto::CACHE_SERVICE,
            nexus_proto::CACHE_SUBSCRIBE,
            &request,
        );
        if let Err(status) = &opened {
            HostLog.log(
                Level::Warn,
                &format!(
                    "nexus-cache: cannot subscribe on cluster {}: {status}",
                    service.cluster
                ),
            );
        }
        sub.on_opened(opened.ok(), now, &HostSharedData, &self.metrics);
    }

    fn on_grpc_receive(&self, _context: u32, token: u32, message: &[u8]) {
        if self.on_get_answer(token, Ok(message)) {
            return;
        }
        // Otherwise: events of the Subscribe stream, or `Put` answers (ignored).
        if let Some(sub) = self.subscription.borrow_mut().as_mut() {
            if sub.on_message(token, message, &HostSharedData, &self.metrics, &HostLog) {
                // Envoy reports no close for a stream we cancel: account for it here.
                let _ = hostcalls::grpc_cancel(token);
                sub.on_closed(token, now_ms(), &HostSharedData, &self.metrics);
            }
        }
    }

    fn on_grpc_close(&self, _context: u32, token: u32, status: u32, message: &str) {
        if self.on_get_answer(token, Err(format!("gRPC status {status} {message}"))) {
            return;
        }
        if let Some(sub) = self.subscription.borrow_mut().as_mut() {
            if sub.is_stream(token) {
                HostLog.log(
                    Level::Info,
                    &format!("nexus-cache: Subscribe stream closed (gRPC status {status}); L1 flushed, reconnecting"),
                );
            }
            sub.on_closed(token, now_ms(), &HostSharedData, &self.metrics);
        }
    }

    fn on_request_headers(&self, context: u32) -> Action {
        let headers = HostHeaders::request().pairs();
        let mut exchange = Exchange::default();
        let step = self.cache.on_request_headers(
            &mut exchange,
            &headers,
            self.l1_live(),
            &HostSharedData,
            &self.metrics,
            now_ms(),
        );
        match step {
            Step::Continue => {
                self.keep(context, exchange);
                Action::Continue
            }
            Step::Respond(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            Step::Lookup(message) => {
                let Some(service) = self.cache.service() else {
                    return Action::Continue;
                };
                match hostcalls::grpc_call(
                    &service.cluster,
                    nexus_proto::CACHE_SERVICE,
                    nexus_proto::CACHE_GET,
                    &message,
                    service.timeout_ms,
                ) {
                    Ok(token) => {
                        self.gets.pause(context, token, exchange);
                        Action::Pause
                    }
                    Err(status) => self.lookup_answered(
                        context,
                        exchange,
                        Err(format!("not dispatched: {status}")),
                        false,
                    ),
                }
            }
        }
    }

    fn on_response_headers(&self, context: u32, end_of_stream: bool) -> Action {
        if !self.streams.borrow().contains_key(&context) {
            return Action::Continue;
        }
        let headers = HostHeaders::response().pairs();
        self.respond(context, |exchange| {
            self.cache.on_response_headers(
                exchange,
                &headers,
                end_of_stream,
                &HostSharedData,
                &self.metrics,
                now_ms(),
            )
        });
        Action::Continue
    }

    fn on_response_body(&self, context: u32, size: usize, end_of_stream: bool) -> Action {
        // The body streams on (Continue): each callback sees only its chunk, which we copy.
        let capturing = self
            .streams
            .borrow()
            .get(&context)
            .is_some_and(Exchange::capturing);
        if !capturing {
            return Action::Continue;
        }
        let chunk = hostcalls::buffer(BufferType::ResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.respond(context, |exchange| {
            self.cache.on_response_body(
                exchange,
                &chunk,
                end_of_stream,
                &HostSharedData,
                &self.metrics,
                now_ms(),
            )
        });
        Action::Continue
    }

    fn on_response_trailers(&self, context: u32) -> Action {
        if let Some(exchange) = self.streams.borrow_mut().get_mut(&context) {
            self.cache.on_response_trailers(exchange);
        }
        Action::Continue
    }

    fn on_stream_end(&self, context: u32) {
        self.gets.stream_ended(context);
        self.streams.borrow_mut().remove(&context);
    }
}
