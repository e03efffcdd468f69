//! Self-tests of the host with small hand-written WAT filters.

use std::time::Duration;

use proxy_wasm_test_host::{deserialize_map, Action, Host, LogLevel, Status};

/// Wrap `imports` and `body` in a module with a memory, a bump allocator exported as
/// `proxy_on_memory_allocate` and the ABI version marker. Scratch: 100..300, strings: 1024+.
fn module(imports: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap)
      (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func $check (param i32) (if (local.get 0) (then unreachable)))
  {body}
)"#
    )
}

const I_LOG: &str = r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
const I_SET_SHARED: &str = r#"(import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))"#;
const I_GET_SHARED: &str = r#"(import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))"#;
const I_GET_BUF: &str = r#"(import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))"#;

fn headers_module() -> String {
    let imports = [
        r#"(import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))"#,
        I_SET_SHARED,
    ]
    .join("\n");
    module(
        &imports,
        r#"
  (data (i32.const 1024) "x-in")
  (data (i32.const 1040) "x-copy")
  (data (i32.const 1056) ":path")
  (data (i32.const 1072) "/rewritten")
  (data (i32.const 1088) "x-remove")
  (data (i32.const 1104) "dump")
  (data (i32.const 1120) "X-Upper")
  (data (i32.const 1136) "v")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; x-copy: <value of x-in>
    (call $check (call $get_value (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 100) (i32.const 104)))
    (call $check (call $add (i32.const 0) (i32.const 1040) (i32.const 6)
      (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    (call $check (call $replace (i32.const 0) (i32.const 1056) (i32.const 5) (i32.const 1072) (i32.const 10)))
    (call $check (call $remove (i32.const 0) (i32.const 1088) (i32.const 8)))
    ;; a removed header is NotFound (1), which the SDK expects
    (if (i32.ne (call $get_value (i32.const 0) (i32.const 1088) (i32.const 8) (i32.const 100) (i32.const 104))
                (i32.const 1))
      (then unreachable))
    (call $check (call $add (i32.const 0) (i32.const 1120) (i32.const 7) (i32.const 1136) (i32.const 1)))
    ;; roundtrip all pairs through the serialized format, and dump them to shared data
    (call $check (call $get_pairs (i32.const 0) (i32.const 100) (i32.const 104)))
    (call $check (call $set_pairs (i32.const 0) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    (call $check (call $set_shared (i32.const 1104) (i32.const 4)
      (i32.load (i32.const 100)) (i32.load (i32.const 104)) (i32.const 0)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $check (call $replace (i32.const 2) (i32.const 1040) (i32.const 6) (i32.const 1136) (i32.const 1)))
    (i32.const 0))
"#,
    )
}

#[test]
fn header_roundtrip_through_serialized_pairs() {
    let mut host = Host::builder().build_from_bytes(headers_module()).unwrap();
    assert!(host.start().unwrap());
    let mut http = host.http_context().unwrap();
    let action = http
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/a"),
                ("x-in", "hello"),
                ("x-remove", "1"),
                ("x-remove", "2"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(action, Action::Continue);
    let expected: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/rewritten"),
        ("x-in", "hello"),
        ("x-copy", "hello"),
        ("x-upper", "v"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(http.request_header_map(), expected);
    assert_eq!(http.request_header("X-COPY").as_deref(), Some("hello"));
    assert_eq!(http.request_header("x-remove"), None);

    // What the module got from proxy_get_header_map_pairs, parsed back.
    let dump = http.shared_data("dump").unwrap();
    let parsed: Vec<(String, String)> = deserialize_map(&dump)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(parsed, expected);

    let action = http
        .response_headers(
            &[(":status", "200"), ("x-copy", "a"), ("x-copy", "b")],
            false,
        )
        .unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(
        http.response_header_map(),
        vec![
            (":status".to_string(), "200".to_string()),
            ("x-copy".to_string(), "v".to_string())
        ]
    );
    http.finish().unwrap();
    assert!(host.violations().is_empty(), "{:?}", host.violations());
    assert!(host.hostcall_log().contains(&"proxy_get_header_map_pairs"));
}

#[test]
fn local_response_is_captured() {
    let wat = module(
        r#"(import "env" "proxy_send_local_response" (func $send (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"
  (data (i32.const 1024) "denied_by_test")
  (data (i32.const 1056) "nope")
  (data (i32.const 1088) "\01\00\00\00\06\00\00\00\04\00\00\00x-deny\00true\00")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $check (call $send (i32.const 403) (i32.const 1024) (i32.const 14) (i32.const 1056) (i32.const 4)
      (i32.const 1088) (i32.const 24) (i32.const -1)))
    (i32.const 1))
"#,
    );
    let mut host = Host::builder().build_from_bytes(wat).unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    assert_eq!(http.local_response(), None);
    let action = http.request_headers(&[(":path", "/x")], true).unwrap();
    assert_eq!(action, Action::Pause);
    let resp = http.local_response().expect("local response");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.details, "denied_by_test");
    assert_eq!(resp.body_str(), "nope");
    assert_eq!(resp.header("x-deny"), Some("true"));
    assert_eq!(resp.grpc_status, -1);
}

#[test]
fn shared_data_cas_semantics() {
    let wat = module(
        &[I_SET_SHARED, I_GET_SHARED].join("\n"),
        r#"
  (data (i32.const 1024) "k")
  (data (i32.const 1032) "v1")
  (data (i32.const 1040) "v2")
  (data (i32.const 1048) "v3")
  (data (i32.const 1056) "results")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (local $cas i32)
    (i32.store8 (i32.const 200) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1032) (i32.const 2) (i32.const 0)))
    (i32.store8 (i32.const 201) (call $get_shared (i32.const 1024) (i32.const 1) (i32.const 100) (i32.const 104) (i32.const 108)))
    (local.set $cas (i32.load (i32.const 108)))
    ;; stale CAS: mismatch
    (i32.store8 (i32.const 202) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1040) (i32.const 2)
      (i32.add (local.get $cas) (i32.const 1000))))
    ;; current CAS: ok
    (i32.store8 (i32.const 203) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1048) (i32.const 2) (local.get $cas)))
    ;; the CAS changed with that write
    (i32.store8 (i32.const 204) (call $set_shared (i32.const 1024) (i32.const 1) (i32.const 1040) (i32.const 2) (local.get $cas)))
    ;; missing key: NotFound
    (i32.store8 (i32.const 205) (call $get_shared (i32.const 1056) (i32.const 7) (i32.const 100) (i32.const 104) (i32.const 108)))
    (call $check (call $set_shared (i32.const 1056) (i32.const 7) (i32.const 200) (i32.const 6) (i32.const 0)))
    (i32.const 1))
