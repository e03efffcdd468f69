//! nexus-router, wired to proxy-wasm. All decisions are made in the `nexus-router` crate.
//!
//! Request bodies are exported for GraphQL rules: such a POST is held at its headers until the
//! body is complete (bounded by the rule's `max_body_bytes`), then routed or refused. Other
//! requests never pause; Envoy still calls the body callback, which returns at once.

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_filter_core::{Clock, Level, Log};
use nexus_proxy_wasm::hostcalls::{self, BufferType};
use nexus_proxy_wasm::{
    apply, parse_config, Action, Filter, HostClock, HostHeaders, HostLog, HostMetrics,
};
use nexus_router::{BodyStep, GraphqlWait, Router, Step};

nexus_proxy_wasm::export_filter!(RouterFilter, [request_headers, request_body, stream_end]);

struct RouterFilter {
    router: Router,
    ids: RefCell<nexus_filter_core::IdGenerator>,
    metrics: HostMetrics,
    /// GraphQL requests waiting for their body, by context id.
    waiting: RefCell<HashMap<u32, GraphqlWait>>,
}

impl Filter for RouterFilter {
    fn configure(root_id: u32, config: &[u8]) -> Option<Self> {
        let router = parse_config("nexus-router", config, Router::from_json)?;
        // Workers are separate VMs with identical code: the clock makes their id streams differ.
        let seed = HostClock.now_unix_nanos() ^ (u64::from(root_id) << 48);
        Some(Self {
            router,
            ids: RefCell::new(nexus_filter_core::IdGenerator::new(seed)),
            metrics: HostMetrics::default(),
            waiting: RefCell::new(HashMap::new()),
        })
    }

    fn on_request_headers_end(&self, context: u32, end_of_stream: bool) -> Action {
        let step = self.router.on_request_headers_step(
            &mut HostHeaders::request(),
            &mut self.ids.borrow_mut(),
            &self.metrics,
            &HostLog,
            end_of_stream,
        );
        match step {
            Step::Continue => Action::Continue,
            Step::Respond(r) => apply(nexus_filter_core::Action::Respond(r)),
            Step::ReadBody(wait) => {
                self.waiting.borrow_mut().insert(context, wait);
                Action::Pause
            }
        }
    }

    fn on_request_body(&self, context: u32, size: usize, end_of_stream: bool) -> Action {
        let Some(wait) = self.waiting.borrow().get(&context).copied() else {
            return Action::Continue;
        };
        if let Some(r) = self.router.graphql_body_too_large(wait, size) {
            self.waiting.borrow_mut().remove(&context);
            return apply(nexus_filter_core::Action::Respond(r));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.waiting.borrow_mut().remove(&context);
        let body = hostcalls::buffer(BufferType::RequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let step = self.router.on_graphql_body(
            wait,
            &body,
            &mut HostHeaders::request(),
            &self.metrics,
            &HostLog,
        );
        match step {
            BodyStep::Continue => Action::Continue,
            BodyStep::Respond(r) => apply(nexus_filter_core::Action::Respond(r)),
            BodyStep::Replace(new) => {
                if let Err(status) = hostcalls::replace_buffer(BufferType::RequestBody, size, &new)
                {
                    HostLog.log(
                        Level::Error,
                        &format!("nexus-router: replacing the GraphQL body failed: {status}"),
                    );
                }
                Action::Continue
            }
        }
    }

    fn on_stream_end(&self, context: u32) {
        self.waiting.borrow_mut().remove(&context);
    }
}
