//! Plain data types shared by the host API and the ABI implementation.

use std::fmt;
use std::time::Duration;

/// A header (or metadata) map: ordered `(name, value)` pairs, duplicates allowed.
pub type HeaderMap = Vec<(String, String)>;

/// Log level of a `proxy_log` call (proxy-wasm ABI values 0..=5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// `0`
    Trace,
    /// `1`
    Debug,
    /// `2`
    Info,
    /// `3`
    Warn,
    /// `4`
    Error,
    /// `5`, also what the Rust SDK's panic hook logs at.
    Critical,
}

impl LogLevel {
    pub(crate) fn from_abi(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }

    pub(crate) fn to_abi(self) -> i32 {
        self as i32
    }
}

/// One captured `proxy_log` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Level the filter logged at.
    pub level: LogLevel,
    /// The message, lossily decoded as UTF-8.
    pub message: String,
    /// The context whose callback was running (the root context is `1`).
    pub context_id: u32,
}

/// What a filter callback told the host to do with the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `0`: continue iteration (`Action::Continue` in the Rust SDK).
    Continue,
    /// `1`: stop iteration (`Action::Pause` in the Rust SDK).
    Pause,
    /// Any other value (Envoy understands a few more, the Rust SDK never returns them).
    Other(u32),
}

impl Action {
    pub(crate) fn from_abi(v: i32) -> Self {
        match v {
            0 => Self::Continue,
            1 => Self::Pause,
            v => Self::Other(v as u32),
        }
    }
}

/// proxy-wasm status codes (ABI 0.2.1 `proxy_status_t`), as returned by hostcalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The requested item does not exist.
    NotFound = 1,
    /// An argument was invalid.
    BadArgument = 2,
    /// Data could not be serialized.
    SerializationFailure = 3,
    /// Data could not be parsed.
    ParseFailure = 4,
    /// An expression was invalid.
    BadExpression = 5,
    /// A pointer or length pointed outside the module's memory.
    InvalidMemoryAccess = 6,
    /// A queue was empty.
    Empty = 7,
    /// Shared data compare-and-swap value did not match.
    CasMismatch = 8,
    /// Result mismatch.
    ResultMismatch = 9,
    /// Host internal error.
    InternalFailure = 10,
    /// Connection broken.
    BrokenConnection = 11,
    /// Not implemented by the host.
    Unimplemented = 12,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}({})", *self as u32)
    }
}

/// Stream selector of `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `0`: the HTTP request.
    HttpRequest,
    /// `1`: the HTTP response.
    HttpResponse,
    /// `2`: downstream connection data (TCP filters).
    Downstream,
    /// `3`: upstream connection data (TCP filters).
    Upstream,
}

impl StreamType {
    pub(crate) fn from_abi(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// Kind of a metric defined with `proxy_define_metric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic counter.
    Counter,
    /// Gauge (can go up and down).
    Gauge,
    /// Histogram (records samples).
    Histogram,
}

/// A local reply sent by the filter with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status code.
    pub status: u32,
    /// Response code details (Envoy's `%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    /// Response body.
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: HeaderMap,
    /// gRPC status (`-1` when not a gRPC response).
    pub grpc_status: i32,
}

impl LocalResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body, lossily decoded as UTF-8.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP callout made with `proxy_http_call`, waiting for the test to answer it with
/// [`Host::respond_http_call`](crate::Host::respond_http_call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCallout {
    /// Token the filter got back; pass it to `respond_http_call`.
    pub token: u32,
    /// Context that made the call (its effective context).
    pub context_id: u32,
    /// Upstream cluster name.
    pub cluster: String,
    /// Request headers, including `:method`, `:path`, `:authority`.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout the filter asked for.
    pub timeout: Duration,
}

impl HttpCallout {
    /// First value of request header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// State of a gRPC callout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcCalloutState {
    /// Waiting for the test to answer (or, for a stream, still open).
    Open,
    /// The filter cancelled it with `proxy_grpc_cancel`.
    Cancelled,
    /// The filter closed it with `proxy_grpc_close`.
    Closed,
    /// The test answered it: a unary response was delivered, or `Host::grpc_close` was called.
    Finished,
}

/// A gRPC callout made with `proxy_grpc_call` (unary) or `proxy_grpc_stream`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCallout {
    /// Token the filter got back; pass it to the `Host::grpc_*` answer methods.
    pub token: u32,
    /// Context that made the call.
    pub context_id: u32,
    /// Upstream (cluster name as the Rust SDK passes it).
    pub cluster: String,
    /// gRPC service name.
    pub service: String,
    /// gRPC method name.
    pub method: String,
    /// Initial metadata sent with the call.
    pub initial_metadata: HeaderMap,
    /// Messages sent: the request for a unary call, each `proxy_grpc_send` for a stream.
    pub messages: Vec<Vec<u8>>,
    /// Timeout (unary calls only).
    pub timeout: Option<Duration>,
    /// Whether this is a stream (`proxy_grpc_stream`).
    pub streaming: bool,
    /// Whether the filter sent `end_stream` on a stream.
    pub end_stream_sent: bool,
    /// Current state.
    pub state: GrpcCalloutState,
}

/// A hostcall that strict mode rejected (or, in non-strict mode, that returned an error the
/// filter would not expect), or a trap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The hostcall (`proxy_http_call`, ...) or `"trap"`.
    pub hostcall: String,
    /// Status code the ABI returns for this (non-strict mode returns it to the filter).
    pub status: Status,
    /// What went wrong.
    pub message: String,
    /// Context whose callback was running.
    pub context_id: u32,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (context {}): {} [{}]",
            self.hostcall, self.context_id, self.message, self.status
        )
    }
}

/// Callback name and wasm fuel (≈ instructions) it consumed, see
/// [`Host::fuel_log`](crate::Host::fuel_log).
pub type FuelRecord = (String, u64);

pub(crate) fn find_header<'a>(map: &'a [(String, String)], name: &str) -> Option<&'a str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Serialize a map in the proxy-wasm format: `u32` count, then per pair `u32` key length and
/// `u32` value length, then each key and value followed by a NUL byte (all little-endian).
pub fn serialize_map<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parse a map serialized by [`serialize_map`]. An empty input is an empty map.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut p = n.checked_mul(8)?.checked_add(4)?;
    let mut out = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        let klen = u32_at(4 + i * 8)?;
        let vlen = u32_at(8 + i * 8)?;
        let key = bytes.get(p..p.checked_add(klen)?)?.to_vec();
        p += klen;
        if bytes.get(p) != Some(&0) {
            return None;
        }
        p += 1;
        let value = bytes.get(p..p.checked_add(vlen)?)?.to_vec();
        p += vlen;
        if bytes.get(p) != Some(&0) {
            return None;
        }
        p += 1;
        out.push((key, value));
    }
    Some(out)
}

pub(crate) fn lossy_map(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> HeaderMap {
    pairs
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

pub(crate) fn owned_map(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