"#,
    );
    let mut host = Host::builder().build_from_bytes(wat).unwrap();
    assert!(host.start().unwrap());
    let ok = Status::Ok as u8;
    let mismatch = Status::CasMismatch as u8;
    assert_eq!(
        host.shared_data("results").unwrap(),
        vec![ok, ok, mismatch, ok, mismatch, Status::NotFound as u8]
    );
    assert_eq!(host.shared_data("k").unwrap(), b"v3");
    let (_, cas) = host.shared_data_cas("k").unwrap();
    host.set_shared_data("k", "from-another-vm");
    assert_ne!(host.shared_data_cas("k").unwrap().1, cas);
    assert!(host.violations().is_empty());
}

fn callout_module() -> String {
    let imports = [
        r#"(import "env" "proxy_http_call" (func $http (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_call_foreign_function" (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))"#,
        r#"(import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))"#,
        I_GET_BUF,
        I_LOG,
    ]
    .join("\n");
    // The answer arrives on the root context, as in Envoy: the module remembers which request
    // made the call (at 200) and switches to it before resuming.
    // The number of request headers selects the behaviour:
    // 1: http call to "evil", 2: http call to "jwks", otherwise: foreign function "do_thing".
    module(
        &imports,
        r#"
  (data (i32.const 1024) "evil")
  (data (i32.const 1032) "jwks")
  (data (i32.const 1040) "do_thing")
  (data (i32.const 1088) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\05\00\00\00\0a\00\00\00\04\00\00\00:method\00GET\00:path\00/keys\00:authority\00jwks\00")
  (func $call (param $cluster i32) (result i32)
    (call $http (local.get $cluster) (i32.const 4) (i32.const 1088) (i32.const 68)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 100)))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eq (local.get $n) (i32.const 1))
      (then (return (call $call (i32.const 1024)))))
    (if (i32.eq (local.get $n) (i32.const 2))
      (then (i32.store (i32.const 200) (local.get $ctx))
            (call $check (call $call (i32.const 1032))) (return (i32.const 1))))
    (call $ff (i32.const 1040) (i32.const 8) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 104)))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $nh i32) (param $size i32) (param $nt i32)
    (call $check (call $effective (i32.load (i32.const 200))))
    (call $check (call $get_buf (i32.const 4) (i32.const 0) (local.get $size) (i32.const 100) (i32.const 104)))
    (call $check (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    (call $check (call $continue (i32.const 0))))
"#,
    )
}

