//! nexus-ratelimit, wired to proxy-wasm: dispatches the gRPC call the core asks for, pauses the
//! request until it answers, and adds the core's headers to the response.

use std::rc::Rc;
use std::time::Duration;

use nexus_filter_core::Clock;
use nexus_proxy_wasm::{
    apply, configure, HostClock, HostHeaders, HostLog, HostMetrics, HostSharedData,
};
use nexus_ratelimit::{Pending, RateLimiter, ServiceFailure, Step};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

struct Shared {
    limiter: RateLimiter,
    metrics: HostMetrics,
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(limiter) = configure("nexus-ratelimit", RateLimiter::from_json) else {
            return false;
        };
        self.shared = Some(Rc::new(Shared {
            limiter,
            metrics: HostMetrics::default(),
        }));
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone()?,
            pending: None,
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    shared: Rc<Shared>,
    pending: Option<(u32, Pending)>,
    response_headers: Vec<(String, String)>,
}

fn now_us() -> u64 {
    HostClock.now_unix_nanos() / 1_000
}

impl Http {
    /// Applies a final step; `resume` when the request was paused on the service.
    fn finish(&mut self, step: Step, resume: bool) -> Action {
        match step {
            Step::Allow(headers) => {
                self.response_headers = headers;
                if resume {
                    self.resume_http_request();
                }
                Action::Continue
            }
            Step::Deny(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            // The core never asks for a second call from a service answer.
            Step::CallService { .. } => Action::Continue,
        }
    }

    fn service_failed(
        &mut self,
        pending: &Pending,
        failure: ServiceFailure,
        resume: bool,
    ) -> Action {
        let s = self.shared.clone();
        let step = s.limiter.on_service_response(
            pending,
            Err(failure),
            &HostSharedData,
            &s.metrics,
            &HostLog,
            now_us(),
        );
        self.finish(step, resume)
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let Some((expected, pending)) = self.pending.take() else {
            return;
        };
        if token != expected {
            return;
        }
        if status != 0 {
            let (_, message) = self.get_grpc_status();
            self.service_failed(
                &pending,
                ServiceFailure::Status(status, message.unwrap_or_default()),
                true,
            );
            return;
        }
        let body = self
            .get_grpc_call_response_body(0, size)
            .unwrap_or_default();
        let s = self.shared.clone();
        let step = s.limiter.on_service_response(
            &pending,
            Ok(&body),
            &HostSharedData,
            &s.metrics,
            &HostLog,
            now_us(),
        );
        self.finish(step, true);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let s = self.shared.clone();
        let step = s.limiter.on_request(
            &HostHeaders::request(),
            &HostSharedData,
            &s.metrics,
            now_us(),
        );
        let Step::CallService { message, pending } = step else {
            return self.finish(step, false);
        };
        let Some(service) = s.limiter.service() else {
            return self.finish(Step::Allow(Vec::new()), false);
        };
        match self.dispatch_grpc_call(
            &service.cluster,
            nexus_proto::RATELIMIT_SERVICE,
            nexus_proto::RATELIMIT_METHOD,
            Vec::new(),
            Some(&message),
            Duration::from_millis(service.timeout_ms),
        ) {
            Ok(token) => {
                self.pending = Some((token, pending));
                Action::Pause
            }
            Err(status) => self.service_failed(
                &pending,
                ServiceFailure::Dispatch(format!("{status:?}")),
                false,
            ),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(&name, Some(&value));
        }
        Action::Continue
    }
}
