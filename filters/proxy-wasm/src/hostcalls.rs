//! The proxy-wasm ABI 0.2.1 host functions, with safe wrappers that never panic.
//!
//! Nexus binds the ABI itself instead of using the `proxy-wasm` SDK for two reasons. The SDK
//! panics inside its hostcall wrappers on an unexpected status and on a header value that is not
//! UTF-8 (`obs-text` bytes are legal HTTP), and a panic kills the VM and every request on the
//! worker. And the SDK exports every callback of the ABI, so Envoy calls into the VM five to
//! seven times per request even for a filter that only reads request headers; see
//! [`crate::export_filter`].

use std::ptr::null_mut;

use nexus_filter_core::{fasthash, HeaderList};

/// A hostcall's status (`WasmResult` in Envoy). Anything but `Ok` is an error here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const OK: Status = Status(0);
    pub const NOT_FOUND: Status = Status(1);
    pub const CAS_MISMATCH: Status = Status(8);
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            0 => "Ok",
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => return write!(f, "status {}", self.0),
        };
        f.write_str(name)
    }
}

fn check(status: u32) -> Result<(), Status> {
    if status == 0 {
        Ok(())
    } else {
        Err(Status(status))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    GrpcReceiveInitialMetadata = 4,
    HttpCallResponseHeaders = 6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    RequestBody = 0,
    ResponseBody = 1,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Histogram = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_http_call(
        cluster: *const u8,
        cluster_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_grpc_call(
        cluster: *const u8,
        cluster_size: usize,
        service: *const u8,
        service_size: usize,
        method: *const u8,
        method_size: usize,
        metadata: *const u8,
        metadata_size: usize,
        message: *const u8,
        message_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_grpc_stream(
        cluster: *const u8,
        cluster_size: usize,
        service: *const u8,
        service_size: usize,
        method: *const u8,
        method_size: usize,
        metadata: *const u8,
        metadata_size: usize,
        token: *mut u32,
    ) -> u32;
    fn proxy_grpc_send(token: u32, message: *const u8, size: usize, end_stream: u32) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_get_status(code: *mut u32, message: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, delta: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

/// Memory the host filled through `proxy_on_memory_allocate`; ours to free.
///
/// # Safety
/// `data` is null or was returned by [`allocate`] with exactly `size` bytes.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// The allocator behind `proxy_on_memory_allocate`: a boxed slice, so [`take`] can free it as a
/// `Vec` whose capacity equals its length.
pub fn allocate(size: usize) -> *mut u8 {
    let slice: Box<[u8]> = vec![0u8; size].into_boxed_slice();
    Box::into_raw(slice).cast::<u8>()
}

/// A read hostcall: `Ok(None)` for "not found", the bytes otherwise.
fn read(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        // SAFETY: on success the host wrote a pointer it got from our allocator, and its size.
        0 => Ok(unsafe { take(data, size) }),
        1 => Ok(None),
        s => Err(Status(s)),
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live &str. Nothing sensible to do if logging fails.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The lowest level the host writes (`Trace` if it cannot say: logging too much beats losing
/// lines). Envoy answers with the `wasm` logger's level, which `/logging` can change at runtime.
pub fn log_level() -> LogLevel {
    let mut level = 0u32;
    // SAFETY: writes one u32.
    match unsafe { proxy_get_log_level(&mut level) } {
        0 => match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            // 4 error, 5 critical, 6 off: at most errors are written.
            _ => LogLevel::Error,
        },
        _ => LogLevel::Trace,
    }
}

pub fn now_unix_nanos() -> u64 {
    let mut t = 0u64;
    // SAFETY: writes one u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        0 => t,
        _ => 0,
    }
}

thread_local! {
    static TICK_PERIOD_MS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })?;
    TICK_PERIOD_MS.with(|t| t.set(period));
    Ok(())
}

/// The tick period set in this VM since the last call (0: none set), so the root context
/// knows which period a filter's `configure` asked for.
pub fn take_tick_period_ms() -> u32 {
    TICK_PERIOD_MS.with(|t| t.replace(0))
}

pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: out-pointers to locals.
    read(|d, s| unsafe { proxy_get_buffer_bytes(kind as u32, start, max, d, s) })
}

/// Replaces the whole body buffer `kind`, `current` bytes long, with `data` (Envoy drains
/// `current` bytes from the start and prepends `data`).
pub fn replace_buffer(kind: BufferType, current: usize, data: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length of a live slice.
    check(unsafe { proxy_set_buffer_bytes(kind as u32, 0, current, data.as_ptr(), data.len()) })
}

pub fn header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointer and length of a live &str, out-pointers to locals.
    read(|d, s| unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), d, s) })
}

