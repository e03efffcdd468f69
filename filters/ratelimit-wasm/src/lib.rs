//! nexus-ratelimit, wired to proxy-wasm: dispatches the gRPC call the core asks for, pauses the
//! request until it answers, adds the core's headers to the response and, with an `audit` sink,
//! sends a record of each denial.

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_filter_core::audit::RequestMeta;
use nexus_filter_core::{Clock, HeaderMap, Level, Log};
use nexus_proxy_wasm::audit::AuditSender;
use nexus_proxy_wasm::hostcalls;
use nexus_proxy_wasm::{
    apply, parse_config, resume_request, Action, Answered, Filter, HostClock, HostHeaders, HostLog,
    HostMetrics, HostSharedData, PausedCalls,
};
use nexus_ratelimit::{FeedAction, FeedMessage, Pending, RateLimiter, ServiceFailure, Step};

nexus_proxy_wasm::export_filter!(
    RateLimitFilter,
    [request_headers, response_headers, stream_end]
);

struct RateLimitFilter {
    limiter: RateLimiter,
    /// The root context: lease calls are made as its own, so they outlive the request that
    /// decided them.
    root_id: u32,
    /// Lease calls in flight: token → counter key.
    leases: RefCell<HashMap<u32, String>>,
    lease_failure_logged_ms: std::cell::Cell<u64>,
    metrics: HostMetrics,
    /// Requests paused on a rate-limit service call.
    calls: PausedCalls<Pending>,
    /// Allowed requests whose response gets these headers (`RateLimit`, ...), by context.
    response_headers: RefCell<HashMap<u32, Vec<(String, String)>>>,
    audit: Option<AuditSender>,
}

/// How often the root context checks the reset stream (reopening it after a break).
const TICK_MS: u32 = 1000;

fn now_us() -> u64 {
    HostClock.now_unix_nanos() / 1_000
}

fn now_ms() -> u64 {
    now_us() / 1_000
}

impl RateLimitFilter {
    /// Applies a final step; `resume` when the request was paused on the service.
    fn finish(&self, context: u32, step: Step, resume: bool) -> Action {
        match step {
            Step::Allow(headers) => {
                if !headers.is_empty() {
                    self.response_headers.borrow_mut().insert(context, headers);
                }
                if resume {
                    resume_request("nexus-ratelimit");
                }
                Action::Continue
            }
            Step::Deny(resp) => {
                if let Some(sender) = &self.audit {
                    let meta = RequestMeta::from_headers(&HostHeaders::request().pairs());
                    let time_ms = now_us() / 1000;
                    let record = nexus_ratelimit::audit::record(&resp, &meta, time_ms);
                    sender.push(record, &self.metrics);
                }
                apply(nexus_filter_core::Action::Respond(resp))
            }
            // The core never asks for a second call from a service answer.
            Step::CallService { .. } => Action::Continue,
        }
    }

    /// The service answered call `token` (`Ok`: the response message) or failed.
    fn answered(&self, token: u32, answer: Result<&[u8], ServiceFailure>) {
        if let Answered::Request {
            context,
            state: pending,
        } = self.calls.answered(token)
        {
            let step = self.decide(&pending, answer);
            self.finish(context, step, true);
        }
    }

    /// Sends the lease calls the core decided, as the root context's (`context`: the request
    /// being served, whose context is restored after).
    fn send_lease_calls(&self, context: Option<u32>) {
        let calls = self.limiter.take_lease_calls();
        let Some(service) = self.limiter.service() else {
            return;
        };
        if calls.is_empty() {
            return;
        }
        if context.is_some() {
            let _ = hostcalls::set_effective_context(self.root_id);
        }
        for call in calls {
            match hostcalls::grpc_call(
                &service.cluster,
                nexus_proto::LEASE_SERVICE,
                nexus_proto::LEASE_METHOD,
                &call.message,
                service.timeout_ms,
            ) {
                Ok(token) => {
                    self.leases.borrow_mut().insert(token, call.key);
                }
                Err(status) => self
                    .lease_answered(&call.key, Err(ServiceFailure::Dispatch(status.to_string()))),
            }
        }
        if let Some(context) = context {
            let _ = hostcalls::set_effective_context(context);
        }
    }

    fn lease_answered(&self, key: &str, answer: Result<&[u8], ServiceFailure>) {
        if let Err(failure) = &answer {
            self.log_lease_failure(failure);
        }
        self.limiter
            .on_lease_answer(key, answer, &HostSharedData, &self.metrics, now_us());
    }

    /// Once a minute at most: a failed lease call leaves its counter's requests to the failure
    /// mode until a renewal answers.
    fn log_lease_failure(&self, failure: &ServiceFailure) {
        let now = now_ms();
        if self.lease_failure_logged_ms.get() + 60_000 > now {
            return;
        }
        self.lease_failure_logged_ms.set(now);
        HostLog.log(
            Level::Warn,
            &format!("nexus-ratelimit: lease call failed: {failure:?} (logged once per minute)"),
        );
    }

