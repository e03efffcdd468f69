//! Host side of the proxy-wasm ABI 0.2.1 (`env.proxy_*`) plus the few WASI preview1 functions a
//! filter may import.

use std::time::Duration;

use wasmtime::{Caller, ExternType, Linker, Module, Store};

use crate::state::{Metric, Queue, State};
use crate::types::*;

/// Error of a hostcall implementation.
pub(crate) enum HostErr {
    /// The call is rejected: strict mode traps, non-strict mode returns the status.
    Violation(Status, String),
    /// Always traps (e.g. the module's allocator trapped).
    Fatal(wasmtime::Error),
}

impl From<wasmtime::Error> for HostErr {
    fn from(e: wasmtime::Error) -> Self {
        HostErr::Fatal(e)
    }
}

type HResult = Result<Status, HostErr>;
type Cx<'a> = Caller<'a, State>;

fn violation<T>(status: Status, msg: impl Into<String>) -> Result<T, HostErr> {
    Err(HostErr::Violation(status, msg.into()))
}

fn finish(c: &mut Cx<'_>, name: &'static str, r: HResult) -> wasmtime::Result<i32> {
    match r {
        Ok(s) => Ok(s as i32),
        Err(HostErr::Violation(status, message)) => {
            let st = c.data_mut();
            st.violations.push(Violation {
                hostcall: name.to_string(),
                status,
                message: message.clone(),
                context_id: st.current_ctx,
            });
            if st.strict {
                Err(wasmtime::format_err!(
                    "strict mode: hostcall {name} rejected: {message}"
                ))
            } else {
                Ok(status as i32)
            }
        }
        Err(HostErr::Fatal(e)) => Err(e.context(format!("hostcall {name} failed"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory helpers

fn read(c: &mut Cx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, HostErr> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if l == 0 {
        return Ok(Vec::new());
    }
    let Some(mem) = c.data().memory else {
        return Err(HostErr::Fatal(wasmtime::format_err!(
            "module exports no `memory`"
        )));
    };
    match mem.data(&*c).get(p..p.saturating_add(l)) {
        Some(s) => Ok(s.to_vec()),
        None => violation(
            Status::InvalidMemoryAccess,
            format!("read of {l} bytes at {p:#x} is out of bounds"),
        ),
    }
}

fn read_str(c: &mut Cx<'_>, ptr: i32, len: i32) -> Result<String, HostErr> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

fn write(c: &mut Cx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), HostErr> {
    let p = ptr as u32 as usize;
    if bytes.is_empty() {
        return Ok(());
    }
    let Some(mem) = c.data().memory else {
        return Err(HostErr::Fatal(wasmtime::format_err!(
            "module exports no `memory`"
        )));
    };
    match mem
        .data_mut(&mut *c)
        .get_mut(p..p.saturating_add(bytes.len()))
    {
        Some(s) => {
            s.copy_from_slice(bytes);
            Ok(())
        }
        None => violation(
            Status::InvalidMemoryAccess,
            format!("write of {} bytes at {p:#x} is out of bounds", bytes.len()),
        ),
    }
}

fn write_u32(c: &mut Cx<'_>, ptr: i32, v: u32) -> Result<(), HostErr> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut Cx<'_>, ptr: i32, v: u64) -> Result<(), HostErr> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copy `bytes` into memory allocated by the module (`proxy_on_memory_allocate` / `malloc`)
/// and store the pointer and size at `ptr_ptr` / `size_ptr`.
fn return_bytes(c: &mut Cx<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<(), HostErr> {
    let Some(alloc) = c.data().alloc.clone() else {
        return Err(HostErr::Fatal(wasmtime::format_err!(
            "module exports neither `proxy_on_memory_allocate` nor `malloc`"
        )));
    };
    let p = alloc.call(&mut *c, bytes.len() as i32)?;
    if p == 0 && !bytes.is_empty() {
        return Err(HostErr::Fatal(wasmtime::format_err!(
            "module allocator returned NULL for {} bytes",
            bytes.len()
        )));
    }
    write(c, p, bytes)?;
    write_u32(c, ptr_ptr, p as u32)?;
    write_u32(c, size_ptr, bytes.len() as u32)
}

fn read_map(c: &mut Cx<'_>, ptr: i32, len: i32) -> Result<HeaderMap, HostErr> {
    let bytes = read(c, ptr, len)?;
    match deserialize_map(&bytes) {
        Some(m) => Ok(lossy_map(m)),
        None => violation(
            Status::SerializationFailure,
            "malformed serialized header map",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Logging, time, ticks

fn proxy_log(c: &mut Cx<'_>, level: i32, ptr: i32, len: i32) -> HResult {
    let Some(level) = LogLevel::from_abi(level) else {
        return violation(Status::BadArgument, format!("invalid log level {level}"));
    };
    let message = read_str(c, ptr, len)?;
    let st = c.data_mut();
    let context_id = st.current_ctx;
    st.logs.push(LogEntry {
        level,
        message,
        context_id,
    });
    Ok(Status::Ok)
}

fn proxy_get_log_level(c: &mut Cx<'_>, ret: i32) -> HResult {
    let level = c.data().log_level.to_abi() as u32;
    write_u32(c, ret, level)?;
    Ok(Status::Ok)
}

fn proxy_get_current_time_nanoseconds(c: &mut Cx<'_>, ret: i32) -> HResult {
    let t = c.data().time_nanos;
    write_u64(c, ret, t)?;
    Ok(Status::Ok)
}

fn proxy_set_tick_period_milliseconds(c: &mut Cx<'_>, period: i32) -> HResult {
    c.data_mut().tick_period_ms = period as u32;
    Ok(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Buffers

fn buffer(st: &mut State, t: i32) -> Result<Option<&mut Vec<u8>>, HostErr> {
    let ctx = st.effective_ctx;
    Ok(match t {
        0 | 1 => Some(&mut st.stream(ctx).bodies[t as usize]),
        2 | 3 => None,
        4 => st.callout.http_body.as_mut(),
        5 => st.callout.grpc_message.as_mut(),
        6 => (st.callback == "proxy_on_vm_start").then_some(&mut st.vm_config),
        7 => (st.callback == "proxy_on_configure").then_some(&mut st.plugin_config),
        8 => None,
        _ => return violation(Status::BadArgument, format!("invalid buffer type {t}")),
    })
}

fn proxy_get_buffer_bytes(
    c: &mut Cx<'_>,
    t: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HResult {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    let data = match buffer(c.data_mut(), t)? {
        None => return Ok(Status::NotFound),
        Some(b) => {
            if start > b.len() {
                return violation(
                    Status::BadArgument,
                    format!(
                        "start {start} is past the end of buffer {t} ({} bytes)",
                        b.len()
                    ),
                );
            }
            let end = start.saturating_add(max).min(b.len());
            b[start..end].to_vec()
        }
    };
    return_bytes(c, &data, ptr_ptr, size_ptr)?;
    Ok(Status::Ok)
}

fn proxy_set_buffer_bytes(
    c: &mut Cx<'_>,
    t: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> HResult {
    let data = read(c, ptr, len)?;
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    if !(0..=1).contains(&t) {
        return violation(
            Status::BadArgument,
            format!("buffer type {t} is not writable by this host"),
        );
    }
    let Some(b) = buffer(c.data_mut(), t)? else {
        return violation(Status::NotFound, format!("buffer {t} is not available"));
    };
    // Envoy's semantics: prepend (0, 0), replace (0, >= len), append (>= len, _).
    if start == 0 && size == 0 {
        b.splice(0..0, data);
    } else if start == 0 && size >= b.len() {
        *b = data;
    } else if start >= b.len() {
        b.extend_from_slice(&data);
    } else {
        return violation(
            Status::BadArgument,
            format!(
                "unsupported range start={start} size={size} for a {} byte buffer (Envoy only \
                 supports prepend, replace and append)",
                b.len()
            ),
        );
    }
    Ok(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Header maps

enum MapRef {
    Stream(usize),
    Callout(i32),
}

fn map_ref(t: i32) -> Result<MapRef, HostErr> {
    match t {
        0..=3 => Ok(MapRef::Stream(t as usize)),
        4..=7 => Ok(MapRef::Callout(t)),
        _ => violation(Status::BadArgument, format!("invalid map type {t}")),
    }
}

fn map_mut(st: &mut State, t: i32) -> Result<Option<&mut HeaderMap>, HostErr> {
    Ok(match map_ref(t)? {
        MapRef::Stream(i) => {
            let ctx = st.effective_ctx;
            Some(&mut st.stream(ctx).maps[i])
        }
        MapRef::Callout(4) => st.callout.grpc_initial_metadata.as_mut(),
        MapRef::Callout(5) => st.callout.grpc_trailing_metadata.as_mut(),
        MapRef::Callout(6) => st.callout.http_headers.as_mut(),
        MapRef::Callout(_) => st.callout.http_trailers.as_mut(),
    })
}

fn writable_map(st: &mut State, t: i32) -> Result<&mut HeaderMap, HostErr> {
    if let MapRef::Callout(_) = map_ref(t)? {
        return violation(Status::BadArgument, format!("map type {t} is read-only"));
    }
    match map_mut(st, t)? {
        Some(m) => Ok(m),
        None => violation(Status::NotFound, format!("map type {t} is not available")),
    }
}

fn proxy_get_header_map_pairs(c: &mut Cx<'_>, t: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let data = match map_mut(c.data_mut(), t)? {
        Some(m) => serialize_map(m),
        None => {
            return violation(
                Status::NotFound,
                format!("map type {t} is not available now"),
            )
        }
    };
    return_bytes(c, &data, ptr_ptr, size_ptr)?;
    Ok(Status::Ok)
}

fn proxy_set_header_map_pairs(c: &mut Cx<'_>, t: i32, ptr: i32, len: i32) -> HResult {
    let pairs = read_map(c, ptr, len)?;
    let m = writable_map(c.data_mut(), t)?;
    *m = pairs
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    Ok(Status::Ok)
}

fn proxy_get_header_map_value(
    c: &mut Cx<'_>,
    t: i32,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HResult {
    let key = read_str(c, kp, kl)?;
    let value = match map_mut(c.data_mut(), t)? {
        Some(m) => find_header(m, &key).map(str::to_owned),
        None => {
            return violation(
                Status::NotFound,
                format!("map type {t} is not available now"),
            )
        }
    };
    match value {
        Some(v) => {
            return_bytes(c, v.as_bytes(), ptr_ptr, size_ptr)?;
            Ok(Status::Ok)
        }
        None => Ok(Status::NotFound),
    }
}

fn proxy_replace_header_map_value(
    c: &mut Cx<'_>,
    t: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> HResult {
    let key = read_str(c, kp, kl)?.to_ascii_lowercase();
    let value = read_str(c, vp, vl)?;
    let m = writable_map(c.data_mut(), t)?;
    match m.iter().position(|(k, _)| k.eq_ignore_ascii_case(&key)) {
        Some(i) => {
            m[i].1 = value;
            let mut n = 0;
            m.retain(|(k, _)| {
                let keep = !k.eq_ignore_ascii_case(&key) || n == i;
                n += 1;
                keep
            });
        }
        None => m.push((key, value)),
    }
    Ok(Status::Ok)
}

fn proxy_remove_header_map_value(c: &mut Cx<'_>, t: i32, kp: i32, kl: i32) -> HResult {
    let key = read_str(c, kp, kl)?;
    writable_map(c.data_mut(), t)?.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
    Ok(Status::Ok)
}

fn proxy_add_header_map_value(
    c: &mut Cx<'_>,
    t: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> HResult {
    let key = read_str(c, kp, kl)?.to_ascii_lowercase();
    let value = read_str(c, vp, vl)?;
    writable_map(c.data_mut(), t)?.push((key, value));
    Ok(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Properties

fn property_path(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn proxy_get_property(c: &mut Cx<'_>, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let path = property_path(&read(c, pp, pl)?);
    match c.data().properties.get(&path).cloned() {
        Some(v) => {
            return_bytes(c, &v, ptr_ptr, size_ptr)?;
            Ok(Status::Ok)
        }
        None => Ok(Status::NotFound),
    }
}

fn proxy_set_property(c: &mut Cx<'_>, pp: i32, pl: i32, vp: i32, vl: i32) -> HResult {
    let path = property_path(&read(c, pp, pl)?);
    let value = read(c, vp, vl)?;
    c.data_mut().properties.insert(path, value);
    Ok(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Shared data and queues

fn proxy_get_shared_data(
    c: &mut Cx<'_>,
    kp: i32,
    kl: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> HResult {
    let key = read_str(c, kp, kl)?;
    let Some((value, cas)) = c.data().shared_data.get(&key).cloned() else {
        return Ok(Status::NotFound);
    };
    return_bytes(c, &value, ptr_ptr, size_ptr)?;
    write_u32(c, cas_ptr, cas)?;
    Ok(Status::Ok)
}

fn proxy_set_shared_data(c: &mut Cx<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> HResult {
    let key = read_str(c, kp, kl)?;
    let value = read(c, vp, vl)?;
    let st = c.data_mut();
    if let Some((_, current)) = st.shared_data.get(&key) {
        if cas != 0 && cas as u32 != *current {
            return Ok(Status::CasMismatch);
        }
    }
    let new_cas = st.next_cas();
    st.shared_data.insert(key, (value, new_cas));
    Ok(Status::Ok)
}

fn proxy_register_shared_queue(c: &mut Cx<'_>, np: i32, nl: i32, ret: i32) -> HResult {
    let name = read_str(c, np, nl)?;
    let st = c.data_mut();
    let owner = st.current_ctx;
    let vm_id = st.vm_id.clone();
    let id = match st
        .queues
        .iter()
        .position(|q| q.vm_id == vm_id && q.name == name)
    {
        Some(i) => {
            st.queues[i].owner_context = owner;
            i + 1
        }
        None => {
            st.queues.push(Queue {
                vm_id,
                name,
                owner_context: owner,
                items: Default::default(),
            });
            st.queues.len()
        }
    };
    write_u32(c, ret, id as u32)?;
    Ok(Status::Ok)
}

fn proxy_resolve_shared_queue(
    c: &mut Cx<'_>,
    vp: i32,
    vl: i32,
    np: i32,
    nl: i32,
    ret: i32,
) -> HResult {
    let vm_id = read_str(c, vp, vl)?;
    let name = read_str(c, np, nl)?;
    match c
        .data()
        .queues
        .iter()
        .position(|q| q.vm_id == vm_id && q.name == name)
    {
        Some(i) => {
            write_u32(c, ret, i as u32 + 1)?;
            Ok(Status::Ok)
        }
        None => Ok(Status::NotFound),
    }
}

fn proxy_dequeue_shared_queue(c: &mut Cx<'_>, id: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let Some(q) = (id as u32 as usize)
        .checked_sub(1)
        .and_then(|i| c.data_mut().queues.get_mut(i))
    else {
        return Ok(Status::NotFound);
    };
    match q.items.pop_front() {
        Some(item) => {
            return_bytes(c, &item, ptr_ptr, size_ptr)?;
            Ok(Status::Ok)
        }
        None => Ok(Status::Empty),
    }
}

fn proxy_enqueue_shared_queue(c: &mut Cx<'_>, id: i32, vp: i32, vl: i32) -> HResult {
    let value = read(c, vp, vl)?;
    match (id as u32 as usize)
        .checked_sub(1)
        .and_then(|i| c.data_mut().queues.get_mut(i))
    {
        Some(q) => {
            q.items.push_back(value);
            Ok(Status::Ok)
        }
        None => Ok(Status::NotFound),
    }
}

// ---------------------------------------------------------------------------------------------
// Stream control

fn stream_type(t: i32) -> Result<StreamType, HostErr> {
    match StreamType::from_abi(t) {
        Some(s) => Ok(s),
        None => violation(Status::BadArgument, format!("invalid stream type {t}")),
    }
}

fn proxy_continue_stream(c: &mut Cx<'_>, t: i32) -> HResult {
    let t = stream_type(t)?;
    let st = c.data_mut();
    let ctx = st.effective_ctx;
    st.stream(ctx).continued.push(t);
    Ok(Status::Ok)
}

fn proxy_close_stream(c: &mut Cx<'_>, t: i32) -> HResult {
    let t = stream_type(t)?;
    let st = c.data_mut();
    let ctx = st.effective_ctx;
    st.stream(ctx).closed.push(t);
    Ok(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    c: &mut Cx<'_>,
    status: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc_status: i32,
) -> HResult {
    let details = read_str(c, dp, dl)?;
    let body = read(c, bp, bl)?;
    let headers = read_map(c, hp, hl)?;
    let st = c.data_mut();
    let ctx = st.effective_ctx;
    if ctx == crate::ROOT_CONTEXT_ID {
        return violation(
            Status::BadArgument,
            "send_local_response called outside an HTTP context",
        );
    }
    let s = st.stream(ctx);
    if let Some(prev) = &s.local_response {
        return violation(
            Status::BadArgument,
            format!("a local response ({}) was already sent", prev.status),
        );
    }
    s.local_response = Some(LocalResponse {
        status: status as u32,
        details,
        body,
        headers,
        grpc_status,
    });
    Ok(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// Callouts

fn check_cluster(st: &State, cluster: &str) -> Result<(), HostErr> {
    if st.allowed_clusters.contains(cluster) {
        Ok(())
    } else {
        violation(
            Status::BadArgument,
            format!("call to undeclared cluster {cluster:?} (declare it with .allow_cluster({cluster:?}))"),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    c: &mut Cx<'_>,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout: i32,
    ret: i32,
) -> HResult {
    let cluster = read_str(c, up, ul)?;
    let headers = read_map(c, hp, hl)?;
    let body = read(c, bp, bl)?;
    let trailers = read_map(c, tp, tl)?;
    check_cluster(c.data(), &cluster)?;
    for required in [":method", ":path", ":authority"] {
        if find_header(&headers, required).is_none() {
            return violation(
                Status::BadArgument,
                format!("http call to {cluster:?} lacks the {required} header (Envoy rejects it)"),
            );
        }
    }
    let st = c.data_mut();
    let token = st.next_token();
    let context_id = st.effective_ctx;
    st.http_calls.insert(
        token,
        HttpCallout {
            token,
            context_id,
            cluster,
            headers,
            body,
            trailers,
            timeout: Duration::from_millis(timeout as u32 as u64),
        },
    );
    write_u32(c, ret, token)?;
    Ok(Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn grpc_open(
    c: &mut Cx<'_>,
    up: i32,
    ul: i32,
    sp: i32,
    sl: i32,
    mp: i32,
    ml: i32,
    ip: i32,
    il: i32,
    message: Option<Vec<u8>>,
    timeout: Option<Duration>,
    ret: i32,
) -> HResult {
    let cluster = read_str(c, up, ul)?;
    let service = read_str(c, sp, sl)?;
    let method = read_str(c, mp, ml)?;
    let initial_metadata = read_map(c, ip, il)?;
    check_cluster(c.data(), &cluster)?;
    let st = c.data_mut();
    let token = st.next_token();
    let context_id = st.effective_ctx;
    let streaming = message.is_none();
    st.grpc_calls.insert(
        token,
        GrpcCallout {
            token,
            context_id,
            cluster,
            service,
            method,
            initial_metadata,
            messages: message.into_iter().collect(),
            timeout,
            streaming,
            end_stream_sent: false,
            state: GrpcCalloutState::Open,
        },
    );
    write_u32(c, ret, token)?;
    Ok(Status::Ok)
}

fn open_grpc(st: &mut State, token: i32) -> Result<Option<&mut GrpcCallout>, HostErr> {
    Ok(st
        .grpc_calls
        .get_mut(&(token as u32))
        .filter(|g| g.state == GrpcCalloutState::Open))
}

fn proxy_grpc_send(c: &mut Cx<'_>, token: i32, mp: i32, ml: i32, end: i32) -> HResult {
    let msg = read(c, mp, ml)?;
    match open_grpc(c.data_mut(), token)? {
        Some(g) if g.streaming => {
            g.messages.push(msg);
            g.end_stream_sent |= end != 0;
            Ok(Status::Ok)
        }
        Some(_) => violation(Status::BadArgument, "proxy_grpc_send on a unary gRPC call"),
        None => Ok(Status::NotFound),
    }
}

fn proxy_grpc_cancel(c: &mut Cx<'_>, token: i32) -> HResult {
    match open_grpc(c.data_mut(), token)? {
        Some(g) => {
            g.state = GrpcCalloutState::Cancelled;
            Ok(Status::Ok)
        }
        None => Ok(Status::NotFound),
    }
}

fn proxy_grpc_close(c: &mut Cx<'_>, token: i32) -> HResult {
    match open_grpc(c.data_mut(), token)? {
        Some(g) => {
            g.state = GrpcCalloutState::Closed;
            Ok(Status::Ok)
        }
        None => Ok(Status::NotFound),
    }
}

fn proxy_get_status(c: &mut Cx<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let (code, msg) = c.data().status.clone();
    write_u32(c, code_ptr, code)?;
    return_bytes(c, msg.as_bytes(), ptr_ptr, size_ptr)?;
    Ok(Status::Ok)
}

fn proxy_set_effective_context(c: &mut Cx<'_>, ctx: i32) -> HResult {
    let st = c.data_mut();
    if !st.streams.contains_key(&(ctx as u32)) {
        return violation(Status::BadArgument, format!("unknown context id {ctx}"));
    }
    st.effective_ctx = ctx as u32;
    Ok(Status::Ok)
}

fn proxy_done(c: &mut Cx<'_>) -> HResult {
    let st = c.data_mut();
    let ctx = st.effective_ctx;
    st.done_calls.push(ctx);
    Ok(Status::Ok)
}

fn proxy_call_foreign_function(
    c: &mut Cx<'_>,
    np: i32,
    nl: i32,
    ap: i32,
    al: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HResult {
    let name = read_str(c, np, nl)?;
    let args = read(c, ap, al)?;
    let Some(f) = c.data_mut().foreign.get_mut(&name) else {
        return violation(
            Status::NotFound,
            format!(
                "foreign function {name:?} is not registered (use .foreign_function({name:?}, ..))"
            ),
        );
    };
    match f(&args) {
        Ok(out) => {
            return_bytes(c, &out, ptr_ptr, size_ptr)?;
            Ok(Status::Ok)
        }
        Err(s) => Ok(s),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

fn metric(st: &mut State, id: i32) -> Result<&mut Metric, HostErr> {
    match (id as u32 as usize)
        .checked_sub(1)
        .and_then(|i| st.metrics.get_mut(i))
    {
        Some(m) => Ok(m),
        None => violation(Status::NotFound, format!("unknown metric id {id}")),
    }
}

fn proxy_define_metric(c: &mut Cx<'_>, t: i32, np: i32, nl: i32, ret: i32) -> HResult {
    let kind = match t {
        0 => MetricType::Counter,
        1 => MetricType::Gauge,
        2 => MetricType::Histogram,
        _ => return violation(Status::BadArgument, format!("invalid metric type {t}")),
    };
    let name = read_str(c, np, nl)?;
    let st = c.data_mut();
    let id = match st.metrics.iter().position(|m| m.name == name) {
        Some(i) if st.metrics[i].kind == kind => i + 1,
        Some(i) => {
            return violation(
                Status::BadArgument,
                format!(
                    "metric {name:?} already defined as {:?}, now as {kind:?}",
                    st.metrics[i].kind
                ),
            )
        }
        None => {
            st.metrics.push(Metric {
                name,
                kind,
                value: 0,
                samples: Vec::new(),
            });
            st.metrics.len()
        }
    };
    write_u32(c, ret, id as u32)?;
    Ok(Status::Ok)
}

fn proxy_increment_metric(c: &mut Cx<'_>, id: i32, offset: i64) -> HResult {
    let m = metric(c.data_mut(), id)?;
    match m.kind {
        MetricType::Counter if offset < 0 => violation(
            Status::BadArgument,
            format!("negative increment {offset} of counter {:?}", m.name),
        ),
        MetricType::Counter | MetricType::Gauge => {
            m.value = m.value.wrapping_add_signed(offset);
            Ok(Status::Ok)
        }
        MetricType::Histogram => violation(
            Status::BadArgument,
            format!("increment of histogram {:?}", m.name),
        ),
    }
}

fn proxy_record_metric(c: &mut Cx<'_>, id: i32, value: i64) -> HResult {
    let m = metric(c.data_mut(), id)?;
    match m.kind {
        MetricType::Counter | MetricType::Gauge => m.value = value as u64,
        MetricType::Histogram => m.samples.push(value as u64),
    }
    Ok(Status::Ok)
}

fn proxy_get_metric(c: &mut Cx<'_>, id: i32, ret: i32) -> HResult {
    let m = metric(c.data_mut(), id)?;
    if m.kind == MetricType::Histogram {
        return violation(
            Status::BadArgument,
            format!("get of histogram {:?}", m.name),
        );
    }
    let v = m.value;
    write_u64(c, ret, v)?;
    Ok(Status::Ok)
}

// ---------------------------------------------------------------------------------------------
// WASI preview1 (the handful a proxy-wasm filter may import)

const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;

fn wasi_result(r: Result<i32, HostErr>, name: &'static str) -> wasmtime::Result<i32> {
    match r {
        Ok(v) => Ok(v),
        Err(HostErr::Fatal(e)) => Err(e.context(format!("WASI {name} failed"))),
        Err(HostErr::Violation(_, m)) => Err(wasmtime::format_err!("WASI {name} failed: {m}")),
    }
}

fn fd_write(c: &mut Cx<'_>, fd: i32, iovs: i32, n: i32, nwritten: i32) -> Result<i32, HostErr> {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let mut total = 0u32;
    for i in 0..n {
        let iov = read(c, iovs.wrapping_add(i * 8), 8)?;
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let data = read(c, ptr as i32, len as i32)?;
        total += len;
        c.data_mut().stdout.extend_from_slice(&data);
    }
    write_u32(c, nwritten, total)?;
    Ok(0)
}

fn random_get(c: &mut Cx<'_>, buf: i32, len: i32) -> Result<i32, HostErr> {
    let mut out = Vec::with_capacity(len as u32 as usize);
    let st = c.data_mut();
    while out.len() < len as u32 as usize {
        // xorshift64*: deterministic, so runs are reproducible.
        st.rng ^= st.rng >> 12;
        st.rng ^= st.rng << 25;
        st.rng ^= st.rng >> 27;
        out.extend_from_slice(&st.rng.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len as u32 as usize);
    write(c, buf, &out)?;
    Ok(0)
}

fn add_wasi(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        W,
        "fd_write",
        |mut c: Cx<'_>, fd: i32, iovs: i32, n: i32, nw: i32| {
            let r = fd_write(&mut c, fd, iovs, n, nw);
            wasi_result(r, "fd_write")
        },
    )?;
    linker.func_wrap(W, "fd_read", |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| {
        ERRNO_BADF
    })?;
    linker.func_wrap(W, "fd_close", |_: Cx<'_>, _: i32| ERRNO_BADF)?;
    linker.func_wrap(W, "fd_seek", |_: Cx<'_>, _: i32, _: i64, _: i32, _: i32| {
        ERRNO_BADF
    })?;
    linker.func_wrap(W, "fd_fdstat_get", |mut c: Cx<'_>, fd: i32, buf: i32| {
        if !(0..=2).contains(&fd) {
            return Ok(ERRNO_BADF);
        }
        // filetype = character device (2), no flags, no rights needed.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        let r = write(&mut c, buf, &stat).map(|_| 0);
        wasi_result(r, "fd_fdstat_get")
    })?;
    linker.func_wrap(W, "fd_prestat_get", |_: Cx<'_>, _: i32, _: i32| ERRNO_BADF)?;
    linker.func_wrap(
        W,
        "fd_prestat_dir_name",
        |_: Cx<'_>, _: i32, _: i32, _: i32| ERRNO_BADF,
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(W, name, move |mut c: Cx<'_>, count: i32, size: i32| {
            let r = write_u32(&mut c, count, 0)
                .and_then(|_| write_u32(&mut c, size, 0))
                .map(|_| 0);
            wasi_result(r, name)
        })?;
    }
    linker.func_wrap(W, "environ_get", |_: Cx<'_>, _: i32, _: i32| 0)?;
    linker.func_wrap(W, "args_get", |_: Cx<'_>, _: i32, _: i32| 0)?;
    linker.func_wrap(
        W,
        "clock_time_get",
        |mut c: Cx<'_>, id: i32, _prec: i64, ret: i32| {
            if !(0..=3).contains(&id) {
                return Ok(ERRNO_INVAL);
            }
            let t = c.data().time_nanos;
            wasi_result(write_u64(&mut c, ret, t).map(|_| 0), "clock_time_get")
        },
    )?;
    linker.func_wrap(W, "clock_res_get", |mut c: Cx<'_>, _id: i32, ret: i32| {
        wasi_result(write_u64(&mut c, ret, 1).map(|_| 0), "clock_res_get")
    })?;
    linker.func_wrap(W, "random_get", |mut c: Cx<'_>, buf: i32, len: i32| {
        let r = random_get(&mut c, buf, len);
        wasi_result(r, "random_get")
    })?;
    linker.func_wrap(W, "sched_yield", |_: Cx<'_>| 0)?;
    linker.func_wrap(
        W,
        "proc_exit",
        |_: Cx<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::format_err!(
                "module called WASI proc_exit({code})"
            ))
        },
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Linker

macro_rules! hostcalls {
    ($linker:ident; $($name:ident($($arg:ident : $ty:ty),*);)*) => {
        $(
            $linker.func_wrap("env", stringify!($name), |mut c: Cx<'_>, $($arg: $ty),*| {
                c.data_mut().hostcalls.push(stringify!($name));
                let r = $name(&mut c, $($arg),*);
                finish(&mut c, stringify!($name), r)
            })?;
        )*
    };
}

/// Build a linker with every `env.proxy_*` hostcall of ABI 0.2.1 and the WASI subset, and
/// define any other import of `module` as a function that traps with its name.
pub(crate) fn linker(store: &mut Store<State>, module: &Module) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(store.engine());
    hostcalls! { linker;
        proxy_log(level: i32, ptr: i32, len: i32);
        proxy_get_log_level(ret: i32);
        proxy_get_current_time_nanoseconds(ret: i32);
        proxy_set_tick_period_milliseconds(period: i32);
        proxy_get_buffer_bytes(t: i32, start: i32, max: i32, pp: i32, sp: i32);
        proxy_set_buffer_bytes(t: i32, start: i32, size: i32, ptr: i32, len: i32);
        proxy_get_header_map_pairs(t: i32, pp: i32, sp: i32);
        proxy_set_header_map_pairs(t: i32, ptr: i32, len: i32);
        proxy_get_header_map_value(t: i32, kp: i32, kl: i32, pp: i32, sp: i32);
        proxy_replace_header_map_value(t: i32, kp: i32, kl: i32, vp: i32, vl: i32);
        proxy_remove_header_map_value(t: i32, kp: i32, kl: i32);
        proxy_add_header_map_value(t: i32, kp: i32, kl: i32, vp: i32, vl: i32);
        proxy_get_property(kp: i32, kl: i32, pp: i32, sp: i32);
        proxy_set_property(kp: i32, kl: i32, vp: i32, vl: i32);
        proxy_get_shared_data(kp: i32, kl: i32, pp: i32, sp: i32, cp: i32);
        proxy_set_shared_data(kp: i32, kl: i32, vp: i32, vl: i32, cas: i32);
        proxy_register_shared_queue(np: i32, nl: i32, ret: i32);
        proxy_resolve_shared_queue(vp: i32, vl: i32, np: i32, nl: i32, ret: i32);
        proxy_dequeue_shared_queue(id: i32, pp: i32, sp: i32);
        proxy_enqueue_shared_queue(id: i32, vp: i32, vl: i32);
        proxy_continue_stream(t: i32);
        proxy_close_stream(t: i32);
        proxy_send_local_response(status: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, grpc: i32);
        proxy_http_call(up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, tp: i32, tl: i32, timeout: i32, ret: i32);
        proxy_grpc_send(token: i32, mp: i32, ml: i32, end: i32);
        proxy_grpc_cancel(token: i32);
        proxy_grpc_close(token: i32);
        proxy_get_status(code: i32, pp: i32, sp: i32);
        proxy_set_effective_context(ctx: i32);
        proxy_done();
        proxy_call_foreign_function(np: i32, nl: i32, ap: i32, al: i32, pp: i32, sp: i32);
        proxy_define_metric(t: i32, np: i32, nl: i32, ret: i32);
        proxy_increment_metric(id: i32, offset: i64);
        proxy_record_metric(id: i32, value: i64);
        proxy_get_metric(id: i32, ret: i32);
    }
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Cx<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         msgp: i32,
         msgl: i32,
         timeout: i32,
         ret: i32| {
            c.data_mut().hostcalls.push("proxy_grpc_call");
            let r = read(&mut c, msgp, msgl).and_then(|msg| {
                let timeout = Some(Duration::from_millis(timeout as u32 as u64));
                grpc_open(
                    &mut c,
                    up,
                    ul,
                    sp,
                    sl,
                    mp,
                    ml,
                    ip,
                    il,
                    Some(msg),
                    timeout,
                    ret,
                )
            });
            finish(&mut c, "proxy_grpc_call", r)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Cx<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         ret: i32| {
            c.data_mut().hostcalls.push("proxy_grpc_stream");
            let r = grpc_open(&mut c, up, ul, sp, sl, mp, ml, ip, il, None, None, ret);
            finish(&mut c, "proxy_grpc_stream", r)
        },
    )?;
    add_wasi(&mut linker)?;

    // Anything else the module imports: defined, but traps naming itself when called.
    for import in module.imports() {
        if linker.get_by_import(&mut *store, &import).is_some() {
            continue;
        }
        if let ExternType::Func(ty) = import.ty() {
            let full = format!("{}.{}", import.module(), import.name());
            linker.func_new(import.module(), import.name(), ty, move |mut c, _, _| {
                let st = c.data_mut();
                st.violations.push(Violation {
                    hostcall: full.clone(),
                    status: Status::Unimplemented,
                    message: "import not implemented by the test host".into(),
                    context_id: st.current_ctx,
                });
                Err(wasmtime::format_err!(
                    "hostcall {full} is not implemented by the test host"
                ))
            })?;
        }
    }
    Ok(linker)
}