#[test]
fn strict_mode_rejects_undeclared_cluster() {
    let mut host = Host::builder()
        .allow_cluster("jwks")
        .build_from_bytes(callout_module())
        .unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let err = http
        .request_headers(&[(":path", "/x")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy_http_call"), "{err}");
    assert!(err.contains("\"evil\""), "{err}");
    let v = &host.violations()[0];
    assert_eq!(v.hostcall, "proxy_http_call");
    assert_eq!(v.status, Status::BadArgument);
    // The VM is considered dead after the trap, as in Envoy.
    let err = host.http_context().err().expect("VM failed").to_string();
    assert!(err.contains("already failed"), "{err}");
}

#[test]
fn strict_mode_rejects_unregistered_foreign_function() {
    let mut host = Host::builder().build_from_bytes(callout_module()).unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let err = http
        .request_headers(&[(":path", "/x"), ("a", "b"), ("c", "d")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy_call_foreign_function"), "{err}");
    assert!(err.contains("do_thing"), "{err}");
}

#[test]
fn registered_foreign_function_is_called() {
    let mut host = Host::builder()
        .foreign_function("do_thing", |args| {
            assert!(args.is_empty());
            Ok(b"result".to_vec())
        })
        .build_from_bytes(callout_module())
        .unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let action = http
        .request_headers(&[(":path", "/x"), ("a", "b"), ("c", "d")], true)
        .unwrap();
    assert_eq!(action, Action::Continue);
}

#[test]
fn non_strict_mode_returns_the_error_status() {
    let mut host = Host::builder()
        .strict(false)
        .build_from_bytes(callout_module())
        .unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    // The module returns the hostcall status as its action: BadArgument (2).
    let action = http.request_headers(&[(":path", "/x")], true).unwrap();
    assert_eq!(action, Action::Other(Status::BadArgument as u32));
    assert_eq!(host.violations().len(), 1);
    assert!(host.http_calls().is_empty());
}

#[test]
fn http_callout_is_answered_by_the_test() {
    let mut host = Host::builder()
        .allow_cluster("jwks")
        .build_from_bytes(callout_module())
        .unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let action = http
        .request_headers(&[(":path", "/x"), ("a", "b")], false)
        .unwrap();
    assert_eq!(action, Action::Pause);
    assert!(!http.request_resumed());
    let calls = http.http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "jwks");
    assert_eq!(call.header(":path"), Some("/keys"));
    assert_eq!(call.timeout, Duration::from_secs(5));
    assert_eq!(call.context_id, http.id());

    http.respond_http_call(call.token, &[(":status", "200")], b"{\"keys\":[]}")
        .unwrap();
    assert!(http.request_resumed());
    assert!(http.logged("{\"keys\":[]}"));
    assert!(http.http_calls().is_empty());
    assert!(http.respond_http_call(call.token, &[], b"").is_err());
}

#[test]
fn trap_is_an_error_with_the_filter_panic_message() {
    let wat = module(
        I_LOG,
        r#"
  (data (i32.const 1024) "panicked at src/lib.rs:1:1: boom")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 5) (i32.const 1024) (i32.const 32)))
    unreachable)
"#,
    );
    let mut host = Host::builder().build_from_bytes(wat).unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let err = http
        .request_headers(&[(":path", "/")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy_on_request_headers"), "{err}");
    assert!(err.contains("trapped"), "{err}");
    assert!(err.contains("boom"), "{err}");
    assert_eq!(host.violations().last().unwrap().hostcall, "trap");
}

#[test]
fn unimplemented_import_traps_naming_itself() {
    let wat = module(
        r#"(import "env" "proxy_something_new" (func $new (param i32) (result i32)))"#,
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $new (i32.const 0)))
"#,
    );
    let mut host = Host::builder().build_from_bytes(wat).unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let err = http.request_headers(&[], true).unwrap_err().to_string();
    assert!(err.contains("env.proxy_something_new"), "{err}");
}