    /// Opens the reset stream (the cache service's `Subscribe`) when it is due.
    fn follow_resets(&self) {
        let FeedAction::Open { cluster, request } = self.limiter.reset_feed_tick(now_ms()) else {
            return;
        };
        let opened = hostcalls::grpc_server_stream(
            &cluster,
            nexus_proto::CACHE_SERVICE,
            nexus_proto::CACHE_SUBSCRIBE,
            &request,
        );
        if let Err(status) = &opened {
            HostLog.log(
                Level::Warn,
                &format!("nexus-ratelimit: cannot follow resets on cluster {cluster}: {status}"),
            );
        }
        self.limiter.reset_feed_opened(opened.ok(), now_ms());
    }

    /// The core's decision once the service answered or could not be asked.
    fn decide(&self, pending: &Pending, answer: Result<&[u8], ServiceFailure>) -> Step {
        self.limiter.on_service_response(
            pending,
            answer,
            &HostSharedData,
            &self.metrics,
            &HostLog,
            now_us(),
        )
    }
}

impl Filter for RateLimitFilter {
    fn configure(root_id: u32, config: &[u8]) -> Option<Self> {
        let limiter = parse_config("nexus-ratelimit", config, RateLimiter::from_json)?;
        if limiter.needs_ticks() {
            if let Err(s) = hostcalls::set_tick_period_ms(TICK_MS) {
                HostLog.log(Level::Warn, &format!("nexus-ratelimit: no ticks: {s}"));
            }
        }
        // Both tick at 1 s unless the audit sink says otherwise; its period then applies.
        let audit = limiter.audit_sink().cloned().map(AuditSender::start);
        Some(Self {
            limiter,
            root_id,
            leases: RefCell::new(HashMap::new()),
            lease_failure_logged_ms: std::cell::Cell::new(0),
            metrics: HostMetrics::default(),
            calls: PausedCalls::default(),
            response_headers: RefCell::new(HashMap::new()),
            audit,
        })
    }

    fn on_tick(&self) {
        if let Some(sender) = &self.audit {
            sender.flush(&self.metrics);
        }
        self.follow_resets();
        self.limiter
            .lease_tick(&HostSharedData, &self.metrics, now_us());
        self.send_lease_calls(None);
    }

    fn on_http_call_response(&self, token: u32, status: Option<u32>, _body: &[u8]) {
        if let Some(sender) = &self.audit {
            sender.on_http_call_response(token, status, &self.metrics);
        }
    }

    fn on_grpc_receive(&self, _context: u32, token: u32, message: &[u8]) {
        let lease = self.leases.borrow_mut().remove(&token);
        if let Some(key) = lease {
            return self.lease_answered(&key, Ok(message));
        }
        let feed = self.limiter.reset_feed_message(
            token,
            message,
            &HostSharedData,
            &self.metrics,
            &HostLog,
        );
        match feed {
            FeedMessage::NotOurs => self.answered(token, Ok(message)),
            FeedMessage::Applied => {}
            FeedMessage::Drop => {
                // Envoy reports no close for a stream we cancel: account for it here.
                let _ = hostcalls::grpc_cancel(token);
                self.limiter.reset_feed_closed(token, now_ms());
            }
        }
    }

    fn on_grpc_close(&self, _context: u32, token: u32, status: u32, message: &str) {
        let lease = self.leases.borrow_mut().remove(&token);
        if let Some(key) = lease {
            let failure = ServiceFailure::Status(status, message.to_string());
            return self.lease_answered(&key, Err(failure));
        }
        if self.limiter.reset_feed_closed(token, now_ms()) {
            HostLog.log(
                Level::Info,
                &format!("nexus-ratelimit: reset stream closed (gRPC status {status}); over-limit answers are asked for until it is back"),
            );
            return;
        }
        self.answered(
            token,
            Err(ServiceFailure::Status(status, message.to_string())),
        );
    }

    fn on_request_headers(&self, context: u32) -> Action {
        let step = self.limiter.on_request(
            &HostHeaders::request(),
            &HostSharedData,
            &self.metrics,
            now_us(),
        );
        self.send_lease_calls(Some(context));
        let Step::CallService { message, pending } = step else {
            return self.finish(context, step, false);
        };
        let Some(service) = self.limiter.service() else {
            return self.finish(context, Step::Allow(Vec::new()), false);
        };
        match hostcalls::grpc_call(
            &service.cluster,
            nexus_proto::RATELIMIT_SERVICE,
            nexus_proto::RATELIMIT_METHOD,
            &message,
            service.timeout_ms,
        ) {
            Ok(token) => {
                self.calls.pause(context, token, pending);
                Action::Pause
            }
            Err(status) => {
                let step = self.decide(&pending, Err(ServiceFailure::Dispatch(status.to_string())));
                self.finish(context, step, false)
            }
        }
    }

    fn on_response_headers(&self, context: u32, _end_of_stream: bool) -> Action {
        if let Some(headers) = self.response_headers.borrow_mut().remove(&context) {
            let mut response = HostHeaders::response();
            for (name, value) in &headers {
                response.set(name, value);
            }
        }
        Action::Continue
    }

    fn on_stream_end(&self, context: u32) {
        self.calls.stream_ended(context);
        self.response_headers.borrow_mut().remove(&context);
    }
}
