//! The host, as filter logic sees it. Each trait is small so a test double is a few lines.

/// Request or response headers of the current stream.
///
/// Names are lower case (HTTP/2 and Envoy normalise them), pseudo-headers (`:path`,
/// `:method`, `:authority`) included.
pub trait HeaderMap {
    fn get(&self, name: &str) -> Option<String>;
    /// All headers in order; one host round trip, for filters that look at many.
    fn pairs(&self) -> crate::HeaderList;
    /// Replaces every value of `name`.
    fn set(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);
}

/// Wall-clock time from the host (`SystemTime::now()` traps on wasm32-unknown-unknown).
pub trait Clock {
    fn now_unix_nanos(&self) -> u64;
}

/// Counters and histograms, by name. The adapter defines each metric once and caches its id.
pub trait Metrics {
    fn increment(&self, name: &str, delta: i64);
    /// One sample of a histogram (Envoy keeps the quantiles).
    fn record(&self, name: &str, value: u64);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

pub trait Log {
    fn log(&self, level: Level, message: &str);
    /// Whether a line at `level` would be written: callers skip building lines that would not.
    fn enabled(&self, _level: Level) -> bool {
        true
    }
}

/// Data shared by every worker of one VM (Envoy's shared data), with compare-and-swap.
pub trait SharedData {
    /// The value and its CAS token, if the key exists.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value`; with `cas`, only if the key was not written since that token was read.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDataError {
    /// Someone else wrote the key first; read again and retry.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// HTTP callouts through an Envoy cluster (`proxy_dispatch_http_call`). The answer arrives
/// later, in the adapter's `on_http_call_response`, tagged with the returned token.
pub trait Callouts {
    /// `headers` must include `:method`, `:path` and `:authority`.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, CalloutError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutError {
    /// The host refused the call (unknown cluster, bad headers).
    Refused,
}
