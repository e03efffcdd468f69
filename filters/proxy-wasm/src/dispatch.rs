//! The VM side of the proxy-wasm ABI: one configured [`Filter`] per VM, and the exports that
//! reach it.
//!
//! Every call Envoy makes into the VM costs about half a microsecond (measured with V8 in
//! Envoy 1.40), whatever the callee does. So [`crate::export_filter!`] exports only the stream
//! callbacks a filter names, and not `proxy_on_context_create`: a filter that only reads request
//! headers costs one call per request, where the SDK's full set of exports costs five to seven.
//!
//! Without context creation a stream cannot be told apart from another plugin's, so a VM runs
//! exactly one plugin configuration. Nexus renders a `vm_id` unique to each configuration (see
//! `nexus_config::vm_id`); a second configuration arriving in the same VM is refused with an
//! error saying so, rather than served with the wrong rules.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use nexus_config::report::{ReportSink, VmConfiguration};

use crate::hostcalls::{self, BufferType, LogLevel};
use crate::report::Reporter;
use crate::HostMetrics;

/// The root context's tick while it reports: reports are due every `interval_ms` (seconds),
/// and the first as soon as a filter is configured.
const REPORT_TICK_MS: u32 = 1000;

/// What a stream callback tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

/// One configured filter: the state of a root context, shared by the streams it serves.
///
/// Stream callbacks get the stream's context id; per-stream state, if any, is the filter's to
/// keep (keyed by that id) and to drop in [`Filter::on_stream_end`].
pub trait Filter: Sized + 'static {
    /// Builds the filter from its plugin configuration. `None` rejects the configuration:
    /// Envoy then refuses the filter instead of running with a half-understood one.
    fn configure(root_id: u32, config: &[u8]) -> Option<Self>;
    fn on_tick(&self) {}
    /// An HTTP callout answered (`status` None: failed or timed out).
    fn on_http_call_response(&self, _token: u32, _status: Option<u32>, _body: &[u8]) {}
    /// A gRPC call or stream message arrived for `context` (the caller's context id).
    fn on_grpc_receive(&self, _context: u32, _token: u32, _message: &[u8]) {}
    /// A gRPC call or stream closed with a non-OK status, or a stream ended.
    fn on_grpc_close(&self, _context: u32, _token: u32, _status: u32, _message: &str) {}
    fn on_request_headers(&self, _context: u32) -> Action {
        Action::Continue
    }
    /// [`Filter::on_request_headers`] for filters that need to know whether a body follows.
    fn on_request_headers_end(&self, context: u32, _end_of_stream: bool) -> Action {
        self.on_request_headers(context)
    }
    /// A request body chunk: `size` bytes are readable (all buffered ones after a `Pause`).
    fn on_request_body(&self, _context: u32, _size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_response_headers(&self, _context: u32, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_response_body(&self, _context: u32, _size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_response_trailers(&self, _context: u32) -> Action {
        Action::Continue
    }
    /// The stream is gone (completed or reset).
    fn on_stream_end(&self, _context: u32) {}
}

/// The VM's root context and its filter, and the report of what it runs
/// ([`crate::report`]), which every filter gets from here.
pub struct Root<F> {
    root: RefCell<Option<(u32, Rc<F>)>>,
    /// From the VM configuration.
    sink: RefCell<Option<ReportSink>>,
    reporter: RefCell<Option<Reporter>>,
    metrics: HostMetrics,
    /// The filter's own tick period (0: none) and when its next tick is due: the root may
    /// tick faster for reports, and the filter still ticks at its own period.
    filter_tick_ms: Cell<u32>,
    next_filter_tick_ms: Cell<u64>,
}

impl<F: Filter> Default for Root<F> {
    fn default() -> Self {
        Self {
            root: RefCell::new(None),
            sink: RefCell::new(None),
            reporter: RefCell::new(None),
            metrics: HostMetrics::default(),
            filter_tick_ms: Cell::new(0),
            next_filter_tick_ms: Cell::new(0),
        }
    }
}

impl<F: Filter> Root<F> {
    /// Reads the VM configuration ([`VmConfiguration`]); a malformed one fails the VM, as a
    /// malformed plugin configuration fails the filter.
    pub fn on_vm_start(&self, size: usize) -> bool {
        let bytes = hostcalls::buffer(BufferType::VmConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if bytes.is_empty() {
            return true;
        }
        match serde_json::from_slice::<VmConfiguration>(&bytes) {
            Ok(vm) => {
                *self.sink.borrow_mut() = vm.report;
                true
            }
            Err(e) => {
                hostcalls::log(LogLevel::Error, &format!("invalid VM configuration: {e}"));
                false
            }
        }
    }

    pub fn on_configure(&self, root: u32, config_size: usize) -> bool {
        if let Some((current, _)) = &*self.root.borrow() {
            if *current != root {
                hostcalls::log(
                    LogLevel::Error,
                    &format!(
                        "this VM already runs another configuration (root context {current}); \
                         nexus filters need one configuration per VM: give each its own vm_id"
                    ),
                );
                return false;
            }
        }
        let config = hostcalls::buffer(BufferType::PluginConfiguration, 0, config_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        // An absent configuration means "defaults", like an empty JSON object.
        let config: &[u8] = if config.is_empty() { b"{}" } else { &config };
        // A failed reconfiguration keeps the running filter.
        // What `configure` sets is the filter's own tick period.
        hostcalls::take_tick_period_ms();
        let Some(filter) = F::configure(root, config) else {
            return false;
        };
        *self.root.borrow_mut() = Some((root, Rc::new(filter)));
        self.filter_tick_ms.set(hostcalls::take_tick_period_ms());
        self.start_reports(config);
        true
    }

    /// A new report (the configuration changed) due at once, and ticks fast enough for it.
    fn start_reports(&self, config: &[u8]) {
        let Some(sink) = self.sink.borrow().clone() else {
            return;
        };
        *self.reporter.borrow_mut() = Some(Reporter::new(sink, config));
        let filter_tick = self.filter_tick_ms.get();
        if filter_tick == 0 || filter_tick > REPORT_TICK_MS {
            if let Err(s) = hostcalls::set_tick_period_ms(REPORT_TICK_MS) {
                hostcalls::log(LogLevel::Warn, &format!("report: no ticks: {s}"));
            }
        }
    }

    /// The report if due, then the filter's tick if it asked for ticks and one is due.
    pub fn on_tick(&self) {
        let Some(filter) = self.filter() else {
            return;
        };
        let now_ms = hostcalls::now_unix_nanos() / 1_000_000;
        crate::refresh_log_level();
        let reporting = match self.reporter.borrow_mut().as_mut() {
            Some(r) => {
                r.tick(now_ms, &self.metrics);
                true
            }
            None => false,
        };
        if !reporting {
            filter.on_tick();
            return;
        }
        let period = u64::from(self.filter_tick_ms.get());
        // Half a root tick of slack: a tick a few milliseconds early still counts.
        if period > 0 && now_ms + u64::from(REPORT_TICK_MS) / 2 >= self.next_filter_tick_ms.get() {
            self.next_filter_tick_ms.set(now_ms + period);
            filter.on_tick();
        }
    }

    /// The filter, for a callback of any context of this VM.
    pub fn filter(&self) -> Option<Rc<F>> {
        self.root.borrow().as_ref().map(|(_, f)| f.clone())
    }

    pub fn on_delete(&self, context: u32) {
        let mut root = self.root.borrow_mut();
        if root.as_ref().is_some_and(|(id, _)| *id == context) {
            *root = None;
            return;
        }
        let filter = root.as_ref().map(|(_, f)| f.clone());
        drop(root);
        if let Some(f) = filter {
            f.on_stream_end(context);
        }
    }

    pub fn on_http_call_response(&self, token: u32, headers: usize, body: usize) {
        let Some(f) = self.filter() else {
            return;
        };
        let status = if headers == 0 {
            None
        } else {
            hostcalls::header(hostcalls::MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok())
        };
        if let Some(r) = self.reporter.borrow_mut().as_mut() {
            if r.answered(token, status, &self.metrics) {
                return;
            }
        }
        let body = hostcalls::buffer(BufferType::HttpCallResponseBody, 0, body)
            .ok()
            .flatten()
            .unwrap_or_default();
        f.on_http_call_response(token, status, &body);
    }

    pub fn on_grpc_receive(&self, context: u32, token: u32, size: usize) {
        let Some(f) = self.filter() else {
            return;
        };
        let message = hostcalls::buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        f.on_grpc_receive(context, token, &message);
    }

    pub fn on_grpc_close(&self, context: u32, token: u32, status: u32) {
        let Some(f) = self.filter() else {
            return;
        };
        let message = if status == 0 {
            String::new()
        } else {
            hostcalls::grpc_status_message().unwrap_or_default()
        };
        f.on_grpc_close(context, token, status, &message);
    }
}

/// Logs a stream callback that came before any configuration took (Envoy does not send
/// requests to a filter whose configuration failed, so this is a host bug).
pub fn unconfigured(callback: &str) {
    hostcalls::log(
        LogLevel::Warn,
        &format!("{callback}: the filter has no configuration; passing the request on"),
    );
}

/// Exports the proxy-wasm ABI for filter type `$filter`, with only the stream callbacks listed:
/// any of `request_headers`, `request_body`, `response_headers`, `response_body`,
/// `response_trailers`, and
/// `stream_end` (exports `proxy_on_delete`, for filters that keep per-stream state).
///
/// Always exported: the ABI version, the allocator, VM start and configuration, ticks, and
/// callout answers.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty, [$($callback:ident),* $(,)?]) => {
        thread_local! {
            static NEXUS_ROOT: $crate::dispatch::Root<$filter> = $crate::dispatch::Root::default();
        }

        fn nexus_filter(callback: &str) -> Option<std::rc::Rc<$filter>> {
            let f = NEXUS_ROOT.with(|r| r.filter());
            if f.is_none() {
                $crate::dispatch::unconfigured(callback);
            }
            f
        }

        #[no_mangle]
        pub extern "C" fn proxy_abi_version_0_2_1() {}

        #[no_mangle]
        pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
            $crate::hostcalls::allocate(size)
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
            u32::from(NEXUS_ROOT.with(|r| r.on_configure(root, size)))
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_vm_start(_root: u32, size: usize) -> u32 {
            u32::from(NEXUS_ROOT.with(|r| r.on_vm_start(size)))
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_tick(_root: u32) {
            NEXUS_ROOT.with(|r| r.on_tick());
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_http_call_response(
            _context: u32,
            token: u32,
            headers: usize,
            body: usize,
            _trailers: usize,
        ) {
            NEXUS_ROOT.with(|r| r.on_http_call_response(token, headers, body));
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_grpc_receive(context: u32, token: u32, size: usize) {
            NEXUS_ROOT.with(|r| r.on_grpc_receive(context, token, size));
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_grpc_close(context: u32, token: u32, status: u32) {
            NEXUS_ROOT.with(|r| r.on_grpc_close(context, token, status));
        }

        $( $crate::export_filter!(@stream $filter, $callback); )*
    };

    (@stream $filter:ty, request_headers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(context: u32, _headers: usize, eos: u32) -> u32 {
            nexus_filter("proxy_on_request_headers").map_or(0, |f| {
                $crate::dispatch::Filter::on_request_headers_end(&*f, context, eos != 0) as u32
            })
        }
    };
    (@stream $filter:ty, request_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_body(context: u32, size: usize, eos: u32) -> u32 {
            nexus_filter("proxy_on_request_body").map_or(0, |f| {
                $crate::dispatch::Filter::on_request_body(&*f, context, size, eos != 0) as u32
            })
        }
    };
    (@stream $filter:ty, response_headers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_headers(context: u32, _headers: usize, eos: u32) -> u32 {
            nexus_filter("proxy_on_response_headers").map_or(0, |f| {
                $crate::dispatch::Filter::on_response_headers(&*f, context, eos != 0) as u32
            })
        }
    };
    (@stream $filter:ty, response_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_body(context: u32, size: usize, eos: u32) -> u32 {
            nexus_filter("proxy_on_response_body").map_or(0, |f| {
                $crate::dispatch::Filter::on_response_body(&*f, context, size, eos != 0) as u32
            })
        }
    };
    (@stream $filter:ty, response_trailers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_trailers(context: u32, _trailers: usize) -> u32 {
            nexus_filter("proxy_on_response_trailers")
                .map_or(0, |f| $crate::dispatch::Filter::on_response_trailers(&*f, context) as u32)
        }
    };
    (@stream $filter:ty, stream_end) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_delete(context: u32) {
            NEXUS_ROOT.with(|r| r.on_delete(context));
        }
    };
}
