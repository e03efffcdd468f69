//! Proxy reports from the real modules under the strict wasmtime host: every Nexus filter's
//! root context tells the controller what it runs (filter, configuration sha256, module,
//! node), when configured and then every interval, and a filter's own ticks keep their period.

use std::time::Duration;

use nexus_config::report::{ProxyReport, REPORTS_PATH};
use proxy_wasm_test_host::Host;
use sha2::{Digest, Sha256};

const CLUSTER: &str = "outbound|8080||nexus-controller-leader.nexus-system.svc.cluster.local";
const MODULE_SHA: &str = "5f2c0000000000000000000000000000000000000000000000000000000000aa";

fn vm_config(interval_ms: u32) -> String {
    format!(
        r#"{{"report":{{"cluster":"{CLUSTER}","module_sha256":"{MODULE_SHA}","interval_ms":{interval_ms}}}}}"#
    )
}

/// One minimal configuration per filter: every module gets reports from the same root.
const FILTERS: [(&str, &str); 5] = [
    ("nexus_router", r#"{"rules":[]}"#),
    ("nexus_auth", r#"{"rules":[]}"#),
    (
        "nexus_ratelimit",
        r#"{"limits":{"domain":"d","descriptors":[]}}"#,
    ),
    ("nexus_cache", r#"{"rules":[]}"#),
    ("nexus_guard", r#"{"rules":[]}"#),
];

fn host(module: &str, config: &str, vm: &str) -> Host {
    let module = nexus_tests::filter_module(module).unwrap();
    Host::builder()
        .vm_config(vm.as_bytes().to_vec())
        .plugin_config(config.as_bytes().to_vec())
        .property(&["plugin_name"], "nexus.x")
        .property(&["xds", "node", "id"], "gw-7d9f")
        .property(&["node", "metadata", "NAMESPACE"], "istio-system")
        .allow_cluster(CLUSTER)
        .build_from_file(module)
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn every_filter_reports_what_it_runs_at_its_first_tick() {
    for (module, config) in FILTERS {
        let mut host = host(module, config, &vm_config(10_000));
        assert!(host.start().unwrap(), "{module} starts");
        assert!(
            host.http_calls().is_empty(),
            "{module}: no callout from configure"
        );
        host.tick().unwrap();
        let calls = host.http_calls();
        let [call] = calls.as_slice() else {
            panic!("{module}: one report, got {calls:?}")
        };
        assert_eq!(call.cluster, CLUSTER);
        assert_eq!(
            call.headers
                .iter()
                .find(|(k, _)| k == ":path")
                .map(|(_, v)| v.as_str()),
            Some(REPORTS_PATH)
        );
        let report: ProxyReport = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(
            report.config_sha256,
            sha256_hex(config.as_bytes()),
            "{module}"
        );
        assert_eq!(report.module_sha256.as_deref(), Some(MODULE_SHA));
        assert_eq!(report.node_id, "gw-7d9f");
        assert_eq!(report.namespace.as_deref(), Some("istio-system"));
        assert_eq!(report.pod, None, "no NAME in the node metadata");
        assert_eq!(report.filter, "nexus.x", "Envoy's plugin_name");
        assert!(
            host.violations().is_empty(),
            "{module}: {:?}",
            host.violations()
        );
    }
}

#[test]
fn reports_repeat_every_interval_and_retry_soon_after_a_failure() {
    let mut host = host("nexus_router", FILTERS[0].1, &vm_config(10_000));
    assert!(host.start().unwrap());
    assert_eq!(host.tick_period(), Some(Duration::from_secs(1)));
    host.tick().unwrap();
    let token = host.http_calls()[0].token;
    host.respond_http_call(token, &[(":status", "204")], b"")
        .unwrap();
    host.advance_time(Duration::from_secs(9));
    host.tick().unwrap();
    assert!(host.http_calls().is_empty(), "not due before the interval");
    host.advance_time(Duration::from_secs(1));
    host.tick().unwrap();
    let token = host.http_calls()[0].token;
    host.respond_http_call(token, &[(":status", "503")], b"")
        .unwrap();
    host.advance_time(Duration::from_secs(2));
    host.tick().unwrap();
    let token = host.http_calls()[0].token;
    host.fail_http_call(token).unwrap();
    assert_eq!(host.metric("nexus_report.sent"), Some(1));
    assert_eq!(host.metric("nexus_report.failed"), Some(2));
}

#[test]
fn a_new_configuration_is_reported_at_once() {
    let mut host = host("nexus_router", FILTERS[0].1, &vm_config(10_000));
    assert!(host.start().unwrap());
    host.tick().unwrap();
    let token = host.http_calls()[0].token;
    host.respond_http_call(token, &[(":status", "204")], b"")
        .unwrap();
    let changed = r#"{"rules":[{"name":"lake","category":"data_operations","match":{"path":{"prefix":"/lake/"}}}]}"#;
    assert!(host.reconfigure(changed.as_bytes().to_vec()).unwrap());
    host.tick().unwrap();
    let report: ProxyReport = serde_json::from_slice(&host.http_calls()[0].body).unwrap();
    assert_eq!(report.config_sha256, sha256_hex(changed.as_bytes()));
}

#[test]
fn a_filter_keeps_its_own_tick_period_beside_reports() {
    // The cache filter ticks every 100 ms for its coherency stream; reports change nothing.
    let coherent = r#"{"rules":[],"service":{"cluster":"nexus-cache"}}"#;
    let mut host = host("nexus_cache", coherent, &vm_config(10_000));
    assert!(host.start().unwrap());
    assert_eq!(host.tick_period(), Some(Duration::from_millis(100)));
}

#[test]
fn a_malformed_vm_configuration_fails_the_vm_with_the_reason() {
    let mut host = host("nexus_router", FILTERS[0].1, r#"{"report":{"cluster":7}}"#);
    let refused = host.start().unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("proxy_on_vm_start returned false"),
        "{refused}"
    );
    assert!(host.logged("invalid VM configuration"), "{:?}", host.logs());
}

#[test]
fn without_a_sink_nothing_is_reported() {
    let mut host = host("nexus_router", FILTERS[0].1, "");
    assert!(host.start().unwrap());
    assert_eq!(host.tick_period(), None, "the router asks for no ticks");
    host.tick().unwrap();
    assert!(host.http_calls().is_empty());
}
