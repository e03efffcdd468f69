//! nexus-auth, wired to proxy-wasm. All decisions are made in the `nexus-auth` crate; this
//! adapter only moves bytes: headers, callouts, ticks, properties.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use nexus_auth::{Auth, Env, Identity, Outcome, PROPERTY_AUTH_METHOD, PROPERTY_CLIENT_ID};
use nexus_filter_core::{Level, Log};
use nexus_proxy_wasm::{
    apply, configure, set_property, HostCallouts, HostClock, HostHeaders, HostLog, HostMetrics,
    HostSharedData,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

// ring links getrandom 0.2; wasm32-unknown-unknown has no entropy and verification needs none.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn no_entropy(_: &mut [u8]) -> Result<(), getrandom::Error> {
    Err(getrandom::Error::UNSUPPORTED)
}
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
getrandom::register_custom_getrandom!(no_entropy);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(AuthRoot { shared: None })
    });
}}

/// How often the root context refreshes keys and picks up other workers' fetches.
const TICK: Duration = Duration::from_secs(1);

struct Shared {
    auth: Auth,
    metrics: HostMetrics,
    /// HTTP contexts paused until a JWKS fetch on this worker completes.
    waiting: RefCell<Vec<u32>>,
}

impl Shared {
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

    /// Feeds a callout answer to the filter, then re-decides every waiting request.
    fn on_call_response(&self, token: u32, body_size: usize) {
        let status = hostcalls::get_map_value(
            proxy_wasm::types::MapType::HttpCallResponseHeaders,
            ":status",
        )
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u32>().ok());
        let body = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::HttpCallResponseBody,
            0,
            body_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        self.with_env(|auth, env| auth.on_http_call_response(token, status, &body, env));
        self.resume_waiting();
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
            match outcome {
                Outcome::Pause => self.waiting.borrow_mut().push(ctx),
                Outcome::Continue(identity) => {
                    publish(identity.as_ref());
                    if let Err(s) = hostcalls::resume_http_request() {
                        HostLog.log(Level::Warn, &format!("resuming request failed: {s:?}"));
                    }
                }
                Outcome::Respond(resp) => {
                    apply(nexus_filter_core::Action::Respond(resp));
                }
            }
        }
    }
}

/// The identity as Envoy properties (filter state `wasm.nexus.client_id`, ...).
fn publish(identity: Option<&Identity>) {
    if let Some(id) = identity {
        set_property(PROPERTY_CLIENT_ID, id.client_id.as_bytes());
        set_property(PROPERTY_AUTH_METHOD, id.method.as_bytes());
    }
}

struct AuthRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for AuthRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(s) = &self.shared {
            s.on_call_response(token, body_size);
        }
    }
}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(auth) = configure("nexus-auth", Auth::from_json) else {
            return false;
        };
        if auth.has_remote_jwks() {
            if let Err(s) = hostcalls::set_tick_period(TICK) {
                HostLog.log(Level::Warn, &format!("nexus-auth: no ticks: {s:?}"));
            }
        }
        self.shared = Some(Rc::new(Shared {
            auth,
            metrics: HostMetrics::default(),
            waiting: RefCell::new(Vec::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(s) = &self.shared {
            if s.with_env(|auth, env| auth.on_tick(env)) {
                s.resume_waiting();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(AuthHttp { shared, context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthHttp {
    shared: Rc<Shared>,
    context_id: u32,
}

impl Context for AuthHttp {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        self.shared.on_call_response(token, body_size);
    }

    fn on_done(&mut self) -> bool {
        self.shared
            .waiting
            .borrow_mut()
            .retain(|c| *c != self.context_id);
        true
    }
}

impl HttpContext for AuthHttp {
    fn on_http_request_headers(
        &mut self,
        _headers: usize,
        _end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        let outcome = self
            .shared
            .with_env(|auth, env| auth.on_request_headers(&mut HostHeaders::request(), env, true));
        match outcome {
            Outcome::Continue(identity) => {
                publish(identity.as_ref());
                proxy_wasm::types::Action::Continue
            }
            Outcome::Respond(resp) => apply(nexus_filter_core::Action::Respond(resp)),
            Outcome::Pause => {
                self.shared.waiting.borrow_mut().push(self.context_id);
                proxy_wasm::types::Action::Pause
            }
        }
    }
}
