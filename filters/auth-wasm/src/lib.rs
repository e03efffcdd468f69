//! nexus-auth, wired to proxy-wasm. All decisions are made in the `nexus-auth` crate; this
//! adapter only moves bytes: headers, callouts, ticks, properties, audit records.

use std::cell::RefCell;

use nexus_auth::{
    Auth, Env, FeedAction, Identity, Outcome, PROPERTY_AUTH_METHOD, PROPERTY_CLIENT_ID,
};
use nexus_filter_core::audit::RequestMeta;
use nexus_filter_core::{Clock, HeaderMap, Level, Log};
use nexus_proxy_wasm::audit::AuditSender;
use nexus_proxy_wasm::hostcalls;
use nexus_proxy_wasm::{
    apply, parse_config, resume_request, set_property, Action, Filter, HostCallouts, HostClock,
    HostHeaders, HostLog, HostMetrics, HostSharedData,
};

// ring links getrandom 0.2; wasm32-unknown-unknown has no entropy and verification needs none.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn no_entropy(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
getrandom::register_custom_getrandom!(no_entropy);

// Request headers only: a request costs Envoy one call into the VM, plus context bookkeeping.
nexus_proxy_wasm::export_filter!(AuthFilter, [request_headers]);

/// How often the root context refreshes keys and picks up other workers' fetches.
const TICK_MS: u32 = 1000;

struct AuthFilter {
    auth: Auth,
    metrics: HostMetrics,
    /// HTTP contexts paused until a JWKS fetch or session lookup on this worker completes. A request reset while
    /// waiting stays listed until the next resume, where its context no longer exists.
    waiting: RefCell<Vec<u32>>,
    audit: Option<AuditSender>,
}

impl AuthFilter {
    /// The request's log line (when Envoy logs its level), then its audit record.
    fn record(&self, outcome: &Outcome) {
        nexus_auth::request_line::log_outcome(outcome, &HostHeaders::request(), &HostLog);
        self.audit(outcome);
    }

    /// Queues the record of a decision, with an audit sink configured.
    fn audit(&self, outcome: &Outcome) {
        let Some(sender) = &self.audit else {
            return;
        };
        if matches!(outcome, Outcome::Pause | Outcome::Continue(None)) {
            return;
        }
        let meta = RequestMeta::from_headers(&HostHeaders::request().pairs());
        let time_ms = hostcalls::now_unix_nanos() / 1_000_000;
        if let Some(record) = nexus_auth::audit::record(outcome, &meta, time_ms) {
            sender.push(record, &self.metrics);
        }
    }

    fn with_env<R>(&self, f: impl FnOnce(&Auth, &Env) -> R) -> R {
        let env = Env {
            clock: &HostClock,
            metrics: &self.metrics,
            shared: &HostSharedData,
            log: &HostLog,
            callouts: &HostCallouts,
        };
        f(&self.auth, &env)
    }

    /// Re-decides every request waiting for a JWKS fetch (they may wait again).
    fn resume_waiting(&self) {
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for ctx in waiting {
            if hostcalls::set_effective_context(ctx).is_err() {
                continue;
            }
            let outcome = self.with_env(|auth, env| {
                auth.on_request_headers(&mut HostHeaders::request(), env, false)
            });
            self.record(&outcome);
            match outcome {
                Outcome::Pause => self.waiting.borrow_mut().push(ctx),
                Outcome::Continue(identity) => {
                    publish(&self.auth, identity.as_ref());
                    resume_request("nexus-auth");
                }
                Outcome::Respond(resp) => {
                    apply(nexus_filter_core::Action::Respond(resp));
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    HostClock.now_unix_nanos() / 1_000_000
}

impl AuthFilter {
    /// Opens the revocation stream (the cache service's `Subscribe`) when it is due.
    fn follow_revocations(&self) {
        let FeedAction::Open { cluster, request } = self.auth.revocation_feed_tick(now_ms()) else {
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
                &format!("nexus-auth: cannot follow revocations on cluster {cluster}: {status}"),
            );
        }
        self.auth.revocation_feed_opened(opened.ok(), now_ms());
    }
}

/// The identity as Envoy properties (filter state `wasm.nexus.client_id`, ...), if configured.
fn publish(auth: &Auth, identity: Option<&Identity>) {
    if !auth.publishes_filter_state() {
        return;
    }
    if let Some(id) = identity {
        set_property(PROPERTY_CLIENT_ID, id.client_id.as_bytes());
        set_property(PROPERTY_AUTH_METHOD, id.method.as_bytes());
    }
}

impl Filter for AuthFilter {
    fn configure(_root_id: u32, config: &[u8]) -> Option<Self> {
        let auth = parse_config("nexus-auth", config, Auth::from_json)?;
        if auth.needs_ticks() {
            if let Err(s) = hostcalls::set_tick_period_ms(TICK_MS) {
                HostLog.log(Level::Warn, &format!("nexus-auth: no ticks: {s}"));
            }
        }
        // Both tick at 1 s unless the sink says otherwise; its period then applies to both.
        let audit = auth.audit_sink().cloned().map(AuditSender::start);
        Some(Self {
            auth,
            metrics: HostMetrics::default(),
            waiting: RefCell::new(Vec::new()),
            audit,
        })
    }

    fn on_tick(&self) {
        if let Some(sender) = &self.audit {
            sender.flush(&self.metrics);
        }
        if self.with_env(|auth, env| auth.on_tick(env)) {
            self.resume_waiting();
        }
        self.follow_revocations();
    }

    fn on_grpc_receive(&self, _context: u32, token: u32, message: &[u8]) {
        let drop = self.with_env(|auth, env| auth.revocation_feed_message(token, message, env));
        if drop == Some(true) {
            // Envoy reports no close for a stream we cancel: account for it here.
            let _ = hostcalls::grpc_cancel(token);
            self.auth.revocation_feed_closed(token, now_ms());
        }
    }

    fn on_grpc_close(&self, _context: u32, token: u32, status: u32, _message: &str) {
        if self.auth.revocation_feed_closed(token, now_ms()) {
            HostLog.log(
                Level::Info,
                &format!("nexus-auth: revocation stream closed (gRPC status {status}); sessions are asked for until it is back"),
            );
        }
    }

    /// Feeds a JWKS or session answer to the filter, then re-decides every waiting request.
    fn on_http_call_response(&self, token: u32, status: Option<u32>, body: &[u8]) {
        if let Some(sender) = &self.audit {
            if sender.on_http_call_response(token, status, &self.metrics) {
                return;
            }
        }
        self.with_env(|auth, env| auth.on_http_call_response(token, status, body, env));
        self.resume_waiting();
    }

    fn on_request_headers(&self, context: u32) -> Action {
        let outcome = self
            .with_env(|auth, env| auth.on_request_headers(&mut HostHeaders::request(), env, true));
        self.record(&outcome);
        match outcome {
            Outcome::Continue(identity) => {
                publish(&self.auth, identity.as_ref());
                Action::Continue
            }
            Outcome::Respond(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            Outcome::Pause => {
                self.waiting.borrow_mut().push(context);
                Action::Pause
            }
        }
    }
}
