//! nexus-router, wired to proxy-wasm. All decisions are made in the `nexus-router` crate.
//!
//! Only request headers are exported: Envoy makes no other call into the VM per request.

use std::cell::RefCell;

use nexus_filter_core::{Clock, IdGenerator};
use nexus_proxy_wasm::{
    apply, parse_config, Action, Filter, HostClock, HostHeaders, HostLog, HostMetrics,
};
use nexus_router::Router;

nexus_proxy_wasm::export_filter!(RouterFilter, [request_headers]);

struct RouterFilter {
    router: Router,
    ids: RefCell<IdGenerator>,
    metrics: HostMetrics,
}

impl Filter for RouterFilter {
    fn configure(root_id: u32, config: &[u8]) -> Option<Self> {
        let router = parse_config("nexus-router", config, Router::from_json)?;
        // Workers are separate VMs with identical code: the clock makes their id streams differ.
        let seed = HostClock.now_unix_nanos() ^ (u64::from(root_id) << 48);
        Some(Self {
            router,
            ids: RefCell::new(IdGenerator::new(seed)),
            metrics: HostMetrics::default(),
        })
    }

    fn on_request_headers(&self, _context: u32) -> Action {
        let decision = self.router.on_request_headers(
            &mut HostHeaders::request(),
            &mut self.ids.borrow_mut(),
            &self.metrics,
            &HostLog,
        );
        apply(decision)
    }
}
