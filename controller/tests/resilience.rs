//! Retries, outlier ejection and connection-pool limits as real Envoy under `nexus up` applies
//! them, proven by what misbehaving upstreams counted (`nexus_tests::misbehaving`), not by
//! what the rendered configuration says.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_tests::client::{self, Response};
use nexus_tests::misbehaving::Misbehaving;

fn free_port() -> u16 {
    nexus_toolenv::ports::free_port().unwrap()
}

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `nexus up` on a directory holding `gateway` (the NexusGateway spec's extra lines) and
/// `routes` (one NexusRoute's spec); stopped on drop.
struct Up {
    child: Child,
    port: u16,
    admin: u16,
    state: tempfile::TempDir,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start(gateway: &str, routes: &str) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gateway.yaml"),
            format!("kind: NexusGateway\nspec:\n{gateway}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("routes.yaml"),
            format!(
                "apiVersion: nexus.datapunk.io/v1alpha1\nkind: NexusRoute\nmetadata: {{name: resil}}\nspec:\n  target: {{kind: Gateway, selector: {{istio: ingressgateway}}}}\n  gateways: [istio-system/nexus-gateway]\n{routes}"
            ),
        )
        .unwrap();
        let (port, admin, http) = (free_port(), free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("up")
            .arg(dir.path())
            .args(["--memory", "--poll-ms", "100"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--admin-port", &admin.to_string()])
            .arg("--state-dir")
            .arg(state.path())
            .arg("--modules")
            .arg(repo_root().join("target/filters"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        }
        let up = Up {
            child,
            port,
            admin,
            state,
            output,
            _dir: dir,
        };
        up.wait_for_output("Nexus is up");
        up
    }

    fn wait_for_output(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self
            .output
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            let failed = self
                .output
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("nothing started"));
            assert!(
                Instant::now() < deadline && !failed,
                "no {needle:?} from nexus up; output:\n{}",
                self.output.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        client::get(self.port, path, headers).unwrap()
    }

    fn post(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        client::request(self.port, "POST", path, headers, b"{}").unwrap()
    }

    /// Envoy's stat `name` (a counter or gauge), 0 when absent.
    fn stat(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.admin, &format!("/stats?filter=^{name}$"));
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Waits until Envoy's stat `name` is `want` (the deadline only stops a broken test).
    fn wait_stat(&self, name: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.stat(name) != want {
            assert!(
                Instant::now() < deadline,
                "{name} stayed {} (want {want})",
                self.stat(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access-log line of the (one) request to `path`.
    fn access_log(&self, path: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log =
                std::fs::read_to_string(self.state.path().join("access.log")).unwrap_or_default();
            let found = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["path"] == path);
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line for {path}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM: nexus stops its Envoy; a bare kill would orphan it.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let r = client::get(port, path, &[]).unwrap();
    (r.status, r.text())
}

/// `services: {lake: ...}` placing the lake Service on `hosts`.
fn lake_on(hosts: &[&Misbehaving]) -> String {
    let addrs: Vec<String> = hosts
        .iter()
        .map(|h| format!("127.0.0.1:{}", h.port))
        .collect();
    format!("  services: {{lake: '{}'}}\n", addrs.join(","))
}

/// Sends a GET and reads until the connection closes: what a client of a response that broke
/// midway gets (the head, part of the body).
fn get_raw(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: nexus.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const RETRY_RULES: &str = "  rules:
  - {name: lake, match: {path: {prefix: /lake/}}, category: data_operations}
  - name: dedup
    match: {path: {prefix: /dedup/}}
    category: data_operations
    retries: {attempts: 3, nonIdempotent: true}
  - name: slow
    match: {path: {prefix: /slow/}}
    category: data_operations
    retries: {attempts: 2, perTryTimeout: 300ms}
";

/// The seed's 3 retries as Envoy applies them: a GET answered 503 twice succeeds on its third
/// try; a POST is tried once unless its rule opts in; nothing is retried once a response
/// started; a try slower than `perTryTimeout` is abandoned for another.
#[test]
fn retries_follow_the_method_the_opt_in_and_the_per_try_timeout() {
    let lake = Misbehaving::start("lake");
    let up = Up::start(&lake_on(&[&lake]), RETRY_RULES);

    let r = up.get("/lake/a", &[("x-test-id", "get"), ("x-fail", "2")]);
    assert_eq!(
        (r.status, r.header("x-try")),
        (200, Some("3")),
        "{}",
        r.text()
    );
    assert_eq!(
        lake.tries("get"),
        3,
        "two 503s retried, the third try answered"
    );

    let r = up.post("/lake/a", &[("x-test-id", "post"), ("x-fail", "2")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        lake.tries("post"),
        1,
        "a POST the upstream saw is not repeated"
    );

    let r = up.post("/dedup/a", &[("x-test-id", "opt-in"), ("x-fail", "2")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        lake.tries("opt-in"),
        3,
        "nonIdempotent: true retries a POST"
    );

    // All 4 tries fail: 1 + attempts(3), then the client gets the last 503.
    let r = up.get("/lake/a", &[("x-test-id", "exhausted"), ("x-fail", "9")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(lake.tries("exhausted"), 4);

    let broken = get_raw(
        up.port,
        "/lake/broken",
        &[("x-test-id", "broken"), ("x-break-after-headers", "1")],
    );
    assert!(broken.starts_with("HTTP/1.1 200"), "{broken}");
    assert!(
        broken.ends_with("start"),
        "the client got the part sent: {broken}"
    );
    assert_eq!(
        lake.tries("broken"),
        1,
        "no retry once the response started"
    );

    let r = up.get(
        "/slow/a",
        &[("x-test-id", "slow"), ("x-slow-first-ms", "2000")],
    );
    assert_eq!(
        (r.status, r.header("x-try")),
        (200, Some("2")),
        "{}",
        r.text()
    );
    assert_eq!(lake.tries("slow"), 2, "the slow first try was abandoned");
    assert_eq!(up.stat("cluster.lake.upstream_rq_per_try_timeout"), 1);
}

/// A retry budget: with one retry allowed at a time (`minRetryConcurrency: 1`, and 1% of a
/// few requests is less), a second failing request is not retried while the first one's retry
/// is in flight: the client gets its 503, the upstream saw it once, Envoy counts the overflow.
#[test]
fn a_retry_budget_caps_the_retries_in_flight() {
    let lake = Misbehaving::start("lake");
    let up = Up::start(
        &lake_on(&[&lake]),
        "  retryBudget: {percent: 1, minRetryConcurrency: 1}
  rules:
  - {name: lake, match: {path: {prefix: /lake/}}, category: data_operations}
",
    );
    let port = up.port;
    let first = std::thread::spawn(move || {
        let headers = [
            ("x-test-id", "first"),
            ("x-fail", "1"),
            ("x-hold-from-try", "2"),
        ];
        client::get(port, "/lake/a", &headers).unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while lake.held() < 1 {
        assert!(
            Instant::now() < deadline,
            "the first request's retry never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = up.get("/lake/a", &[("x-test-id", "second"), ("x-fail", "1")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(lake.tries("second"), 1, "no budget left for its retry");
    assert_eq!(up.stat("cluster.lake.upstream_rq_retry_overflow"), 1);

    lake.release();
    let r = first.join().unwrap();
    assert_eq!(
        (r.status, r.header("x-try")),
        (200, Some("2")),
        "{}",
        r.text()
    );
    // With the budget free again, a failing request is retried as usual.
    let r = up.get("/lake/a", &[("x-test-id", "third"), ("x-fail", "1")]);
    assert_eq!((r.status, lake.tries("third")), (200, 2), "{}", r.text());
}

/// The circuit breaker: five 503s in a row from one of lake's two hosts eject it (for the
/// configured 2 s here, 60 s by default) while the other serves everything, and it serves
/// again once the ejection time has passed.
#[test]
fn five_consecutive_5xx_eject_a_host_and_it_returns_after_the_ejection_time() {
    let (bad, good) = (Misbehaving::start("bad"), Misbehaving::start("good"));
    let up = Up::start(
        &lake_on(&[&bad, &good]),
        "  circuitBreaker: {consecutiveErrors: 5, baseEjectionTime: 2s, interval: 100ms}
  rules:
  - {name: lake, match: {path: {prefix: /lake/}}, category: data_operations}
",
    );
    bad.set_failing(true);
    let mut sent = 0;
    while bad.served() < 5 {
        // Each GET that meets `bad` is retried on `good`: the client never sees the 503s.
        let r = up.get("/lake/x", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        sent += 1;
        assert!(sent < 100, "bad answered {} times in {sent}", bad.served());
    }
    assert_eq!(bad.served(), 5);
    up.wait_stat("cluster.lake.outlier_detection.ejections_active", 1);
    assert_eq!(
        up.stat("cluster.lake.outlier_detection.ejections_enforced_consecutive_5xx"),
        1
    );
    let before = good.served();
    for _ in 0..10 {
        let r = up.get("/lake/x", &[]);
        assert_eq!(r.header("x-served-by"), Some("good"), "{}", r.text());
    }
    assert_eq!(bad.served(), 5, "an ejected host gets no traffic");
    assert_eq!(good.served(), before + 10);

    bad.set_failing(false);
    up.wait_stat("cluster.lake.outlier_detection.ejections_active", 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bad.served() == 5 {
        assert!(
            Instant::now() < deadline,
            "the ejected host never came back"
        );
        assert_eq!(up.get("/lake/x", &[]).status, 200);
    }
    assert!(bad.served() > 5, "restored after the ejection time");
}

/// Connection-pool limits: with one connection and one pending request allowed, a third
/// concurrent request is refused at once with 503, Envoy's `UO` flag in the access log and
/// `upstream_rq_pending_overflow` counted, and never reaches the upstream.
#[test]
fn a_full_connection_pool_answers_503_with_the_overflow_flag() {
    let lake = Misbehaving::start("lake");
    // One worker: each worker has its own pool, which may open one connection past the limit.
    let gateway = format!("  concurrency: 1\n{}", lake_on(&[&lake]));
    let up = Up::start(
        &gateway,
        "  connectionPool: {maxConnections: 1, http1MaxPendingRequests: 1}
  rules:
  - {name: lake, match: {path: {prefix: /lake/}}, category: data_operations}
",
    );
    let port = up.port;
    let hold = |id: &'static str| {
        std::thread::spawn(move || {
            client::get(port, "/lake/held", &[("x-test-id", id), ("x-hold", "1")]).unwrap()
        })
    };
    // One at a time: a second request arriving while the first one's connection is still
    // being set up would itself be the pending request the limit refuses.
    let mut held = vec![hold("one")];
    let deadline = Instant::now() + Duration::from_secs(20);
    while lake.held() < 1 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    held.push(hold("two"));
    up.wait_stat("cluster.lake.upstream_rq_pending_active", 1);

    let r = up.get("/lake/third", &[("x-test-id", "third")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(lake.tries("third"), 0, "refused before the upstream");
    assert_eq!(up.stat("cluster.lake.upstream_rq_pending_overflow"), 1);
    let line = up.access_log("/lake/third");
    assert_eq!(line["response_flags"], "UO", "{line}");

    lake.release();
    for h in held {
        assert_eq!(h.join().unwrap().status, 200);
    }
    assert_eq!(lake.tries("one") + lake.tries("two"), 2);
}

const FAILOVER_RULES: &str =
    "  circuitBreaker: {consecutiveErrors: 5, baseEjectionTime: 30s, interval: 100ms}
  rules:
  - name: tables
    match: {path: {prefix: /v1/lake/}}
    category: data_operations
    upstream: {service: lake-grpc, port: 9090, protocol: GRPC}
    grpcTranscoding:
      services: [datapunk.lake.v1.Lake]
      restFailover: {service: lake-rest, port: 8080}
";

/// gRPC primary, REST fallback: a REST client's GET is transcoded to the gRPC lake while it
/// serves; when it answers UNAVAILABLE, when it is killed, and once it is ejected, the same
/// GET is served by the REST twin, and `x-nexus-served-by` says which answered.
#[test]
fn grpc_primary_fails_over_to_rest_when_unavailable_killed_or_ejected() {
    let mut grpc = nexus_tests::grpc_lake::GrpcLake::start().unwrap();
    let rest = Misbehaving::start("lake-rest");
    let gateway = format!(
        "  services: {{lake-grpc: '127.0.0.1:{}', lake-rest: '127.0.0.1:{}'}}\n",
        grpc.port, rest.port
    );
    let up = Up::start(&gateway, FAILOVER_RULES);
    let path = "/v1/lake/tables/orders";
    let rest_tries = || rest.tries(&format!("GET {path}"));
    let served_by = |r: &Response| r.header("x-nexus-served-by").map(str::to_string);

    let r = up.get(path, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served_by(&r).as_deref(), Some("lake-grpc"));
    let table = r.json().unwrap();
    assert_eq!(
        (table["name"].as_str(), table["served_by"].as_str()),
        (Some("orders"), Some("grpc"))
    );
    assert_eq!((grpc.calls(), rest_tries()), (1, 0));

    grpc.set_unavailable(true);
    let r = up.get(path, &[]);
    assert_eq!(
        (r.status, served_by(&r).as_deref()),
        (200, Some("lake-rest")),
        "{}",
        r.text()
    );
    assert_eq!(
        (grpc.calls(), rest_tries()),
        (2, 1),
        "UNAVAILABLE, then REST"
    );

    // A POST too: the gRPC upstream refused it, so the REST twin gets it.
    let r = up.post("/v1/lake/tables", &[("x-test-id", "post-unavailable")]);
    assert_eq!(
        (r.status, served_by(&r).as_deref()),
        (200, Some("lake-rest")),
        "{}",
        r.text()
    );
    assert_eq!((grpc.calls(), rest.tries("post-unavailable")), (3, 1));

    grpc.set_unavailable(false);
    let r = up.post("/v1/lake/tables", &[("x-test-id", "post-grpc")]);
    assert_eq!(
        (r.status, served_by(&r).as_deref()),
        (200, Some("lake-grpc")),
        "{}",
        r.text()
    );
    assert_eq!((grpc.calls(), rest.tries("post-grpc")), (4, 0));
    let r = up.get(path, &[]);
    assert_eq!(served_by(&r).as_deref(), Some("lake-grpc"), "{}", r.text());
    assert_eq!((grpc.calls(), rest_tries()), (5, 1));

    grpc.kill();
    let r = up.post("/v1/lake/tables", &[("x-test-id", "post-killed")]);
    assert_eq!(
        (r.status, served_by(&r).as_deref()),
        (200, Some("lake-rest")),
        "{}",
        r.text()
    );
    assert_eq!(rest.tries("post-killed"), 1, "connect failure, then REST");
    for n in 1..=4 {
        let r = up.get(path, &[]);
        assert_eq!(
            (r.status, served_by(&r).as_deref()),
            (200, Some("lake-rest")),
            "{}",
            r.text()
        );
        assert_eq!(rest_tries(), 1 + n, "connect failure, then REST");
    }
    assert_eq!(grpc.calls(), 5);
    // Five 503s in a row from the hop (connect failures): it is ejected, and the aggregate
    // sends straight to REST without trying it.
    let hop = "cluster.transcode.resil.tables";
    up.wait_stat(&format!("{hop}.outlier_detection.ejections_active"), 1);
    let tried = up.stat(&format!("{hop}.upstream_rq_total"));
    let r = up.get(path, &[]);
    assert_eq!(served_by(&r).as_deref(), Some("lake-rest"));
    assert_eq!(rest_tries(), 6);
    assert_eq!(
        up.stat(&format!("{hop}.upstream_rq_total")),
        tried,
        "the ejected hop is skipped"
    );

    // Only the gRPC side's failures fail over for every method: a POST the REST twin answers
    // 503 reached it and is not repeated.
    let r = up.post("/v1/lake/tables", &[("x-test-id", "post"), ("x-fail", "9")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(rest.tries("post"), 1);
    assert_eq!(r.header("x-nexus-grpc-status"), None);
}
