//! The host traits of `nexus-filter-core`, implemented with proxy-wasm hostcalls, and the ABI
//! binding under them ([`hostcalls`], [`dispatch`], [`export_filter!`]).
//!
//! Everything here is a direct translation; filter decisions live in the host-agnostic crates.
//! Hostcall failures never panic: a failed read is "absent", a failed write is logged.

pub mod audit;
pub mod dispatch;
mod grpc_target;
pub mod hostcalls;
pub mod paused;
pub mod report;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub use dispatch::{Action, Filter};
use hostcalls::{LogLevel, MapType, MetricType, Status};
use nexus_filter_core::fasthash::{self, FxBuild};
use nexus_filter_core::host::{CalloutError, Callouts, SharedDataError};
use nexus_filter_core::{Clock, HeaderList, HeaderMap, Level, Log, Metrics, SharedData};
pub use paused::{Answered, PausedCalls};

/// Request or response headers of the current HTTP context.
pub struct HostHeaders(pub MapType);

impl HostHeaders {
    pub fn request() -> Self {
        Self(MapType::RequestHeaders)
    }
    pub fn response() -> Self {
        Self(MapType::ResponseHeaders)
    }
}

impl HeaderMap for HostHeaders {
    fn get(&self, name: &str) -> Option<String> {
        hostcalls::header(self.0, name)
            .ok()
            .flatten()
            // Valid UTF-8 (the usual case) keeps the host's buffer; no second copy.
            .map(|v| {
                String::from_utf8(v)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            })
    }
    fn pairs(&self) -> HeaderList {
        hostcalls::header_pairs(self.0).unwrap_or_default()
    }
    fn set(&mut self, name: &str, value: &str) {
        if let Err(status) = hostcalls::set_header(self.0, name, value) {
            HostLog.log(
                Level::Warn,
                &format!("setting header {name} failed: {status}"),
            );
        }
    }
    fn remove(&mut self, name: &str) {
        if let Err(status) = hostcalls::remove_header(self.0, name) {
            HostLog.log(
                Level::Warn,
                &format!("removing header {name} failed: {status}"),
            );
        }
    }
}

pub struct HostClock;

impl Clock for HostClock {
    fn now_unix_nanos(&self) -> u64 {
        hostcalls::now_unix_nanos()
    }
}

pub struct HostLog;

impl Log for HostLog {
    fn log(&self, level: Level, message: &str) {
        hostcalls::log(abi_level(level), message);
    }
    /// No hostcall where the root ticks (it reads the level at every tick: a level changed at
    /// runtime applies within a tick, 1 s with reports on); one per check otherwise.
    fn enabled(&self, level: Level) -> bool {
        let current = LOG_LEVEL
            .with(Cell::get)
            .unwrap_or_else(hostcalls::log_level);
        abi_level(level) >= current
    }
}

thread_local! {
    /// Envoy's log level as the root last read it ([`refresh_log_level`]); `None` until then.
    /// The per-request log lines ask it once per request per filter, so a read on the root's
    /// schedule keeps a hostcall off every request's path.
    static LOG_LEVEL: Cell<Option<LogLevel>> = const { Cell::new(None) };
}

/// Reads Envoy's log level for [`HostLog::enabled`] (called by the root on its ticks).
pub fn refresh_log_level() {
    LOG_LEVEL.with(|l| l.set(Some(hostcalls::log_level())));
}

fn abi_level(level: Level) -> LogLevel {
    match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    }
}

/// Counters defined on first use; ids cached so a hot path pays one hostcall per increment.
///
/// Keyed by the name's hash, with the name kept and compared a word at a time (a `String` key
/// would be compared with wasm's bytewise `memcmp` on every increment). A colliding name is a
/// miss: `define_metric` again, which Envoy answers with the same id for the same name.
#[derive(Default)]
pub struct HostMetrics {
    ids: RefCell<HashMap<u64, (Box<str>, u32), FxBuild>>,
}

impl HostMetrics {
    fn id(&self, kind: MetricType, name: &str) -> Option<u32> {
        let key = fasthash::hash(name.as_bytes());
        if let Some((known, id)) = self.ids.borrow().get(&key) {
            if fasthash::eq(known.as_bytes(), name.as_bytes()) {
                return Some(*id);
            }
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.ids.borrow_mut().insert(key, (name.into(), id));
        Some(id)
    }
}

impl Metrics for HostMetrics {
    fn increment(&self, name: &str, delta: i64) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
    fn record(&self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

pub struct HostSharedData;

impl SharedData for HostSharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        hostcalls::shared_data(key).ok().flatten()
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        match hostcalls::set_shared_data(key, value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(Status::CAS_MISMATCH) => Err(SharedDataError::CasMismatch),
            Err(_) => Err(SharedDataError::Failed),
        }
    }
}

/// HTTP callouts with `proxy_dispatch_http_call`.
pub struct HostCallouts;

impl Callouts for HostCallouts {
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        hostcalls::http_call(cluster, headers, body, timeout_ms).map_err(|status| {
            HostLog.log(
                Level::Warn,
                &format!("http call to cluster {cluster} failed: {status}"),
            );
            CalloutError::Refused
        })
    }
}

/// Sets an Envoy property (filter state `wasm.<name>` in Envoy), logging a failure.
pub fn set_property(name: &str, value: &[u8]) {
    if let Err(status) = hostcalls::set_property(name, value) {
        HostLog.log(
            Level::Warn,
            &format!("setting property {name} failed: {status}"),
        );
    }
}

/// Turns a filter's decision into the ABI action, sending the local response if any.
pub fn apply(action: nexus_filter_core::Action) -> Action {
    match action {
        nexus_filter_core::Action::Continue => Action::Continue,
        nexus_filter_core::Action::Respond(resp) => {
            let headers: Vec<(&str, &str)> = resp
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if let Err(status) =
                hostcalls::send_local_response(resp.status, &resp.details, &headers, &resp.body)
            {
                HostLog.log(
                    Level::Error,
                    &format!("sending local response {} failed: {status}", resp.status),
                );
            }
            Action::Pause
        }
    }
}

/// Parses a plugin configuration, logging every problem (with its JSON path) on failure.
pub fn parse_config<T, E: std::fmt::Display>(
    filter: &str,
    config: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Option<T> {
    match parse(config) {
        Ok(v) => Some(v),
        Err(e) => {
            HostLog.log(
                Level::Error,
                &format!("{filter}: invalid configuration: {e}"),
            );
            None
        }
    }
}

/// Resumes the current context's paused request, logging a failure.
pub fn resume_request(filter: &str) {
    if let Err(status) = hostcalls::resume_request() {
        HostLog.log(
            Level::Warn,
            &format!("{filter}: resuming request failed: {status}"),
        );
    }
}