/// Every header of a map, in order. Bytes that are not UTF-8 (legal `obs-text`) are replaced
/// with U+FFFD rather than failing the request.
pub fn header_pairs(map: MapType) -> Result<HeaderList, Status> {
    // SAFETY: out-pointers to locals.
    let bytes = read(|d, s| unsafe { proxy_get_header_map_pairs(map as u32, d, s) })?;
    Ok(bytes.map(decode_pairs).unwrap_or_default())
}

pub fn set_header(map: MapType, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live &strs.
    check(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live &str.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// The property at `path` (e.g. `["node", "id"]`); `Ok(None)` when Envoy has none.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    // A path is its segments separated by NULs.
    let joined = path.join("\0");
    // SAFETY: pointer and length of a live String, out-pointers to locals.
    read(|d, s| unsafe { proxy_get_property(joined.as_ptr(), joined.len(), d, s) })
}

/// Sets property `name` (one path segment; Envoy keeps it as filter state `wasm.<name>`).
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // A path is its segments separated by NULs: one segment is just the name.
    // SAFETY: pointers and lengths of live buffers.
    check(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS token; `Ok(None)` when the key is absent.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut cas = 0u32;
    // SAFETY: pointer and length of a live &str, out-pointers to locals.
    let value =
        read(|d, s| unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas) })?;
    Ok(value.map(|v| (v, cas)))
}

/// `cas` 0 writes unconditionally.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live buffers.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Resumes the current context's request (after a `Pause`).
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers. Stream type 0 is the HTTP request.
    check(unsafe { proxy_continue_stream(0) })
}

/// Answers the request with `status`, `headers` and `body`; `details` becomes Envoy's
/// response code details (`%RESPONSE_CODE_DETAILS%` in access logs; no spaces).
pub fn send_local_response(
    status: u16,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    let headers = encode_pairs(headers);
    // SAFETY: pointers and lengths of live buffers. grpc_status -1: not a gRPC response.
    check(unsafe {
        proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

fn timeout(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    let headers = encode_pairs(headers);
    let mut token = 0u32;
    // SAFETY: pointers and lengths of live buffers, out-pointer to a local.
    check(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            null_mut(),
            0,
            timeout(timeout_ms),
            &mut token,
        )
    })?;
    Ok(token)
}

pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    let mut token = 0u32;
    let target = crate::grpc_target::grpc_target(cluster);
    // SAFETY: pointers and lengths of live buffers, out-pointer to a local.
    check(unsafe {
        proxy_grpc_call(
            target.as_ptr(),
            target.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            null_mut(),
            0,
            message.as_ptr(),
            message.len(),
            timeout(timeout_ms),
            &mut token,
        )
    })?;
    Ok(token)
}

pub fn grpc_stream(cluster: &str, service: &str, method: &str) -> Result<u32, Status> {
    let mut token = 0u32;
    let target = crate::grpc_target::grpc_target(cluster);
    // SAFETY: pointers and lengths of live buffers, out-pointer to a local.
    check(unsafe {
        proxy_grpc_stream(
            target.as_ptr(),
            target.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            null_mut(),
            0,
            &mut token,
        )
    })?;
    Ok(token)
}

pub fn grpc_send(token: u32, message: &[u8], end_stream: bool) -> Result<(), Status> {
    // SAFETY: pointer and length of a live buffer.
    check(unsafe {
        proxy_grpc_send(
            token,
            message.as_ptr(),
            message.len(),
            u32::from(end_stream),
        )
    })
}

pub fn grpc_cancel(token: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_grpc_cancel(token) })
}

/// The gRPC status message of the call being reported (in `proxy_on_grpc_close`).
pub fn grpc_status_message() -> Option<String> {
    let mut code = 0u32;
    // SAFETY: out-pointers to locals.
    read(|d, s| unsafe { proxy_get_status(&mut code, d, s) })
        .ok()
        .flatten()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
}

pub fn set_effective_context(context: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context) })
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live &str, out-pointer to a local.
    check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(id, value) })
}