fn fuel_module() -> String {
    module(
        "",
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (local $i i32)
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
    (i32.const 0))
"#,
    )
}

#[test]
fn fuel_is_reported_per_callback() {
    let mut host = Host::builder().build_from_bytes(fuel_module()).unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    http.request_headers(&[(":path", "/")], false).unwrap();
    let cheap = http.last_fuel().unwrap();
    http.request_body(b"data", true).unwrap();
    let expensive = http.last_fuel().unwrap();
    assert!(cheap > 0);
    assert!(
        expensive > cheap * 100,
        "cheap {cheap}, expensive {expensive}"
    );
    let names: Vec<&str> = host.fuel_log().iter().map(|(n, _)| n.as_str()).collect();
    // Callbacks the module does not export are skipped, so they are not in the log.
    assert_eq!(names, ["proxy_on_request_headers", "proxy_on_request_body"]);
}

#[test]
fn fuel_budget_stops_runaway_callbacks() {
    let mut host = Host::builder()
        .fuel_budget(1_000)
        .build_from_bytes(fuel_module())
        .unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    let err = http.request_body(b"x", true).unwrap_err().to_string();
    assert!(err.contains("fuel"), "{err}");
}

#[test]
fn config_tick_time_and_metrics() {
    let imports = [
        r#"(import "env" "proxy_set_tick_period_milliseconds" (func $tick_period (param i32) (result i32)))"#,
        r#"(import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))"#,
        r#"(import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))"#,
        I_SET_SHARED,
        I_GET_BUF,
    ]
    .join("\n");
    let wat = module(
        &imports,
        r#"
  (data (i32.const 1024) "ticks")
  (data (i32.const 1032) "last_tick")
  (data (i32.const 1048) "config")
  (global $metric (mut i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $check (call $tick_period (i32.const 1000)))
    (call $check (call $define (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 100)))
    (global.set $metric (i32.load (i32.const 100)))
    (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (call $check (call $get_buf (i32.const 7) (i32.const 0) (local.get $size) (i32.const 100) (i32.const 104)))
    (call $check (call $set_shared (i32.const 1048) (i32.const 6)
      (i32.load (i32.const 100)) (i32.load (i32.const 104)) (i32.const 0)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (call $check (call $inc (global.get $metric) (i64.const 1)))
    (call $check (call $now (i32.const 200)))
    ;; the plugin configuration is only readable during proxy_on_configure
    (if (i32.ne (call $get_buf (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 100) (i32.const 104))
                (i32.const 1))
      (then unreachable))
    (call $check (call $set_shared (i32.const 1032) (i32.const 9) (i32.const 200) (i32.const 8) (i32.const 0))))
"#,
    );
    let mut host = Host::builder()
        .plugin_config("hello")
        .time_nanos(7)
        .build_from_bytes(&wat)
        .unwrap();
    assert!(host.start().unwrap());
    assert_eq!(host.shared_data("config").unwrap(), b"hello");
    assert_eq!(host.tick_period(), Some(Duration::from_secs(1)));
    host.tick().unwrap();
    assert_eq!(host.shared_data("last_tick").unwrap(), 7u64.to_le_bytes());
    host.set_time_nanos(42);
    host.advance_time(Duration::from_nanos(1));
    host.tick().unwrap();
    assert_eq!(host.shared_data("last_tick").unwrap(), 43u64.to_le_bytes());
    assert_eq!(host.metric("ticks"), Some(2));

    // An empty plugin config makes this module's proxy_on_configure return false.
    let mut host = Host::builder().build_from_bytes(&wat).unwrap();
    assert!(!host.start().unwrap());
}

#[test]
fn body_buffering_and_replacement() {
    let wat = module(
        r#"(import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"
  (data (i32.const 1024) "replaced")
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (call $check (call $set_buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 1024) (i32.const 8)))
    (i32.const 0))
"#,
    );
    let mut host = Host::builder().build_from_bytes(wat).unwrap();
    host.start().unwrap();
    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_body(b"abc", false).unwrap(), Action::Pause);
    assert_eq!(http.request_body(b"def", false).unwrap(), Action::Pause);
    assert_eq!(http.request_body_buffer(), b"abcdef");
    assert_eq!(http.request_body(b"g", true).unwrap(), Action::Continue);
    assert_eq!(http.request_body_buffer(), b"replaced");
}

