//! The host traits of `nexus-filter-core`, implemented with proxy-wasm hostcalls.
//!
//! Everything here is a direct translation; filter decisions live in the host-agnostic crates.
//! Hostcall failures never panic: a failed read is "absent", a failed write is logged.

use std::cell::RefCell;
use std::collections::HashMap;

use nexus_filter_core::host::{CalloutError, Callouts, SharedDataError};
use nexus_filter_core::{Action, Clock, HeaderMap, Level, Log, Metrics, SharedData};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, MetricType, Status};

/// Request or response headers of the current HTTP context.
pub struct HostHeaders(pub MapType);

impl HostHeaders {
    pub fn request() -> Self {
        Self(MapType::HttpRequestHeaders)
    }
    pub fn response() -> Self {
        Self(MapType::HttpResponseHeaders)
    }
}

impl HeaderMap for HostHeaders {
    fn get(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(self.0, name).ok().flatten()
    }
    fn pairs(&self) -> Vec<(String, String)> {
        hostcalls::get_map(self.0).unwrap_or_default()
    }
    fn set(&mut self, name: &str, value: &str) {
        if let Err(status) = hostcalls::set_map_value(self.0, name, Some(value)) {
            HostLog.log(
                Level::Warn,
                &format!("setting header {name} failed: {status:?}"),
            );
        }
    }
    fn remove(&mut self, name: &str) {
        if let Err(status) = hostcalls::set_map_value(self.0, name, None) {
            HostLog.log(
                Level::Warn,
                &format!("removing header {name} failed: {status:?}"),
            );
        }
    }
}

pub struct HostClock;

impl Clock for HostClock {
    fn now_unix_nanos(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

pub struct HostLog;

impl Log for HostLog {
    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        // Nothing sensible to do if logging itself fails.
        let _ = hostcalls::log(level, message);
    }
}

/// Counters defined on first use; ids cached so a hot path pays one hostcall per increment.
#[derive(Default)]
pub struct HostMetrics {
    ids: RefCell<HashMap<String, u32>>,
}

impl HostMetrics {
    fn id(&self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(name).copied() {
            return Some(id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.ids.borrow_mut().insert(name.to_string(), id);
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
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            _ => None,
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedDataError::CasMismatch),
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
        let body = (!body.is_empty()).then_some(body);
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            Vec::new(),
            std::time::Duration::from_millis(timeout_ms),
        )
        .map_err(|status| {
            HostLog.log(
                Level::Warn,
                &format!("http call to cluster {cluster} failed: {status:?}"),
            );
            CalloutError::Refused
        })
    }
}

/// Sets an Envoy property (filter state `wasm.<name>` in Envoy), logging a failure.
pub fn set_property(name: &str, value: &[u8]) {
    if let Err(status) = hostcalls::set_property(vec![name], Some(value)) {
        HostLog.log(
            Level::Warn,
            &format!("setting property {name} failed: {status:?}"),
        );
    }
}

/// Turns a filter's decision into the proxy-wasm action, sending the local response if any.
pub fn apply(action: Action) -> proxy_wasm::types::Action {
    match action {
        Action::Continue => proxy_wasm::types::Action::Continue,
        Action::Respond(resp) => {
            let headers: Vec<(&str, &str)> = resp
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if let Err(status) =
                hostcalls::send_http_response(u32::from(resp.status), headers, Some(&resp.body))
            {
                HostLog.log(
                    Level::Error,
                    &format!("sending local response {} failed: {status:?}", resp.status),
                );
            }
            proxy_wasm::types::Action::Pause
        }
    }
}

/// Reads the plugin configuration, logging every problem (with its JSON path) on failure.
///
/// Returning `None` makes `on_configure` answer false, so Envoy rejects the filter
/// configuration instead of running with a half-understood one.
pub fn configure<T, E: std::fmt::Display>(
    filter: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Option<T> {
    let bytes = hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    // An absent configuration means "defaults", like an empty JSON object.
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    match parse(bytes) {
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