/// The ABI's header-map encoding: a u32 count, a (key length, value length) u32 pair per
/// entry, then each key and value followed by a NUL. All integers little-endian.
pub fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes [`encode_pairs`]' format in place: the text is kept as one buffer and checked once
/// (ASCII, eight bytes at a time; full UTF-8 validation only if that fails), instead of a lossy
/// byte-at-a-time pass and two allocations per header: a bearer token makes this the request's
/// largest buffer. Bytes that are not UTF-8 (legal `obs-text`) become U+FFFD. A truncated or
/// inconsistent buffer yields the entries read before the inconsistency, never a panic.
pub fn decode_pairs(mut bytes: Vec<u8>) -> HeaderList {
    let u32_at = |bytes: &[u8], at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    let Some(count) = u32_at(&bytes, 0) else {
        return HeaderList::new();
    };
    // Each entry takes at least 10 bytes: a hostile count cannot make us allocate much.
    let mut spans = Vec::with_capacity(count.min(bytes.len() / 10));
    let mut p = 0usize;
    for n in 0..count {
        let at = n.saturating_mul(8);
        let (Some(klen), Some(vlen)) = (
            u32_at(&bytes, at.saturating_add(4)),
            u32_at(&bytes, at.saturating_add(8)),
        ) else {
            break;
        };
        let name = p..p.saturating_add(klen);
        p = name.end.saturating_add(1);
        let value = p..p.saturating_add(vlen);
        p = value.end.saturating_add(1);
        spans.push((name, value));
    }
    let start = 4usize
        .saturating_add(count.saturating_mul(8))
        .min(bytes.len());
    bytes.drain(..start);
    if fasthash::is_ascii(&bytes) {
        // SAFETY: every byte is ASCII (checked just above), and ASCII text is valid UTF-8.
        let text = unsafe { String::from_utf8_unchecked(bytes) };
        return HeaderList::from_text(text, spans);
    }
    match String::from_utf8(bytes) {
        Ok(text) => HeaderList::from_text(text, spans),
        Err(e) => {
            let bytes = e.into_bytes();
            let mut list = HeaderList::new();
            for (name, value) in spans {
                let (Some(k), Some(v)) = (bytes.get(name), bytes.get(value)) else {
                    break;
                };
                list.push(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
            }
            list
        }
    }
}

/// Opens a gRPC stream and sends its one request message, ending the request side (a
/// server-streaming call such as the cache service's `Subscribe`).
pub fn grpc_server_stream(
    cluster: &str,
    service: &str,
    method: &str,
    request: &[u8],
) -> Result<u32, Status> {
    let token = grpc_stream(cluster, service, method)?;
    grpc_send(token, request, true)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = [(":path", "/a?b=c"), ("x-empty", ""), ("host", "lake")];
        let decoded = decode_pairs(encode_pairs(&pairs)).to_vec();
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn valid_utf8_beyond_ascii_is_kept() {
        let decoded = decode_pairs(encode_pairs(&[("x-name", "café ☕"), ("a", "b")]));
        assert_eq!(decoded.get("x-name"), Some("café ☕"));
        assert_eq!(decoded.get("a"), Some("b"));
    }

    #[test]
    fn non_utf8_values_are_replaced_not_fatal() {
        let mut bytes = encode_pairs(&[("x-bin", "ab")]);
        let at = bytes.len() - 3; // the 'a' of the value
        bytes[at] = 0xff;
        assert_eq!(
            decode_pairs(bytes).to_vec(),
            vec![("x-bin".to_string(), "\u{fffd}b".to_string())]
        );
    }

    #[test]
    fn truncated_or_hostile_buffers_yield_what_is_whole() {
        let bytes = encode_pairs(&[("a", "1"), ("b", "2")]);
        assert_eq!(decode_pairs(bytes[..bytes.len() - 2].to_vec()).len(), 1);
        assert!(decode_pairs(vec![1, 2]).is_empty());
        assert!(decode_pairs(u32::MAX.to_le_bytes().to_vec()).is_empty());
        assert!(decode_pairs(Vec::new()).is_empty());
        // Sizes that disagree with the text: nothing past the first bad entry.
        let mut lying = encode_pairs(&[("a", "1"), ("b", "2")]);
        lying[4] = 200; // the first name claims 200 bytes
        assert!(decode_pairs(lying).is_empty());
    }
}