#[test]
fn module_without_abi_marker_is_rejected() {
    let err = Host::builder()
        .build_from_bytes(r#"(module (memory (export "memory") 1))"#)
        .err()
        .expect("rejected")
        .to_string();
    assert!(err.contains("proxy_abi_version_0_2_1"), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let err = Host::builder()
        .build_from_file("target/filters/does_not_exist.wasm")
        .err()
        .expect("missing")
        .to_string();
    assert!(err.contains("does_not_exist.wasm"), "{err}");
}

#[test]
fn grpc_callouts_and_shared_queues() {
    let imports = [
        r#"(import "env" "proxy_grpc_call" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))"#,
        r#"(import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))"#,
        I_GET_BUF,
        I_LOG,
    ]
    .join("\n");
    let wat = module(
        &imports,
        r#"
  (data (i32.const 1024) "authz")
  (data (i32.const 1032) "envoy.service.auth.v3.Authorization")
  (data (i32.const 1072) "Check")
  (data (i32.const 1080) "req")
  (data (i32.const 1088) "q")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $check (call $register (i32.const 1088) (i32.const 1) (i32.const 100)))
    (i32.const 1))
  (func (export "proxy_on_queue_ready") (param $root i32) (param $id i32)
    (call $check (call $dequeue (local.get $id) (i32.const 100) (i32.const 104)))
    (call $check (call $log (i32.const 1) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    ;; now empty
    (if (i32.ne (call $dequeue (local.get $id) (i32.const 100) (i32.const 104)) (i32.const 7))
      (then unreachable)))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $check (call $grpc (i32.const 1024) (i32.const 5) (i32.const 1032) (i32.const 35)
      (i32.const 1072) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 1080) (i32.const 3)
      (i32.const 250) (i32.const 100)))
    (i32.const 1))
  (func (export "proxy_on_grpc_receive") (param $ctx i32) (param $token i32) (param $size i32)
    (call $check (call $get_buf (i32.const 5) (i32.const 0) (local.get $size) (i32.const 100) (i32.const 104)))
    (call $check (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104)))))
  (func (export "proxy_on_grpc_close") (param $ctx i32) (param $token i32) (param $code i32)
    (call $check (call $status (i32.const 96) (i32.const 100) (i32.const 104)))
    (call $check (call $log (i32.const 3) (i32.load (i32.const 100)) (i32.load (i32.const 104)))))
"#,
    );
    let mut host = Host::builder()
        .allow_cluster("authz")
        .build_from_bytes(wat)
        .unwrap();
    host.start().unwrap();

    host.enqueue("q", "queued-item").unwrap();
    assert!(host.logged("queued-item"));
    assert!(host.queue_items("q").is_empty());
    assert!(host.enqueue("nope", "x").is_err());

    let mut http = host.http_context().unwrap();
    assert_eq!(http.request_headers(&[], true).unwrap(), Action::Pause);
    let calls = http.grpc_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].service, "envoy.service.auth.v3.Authorization");
    assert_eq!(calls[0].method, "Check");
    assert_eq!(calls[0].messages, vec![b"req".to_vec()]);
    assert_eq!(calls[0].timeout, Some(Duration::from_millis(250)));
    let first = calls[0].token;
    http.grpc_receive(first, b"allowed").unwrap();
    assert!(http.logged("allowed"));
    assert!(http.grpc_receive(first, b"again").is_err());

    http.request_headers(&[], true).unwrap();
    let second = http.grpc_calls()[1].token;
    http.grpc_close(second, 14, "upstream unavailable").unwrap();
    assert!(http
        .logs()
        .iter()
        .any(|l| l.message == "upstream unavailable" && l.level == LogLevel::Warn));
    assert!(http.violations().is_empty());
}
