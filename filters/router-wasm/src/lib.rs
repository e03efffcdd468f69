//! nexus-router, wired to proxy-wasm. All decisions are made in the `nexus-router` crate.

use std::cell::RefCell;
use std::rc::Rc;

use nexus_filter_core::{Clock, IdGenerator};
use nexus_proxy_wasm::{apply, configure, HostClock, HostHeaders, HostMetrics};
use nexus_router::Router;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|root_id| -> Box<dyn RootContext> {
        Box::new(RouterRoot { root_id, shared: None })
    });
}}

struct Shared {
    router: Router,
    ids: RefCell<IdGenerator>,
    metrics: HostMetrics,
}

struct RouterRoot {
    root_id: u32,
    shared: Option<Rc<Shared>>,
}

impl Context for RouterRoot {}

impl RootContext for RouterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(router) = configure("nexus-router", Router::from_json) else {
            return false;
        };
        // Workers are separate VMs with identical code: the clock makes their id streams differ.
        let seed = HostClock.now_unix_nanos() ^ (u64::from(self.root_id) << 48);
        self.shared = Some(Rc::new(Shared {
            router,
            ids: RefCell::new(IdGenerator::new(seed)),
            metrics: HostMetrics::default(),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(RouterHttp { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RouterHttp {
    shared: Rc<Shared>,
}

impl Context for RouterHttp {}

impl HttpContext for RouterHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let s = &self.shared;
        let decision = s.router.on_request_headers(
            &mut HostHeaders::request(),
            &mut s.ids.borrow_mut(),
            &s.metrics,
        );
        apply(decision)
    }
}
