//! `nexus up examples/datapunk` end to end: the real `nexus` binary, real Envoy, the real
//! filter modules, requests through the listener.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_tests::client::{self, Response};
use support::{free_port, http_get, repo_root};

/// A running `nexus up`, its output collected line by line; stopped on drop.
struct Up {
    child: Child,
    port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
    /// stdout (the banner, for people) and stderr (the log) interleaved.
    output: Arc<Mutex<Vec<String>>>,
    /// stderr alone: the log lines.
    log: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start() -> Up {
        Self::start_with(&["--memory"])
    }

    /// `nexus up` on a copy of the example, with `extra` flags (storage, health schedule).
    fn start_with(extra: &[&str]) -> Up {
        Self::start_prepared(extra, |_| {})
    }

    /// [`Up::start_with`], after `prepare` changed the copy of the example.
    fn start_prepared(extra: &[&str], prepare: impl FnOnce(&Path)) -> Up {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo_root().join("examples/datapunk"), dir.path());
        prepare(dir.path());
        let port = free_port();
        let http_port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("up")
            .arg(dir.path())
            .env("NEXUS_CACHE_TOKEN", CACHE_TOKEN)
            .env("NEXUS_SESSIONS_TOKEN", SESSIONS_TOKEN)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{http_port}")])
            .args(["--admin-port", "0", "--poll-ms", "100"])
            .args(extra)
            .arg("--modules")
            .arg(repo_root().join("target/filters"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        for (stream, is_log) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                false,
            ),
            (Box::new(child.stderr.take().unwrap()), true),
        ] {
            let (output, log) = (output.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if is_log {
                        log.lock().unwrap().push(line.clone());
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let up = Up {
            child,
            port,
            http_port,
            dir,
            output,
            log,
        };
        up.wait_for_output("Nexus is up", Duration::from_secs(90));
        up
    }

    fn wait_for_output(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from nexus up within {within:?}; output:\n{}",
                self.output.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        client::get(self.port, path, headers).unwrap()
    }

    fn edit(&self, file: &str, edit: impl Fn(String) -> String) {
        let p = self.dir.path().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, edit(text)).unwrap();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM first: nexus stops its Envoy; a bare kill would orphan it.
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

/// Lets a request loop run 300 ms more, stops it and returns what it saw, failing the test on
/// any failed request.
fn stop_loop(
    stop: &AtomicBool,
    load: std::thread::JoinHandle<Vec<Result<String, String>>>,
    during: &str,
) -> Vec<Result<String, String>> {
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    let failures: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "failed during the {during}: {failures:?}"
    );
    seen
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target: PathBuf = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

const CACHE_TOKEN: &str = "test-cache-token";

fn bearer(dir: &Path, who: &str) -> String {
    let token = std::fs::read_to_string(dir.join(format!("tokens/{who}.jwt"))).unwrap();
    format!("Bearer {}", token.trim())
}

#[test]
fn datapunk_example_through_real_envoy() {
    let up = Up::start();
    let alice = bearer(up.dir.path(), "alice");
    let alice = [("authorization", alice.as_str())];

    // Authentication: no token is a 401 with a JSON body and a challenge.
    let r = up.get("/lake/tables", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "missing_credentials");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    // Envoy's access log gives the filter's reason as the response code details.
    let banner = up.wait_for_output("Envoy config and logs", Duration::from_secs(5));
    let state_dir = PathBuf::from(banner.rsplit(": ").next().unwrap().trim());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(state_dir.join("access.log")).unwrap_or_default();
        let denied = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["status"] == 401 || l["status"] == "401");
        if let Some(entry) = denied {
            assert_eq!(entry["details"], "nexus_missing_credentials", "{entry}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 401 in the access log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Routing: each category reaches its upstream with its timeout and the caller's identity.
    for (path, service, timeout) in [
        ("/lake/tables", "lake", "30000"),
        ("/stream/events", "stream", "5000"),
        ("/cortex/v1/models", "cortex", "10000"),
        ("/forge/models", "forge", "20000"),
    ] {
        let r = up.get(path, &alice);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let echo = r.json().unwrap();
        assert_eq!(echo["service"], service, "{path}");
        assert_eq!(
            echo["headers"]["x-envoy-expected-rq-timeout-ms"], timeout,
            "{path}"
        );
        assert_eq!(echo["headers"]["x-nexus-client-id"], "alice", "{path}");
    }

    // Service-to-service: the CI API key reaches forge as client ci-pipeline.
    let r = up.get("/forge/models", &[("x-api-key", "dp-forge-ci-0001")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["headers"]["x-nexus-client-id"],
        "ci-pipeline"
    );

    // Caching: the public catalog was warmed before "Nexus is up"; alice's reads are cached
    // for her (the second read does not reach the upstream: same `served` count).
    // (The cache key includes the host; warming asks as a local client would.)
    let listener = format!("127.0.0.1:{}", up.port);
    let r = up.get("/lake/catalog", &[("host", &listener)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("x-nexus-cache")
            .is_some_and(|c| c.starts_with("hit-")),
        "{:?}",
        r.headers
    );
    let first = up.get("/lake/datasets", &alice);
    assert_eq!(
        first.header("x-nexus-cache"),
        Some("miss"),
        "{:?}",
        first.headers
    );
    let second = up.get("/lake/datasets", &alice);
    assert_eq!(
        second.header("x-nexus-cache"),
        Some("hit-local"),
        "{:?}",
        second.headers
    );
    assert_eq!(
        first.json().unwrap()["served"],
        second.json().unwrap()["served"]
    );
    // Invalidation over HTTP (bearer token) reaches Envoy's cache through the event stream.
    let denied = client::request(
        up.http_port,
        "POST",
        "/cache/invalidate",
        &[("authorization", "Bearer wrong")],
        br#"{"prefixes":["/lake/datasets"]}"#,
    )
    .unwrap();
    assert_eq!(denied.status, 401, "{}", denied.text());
    let ok = client::request(
        up.http_port,
        "POST",
        "/cache/invalidate",
        &[("authorization", &format!("Bearer {CACHE_TOKEN}"))],
        br#"{"prefixes":["/lake/datasets"]}"#,
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = up.get("/lake/datasets", &alice);
        if r.header("x-nexus-cache") != Some("hit-local") {
            assert_eq!(r.header("x-nexus-cache"), Some("miss"), "{:?}", r.headers);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the invalidation never reached Envoy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Per-client rate limit on cortex: 5 per minute (one was used above), then 429.
    let statuses: Vec<u16> = (0..5)
        .map(|_| up.get("/cortex/v1/infer", &alice).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let r = up.get("/cortex/v1/infer", &alice);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);

    // A live change: stream's timeout 5 s -> 2 s while requests keep flowing; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let port = up.port;
    let auth = alice[0].1.to_string();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client::get(port, "/stream/events", &[("authorization", &auth)]);
                seen.push(match r {
                    Ok(r) if r.status == 200 => Ok(r.json().unwrap()["headers"]
                        ["x-envoy-expected-rq-timeout-ms"]
                        .as_str()
                        .unwrap()
                        .to_string()),
                    Ok(r) => Err(format!("{} {}", r.status, r.text())),
                    Err(e) => Err(e.to_string()),
                });
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Envoy's filters report the configuration they run; nexus up confirms it.
    let first = wait_enforced(&up, None);
    up.edit("routes.yaml", |t| {
        t.replace(
            "category: stream_processing\n",
            "category: stream_processing\n    timeout: 2s\n",
        )
    });
    up.wait_for_output("applied version 2", Duration::from_secs(20));
    let second = wait_enforced(&up, Some(&first));
    assert!(
        second.starts_with("1/1 proxies run configuration "),
        "{second}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.get("/stream/events", &alice).json().unwrap()["headers"]
        ["x-envoy-expected-rq-timeout-ms"]
        != "2000"
    {
        assert!(Instant::now() < deadline, "the 2 s timeout never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = stop_loop(&stop, load, "switch");
    let before = seen.iter().filter(|r| r.as_deref() == Ok("5000")).count();
    let after = seen.iter().filter(|r| r.as_deref() == Ok("2000")).count();
    assert!(
        before > 0 && after > 0,
        "{before} before, {after} after the switch"
    );
    eprintln!(
        "live change: {} requests during the switch, {before} on the old config, {after} on the new, 0 failed",
        seen.len()
    );

    // A bad file is reported with file, path and reason, and the running config stays.
    up.edit("routes.yaml", |t| t.replace("timeout: 2s", "timeout: soon"));
    let line = up.wait_for_output("rules[2].timeout", Duration::from_secs(20));
    assert!(line.contains("routes.yaml"), "{line}");
    assert!(
        up.output
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("NOT applied (still serving version 2)")),
        "{:?}",
        up.output.lock().unwrap()
    );
    let r = up.get("/stream/events", &alice);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().unwrap()["headers"]["x-envoy-expected-rq-timeout-ms"],
        "2000"
    );

    // Every log line (stderr) is one JSON object in the format every Nexus process shares,
    // the refused edit's problem included (stderr is read apart from stdout: wait for it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("NOT applied"))
    {
        assert!(
            Instant::now() < deadline,
            "no refused-change line in the log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = up.log.lock().unwrap().clone();
    let lines: Vec<_> = log
        .iter()
        .map(|l| nexus_telemetry::parse_line(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(lines.iter().all(|l| l["service"] == "nexus-up"), "{log:?}");
    let refused = lines
        .iter()
        .find(|l| l["level"] == "warn" && l["message"].as_str().unwrap().contains("NOT applied"))
        .unwrap_or_else(|| panic!("no refused-change line in {log:?}"));
    assert!(
        refused["problem"]
            .as_str()
            .unwrap()
            .contains("rules[2].timeout"),
        "{refused:?}"
    );
}

/// The example's cortex rule has a guard block: PII in a prompt is refused before it reaches
/// the model, and what comes back is scrubbed (the demo upstream echoes the request headers).
#[test]
fn guard_blocks_pii_in_prompts_and_redacts_answers() {
    let up = Up::start();
    let alice = bearer(up.dir.path(), "alice");
    let json = [
        ("authorization", alice.as_str()),
        ("content-type", "application/json"),
    ];
    let prompt = br#"{"prompt": "charge card 4111 1111 1111 1111 for the run"}"#;
    let r = client::request(up.port, "POST", "/cortex/v1/infer", &json, prompt).unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["error"], "pii_detected");
    assert_eq!(v["types"], serde_json::json!(["card"]));
    assert!(!r.text().contains("4111"), "{}", r.text());
    let clean = br#"{"prompt": "summarize the lake's tables"}"#;
    let r = client::request(up.port, "POST", "/cortex/v1/infer", &json, clean).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let r = up.get(
        "/cortex/v1/models",
        &[
            ("authorization", alice.as_str()),
            ("x-contact", "alice@example.com"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    let echo = r
        .json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()));
    assert_eq!(echo["headers"]["x-contact"], "[REDACTED:email]");
    assert_eq!(echo["headers"]["x-nexus-client-id"], "alice");
    // Other routes have no guard: the same header comes back as sent.
    let r = up.get(
        "/stream/events",
        &[
            ("authorization", alice.as_str()),
            ("x-contact", "alice@example.com"),
        ],
    );
    assert_eq!(
        r.json().unwrap()["headers"]["x-contact"],
        "alice@example.com"
    );

    let r = up.get("/cortex/v1/models", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    // Three of alice's 5 per minute on cortex are used: the third from here is refused.
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            up.get("/cortex/v1/models", &[("authorization", alice.as_str())])
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429]);

    // The decisions are in the hash-chained audit log, with rule, types and caller.
    let banner = up.wait_for_output("Audit log", Duration::from_secs(5));
    let log = PathBuf::from(banner.rsplit("nexus audit verify ").next().unwrap().trim());
    let records = wait_for_audit(
        &log,
        &[
            "guard.blocked",
            "guard.redacted",
            "auth.deny",
            "ratelimit.deny",
            "config.applied",
        ],
    );
    // The configuration serving is a record too, before any request's.
    let applied = records
        .iter()
        .position(|e| e["record"]["event"] == "config.applied")
        .unwrap();
    let r = &records[applied]["record"];
    assert_eq!(
        (r["source"].as_str(), r["data"]["version"].as_u64()),
        (Some("nexus-up"), Some(1))
    );
    assert!(r["data"]["routes"].as_u64() >= Some(1), "{r}");
    assert!(records[..applied]
        .iter()
        .all(|e| e["record"]["source"] == "nexus-up"));
    let blocked = records
        .iter()
        .find(|e| e["record"]["event"] == "guard.blocked")
        .unwrap_or_else(|| panic!("no guard.blocked in {records:?}"));
    let r = &blocked["record"];
    assert_eq!(r["rule"], "datapunk.cortex");
    assert_eq!(
        (r["direction"].as_str(), r["status"].as_u64()),
        (Some("request"), Some(422))
    );
    assert_eq!(r["types"], serde_json::json!(["card"]));
    assert_eq!(
        (r["client"].as_str(), r["method"].as_str()),
        (Some("alice"), Some("POST"))
    );
    let redacted = records
        .iter()
        .find(|e| e["record"]["event"] == "guard.redacted")
        .unwrap_or_else(|| panic!("no guard.redacted in {records:?}"));
    assert_eq!(redacted["record"]["direction"], "response");
    assert_eq!(redacted["record"]["types"], serde_json::json!(["email"]));
    let allowed = records
        .iter()
        .find(|e| e["record"]["event"] == "auth.allow" && e["record"]["rule"] == "datapunk.cortex")
        .unwrap_or_else(|| panic!("no auth.allow in {records:?}"));
    assert_eq!(allowed["record"]["client"], "alice");
    // Provider names are `<route>.<provider>` in the filter configs.
    assert_eq!(allowed["record"]["auth_method"], "jwt:datapunk.datapunk");
    let denied = records
        .iter()
        .find(|e| e["record"]["event"] == "auth.deny")
        .unwrap();
    assert_eq!(denied["record"]["reason"], "missing_credentials");
    let limited = records
        .iter()
        .find(|e| e["record"]["event"] == "ratelimit.deny")
        .unwrap();
    assert_eq!(limited["record"]["rule"], "datapunk.cortex");
    assert_eq!(limited["record"]["client"], "alice");
    assert_eq!(limited["record"]["status"], 429);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("4111") && !text.contains("alice@example.com"),
        "a PII value in the audit log:\n{text}"
    );

    // `nexus audit verify` passes, and names the record after one byte of it changes.
    let verify = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(["audit", "verify"])
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = verify(&log);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("chain intact"), "{out}");
    let copy = up.dir.path().join("audit-copy.log");
    let line = text
        .lines()
        .position(|l| l.contains("guard.blocked"))
        .unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[line] = lines[line].replacen("\"card\"", "\"cart\"", 1);
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let bad = verify(&copy);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    let n = line + 1;
    assert!(
        err.contains(&format!("broken at record {n} (line {n})")),
        "{err}"
    );
}

/// The audit log's entries once it holds a record of each of `events` (the filters flush
/// every second).
fn wait_for_audit(log: &Path, events: &[&str]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let entries: Vec<serde_json::Value> = text
            .lines()
            // The last line may be half written.
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if events
            .iter()
            .all(|ev| entries.iter().any(|e| e["record"]["event"] == *ev))
        {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "not every one of {events:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `enforced` component's detail once it is ok (and differs from `not`): Envoy's filters
/// run what `nexus up` applied.
fn wait_enforced(up: &Up, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = readiness(up);
        let enforced = &health["components"]["enforced"];
        let detail = enforced["detail"].as_str().unwrap_or_default().to_string();
        if enforced["status"] == "ok" && Some(detail.as_str()) != not {
            return detail;
        }
        assert!(Instant::now() < deadline, "never enforced: {health}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `redis` component as `/health/ready` reports it, and the probe's status code.
fn readiness(up: &Up) -> (u16, serde_json::Value) {
    let (code, body) = http_get(up.http_port, "/health/ready");
    (code, serde_json::from_str(&body).unwrap_or_default())
}

fn wait_readiness(up: &Up, want: u16, what: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, health) = readiness(up);
        if code == want {
            return health["components"]["redis"].clone();
        }
        assert!(Instant::now() < deadline, "never {what}: {code} {health}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn redis_outage_fails_readiness_after_three_failed_checks_and_recovers() {
    let mut redis = nexus_ratelimit_service::testkit::PrivateRedis::start();
    let url = redis.url();
    let up = Up::start_with(&["--redis-url", &url, "--health-interval-ms", "200"]);
    let ok = wait_readiness(&up, 200, "ready");
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(ok["required"], true, "{ok}");

    redis.stop();
    let down = wait_readiness(&up, 503, "unready after Redis stopped");
    assert_eq!(down["status"], "down", "{down}");
    assert!(down["failures_in_a_row"].as_u64().unwrap() >= 3, "{down}");
    let error = down["last_error"].as_str().unwrap();
    assert!(
        error.contains(&url) || error.contains("127.0.0.1"),
        "{down}"
    );
    assert!(
        down["last_check"].as_str().unwrap().ends_with('Z'),
        "{down}"
    );

    redis.restart();
    let back = wait_readiness(&up, 200, "ready again after Redis came back");
    assert_eq!(back["status"], "ok", "{back}");
    assert_eq!(back["failures_in_a_row"], 0, "{back}");
    // The outage's last error stays visible.
    assert!(!back["last_error"].as_str().unwrap().is_empty(), "{back}");
}

/// An upstream that answers 503 to the first two requests for each method and path and 200
/// after, and counts what it received (`"GET /path"`).
struct FlakyUpstream {
    port: u16,
    seen: Arc<Mutex<std::collections::BTreeMap<String, u32>>>,
}

impl FlakyUpstream {
    fn start() -> FlakyUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let counts = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counts = counts.clone();
                std::thread::spawn(move || FlakyUpstream::serve(stream, &counts));
            }
        });
        FlakyUpstream { port, seen }
    }

    /// One request per connection: reads the head (and a Content-Length body), answers, closes.
    fn serve(stream: std::net::TcpStream, counts: &Mutex<std::collections::BTreeMap<String, u32>>) {
        use std::io::{Read, Write};
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push(line);
        }
        // "GET /path HTTP/1.1\r\n" → "GET /path"
        let Some(request) = head
            .first()
            .and_then(|l| l.trim_end().rsplit_once(' '))
            .map(|(r, _)| r.to_string())
        else {
            return;
        };
        let length = head
            .iter()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        let _ = reader
            .by_ref()
            .take(length as u64)
            .read_to_end(&mut Vec::new());
        let n = {
            let mut counts = counts.lock().unwrap();
            let n = counts.entry(request).or_insert(0);
            *n += 1;
            *n
        };
        let status = if n <= 2 {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
    }

    fn count(&self, request: &str) -> u32 {
        self.seen.lock().unwrap().get(request).copied().unwrap_or(0)
    }
}

/// Retries as rendered into real Envoy: a GET is retried on 503 until it succeeds on the third
/// try; a POST, which may have taken effect before the 503, is sent once and its 503 returned.
#[test]
fn idempotent_requests_are_retried_and_posts_are_not() {
    let lake = FlakyUpstream::start();
    let up = Up::start_prepared(&["--memory"], |dir| {
        let gateway = dir.join("gateway.yaml");
        let text = std::fs::read_to_string(&gateway).unwrap();
        let services = format!("  services: {{lake: 127.0.0.1:{}}}\n", lake.port);
        std::fs::write(
            &gateway,
            text.replace(
                "  demoUpstreams: true\n",
                &format!("  demoUpstreams: true\n{services}"),
            ),
        )
        .unwrap();
    });
    let alice = bearer(up.dir.path(), "alice");
    let alice = [("authorization", alice.as_str())];
    let r = up.get("/lake/retried", &alice);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        lake.count("GET /lake/retried"),
        3,
        "two 503s retried, the third try answered: {:?}",
        lake.seen
    );
    let r = client::request(up.port, "POST", "/lake/not-retried", &alice, b"{}").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        lake.count("POST /lake/not-retried"),
        1,
        "a POST is not repeated after the upstream saw it"
    );
}

/// `openssl`, failing the test with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and a certificate for 127.0.0.1 named `cn`, signed by the test CA in `dir`.
fn issue(dir: &Path, cn: &str, key: &str, cert: &str) {
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-subj",
            &subject,
            "-out",
            "leaf.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            cert,
        ],
    );
}

/// The subject of the certificate the listener serves.
fn served_certificate(port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTPS request with curl, trusting only the test CA: the status, or the failure.
fn https_get(port: u16, ca: &Path, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .map_err(|e| e.to_string())?;
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && code == "200" {
        Ok(code)
    } else {
        Err(format!("{code} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// HTTPS on the listener; a certificate replaced on disk (moved into place, as a rotation
/// does) is served without a restart and without a failed request under a request loop.
#[test]
fn tls_listener_picks_up_a_rotated_certificate_without_a_failed_request() {
    let up = Up::start_prepared(&["--memory"], |dir| {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        openssl(
            &tls,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-subj",
                "/CN=nexus-test-ca",
                "-days",
                "2",
                "-out",
                "ca.pem",
            ],
        );
        issue(&tls, "nexus-v1", "key.pem", "cert.pem");
        let gateway = std::fs::read_to_string(dir.join("gateway.yaml")).unwrap();
        let gateway = gateway.replace(
            "  demoUpstreams: true\n",
            "  demoUpstreams: true\n  tls: {certFile: tls/cert.pem, keyFile: tls/key.pem, minVersion: TLSv1_2}\n",
        );
        std::fs::write(dir.join("gateway.yaml"), gateway).unwrap();
    });
    let tls = up.dir.path().join("tls");
    let ca = tls.join("ca.pem");
    assert_eq!(https_get(up.port, &ca, "/healthz"), Ok("200".to_string()));
    assert!(served_certificate(up.port).contains("nexus-v1"));
    // Plain HTTP is not served on a TLS listener.
    assert!(!client::get(up.port, "/healthz", &[]).is_ok_and(|r| r.status == 200));

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, ca, port) = (stop.clone(), ca.clone(), up.port);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(https_get(port, &ca, "/healthz"));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    issue(&tls, "nexus-v2", "key.new", "cert.new");
    std::fs::rename(tls.join("key.new"), tls.join("key.pem")).unwrap();
    std::fs::rename(tls.join("cert.new"), tls.join("cert.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served_certificate(up.port).contains("nexus-v2") {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = stop_loop(&stop, load, "rotation");
    assert!(seen.len() > 2, "{} requests", seen.len());
    eprintln!(
        "certificate rotation: {} HTTPS requests during it, 0 failed",
        seen.len()
    );
}

/// `Nexus is up: ... (Envoy admin http://127.0.0.1:NNNN, ...)`: the admin `host:port`.
fn envoy_admin(up: &Up) -> String {
    let banner = up.wait_for_output("Envoy admin http://", Duration::from_secs(5));
    let rest = banner.split("Envoy admin http://").nth(1).unwrap();
    rest.split(',').next().unwrap().to_string()
}

const RULES: &str = "charts/nexus/files/prometheus-rules.yaml";

#[test]
fn prometheus_scrapes_the_datapunk_metrics_after_a_known_request_mix() {
    use support::prometheus::{Job, Prometheus};
    // No warming: the catalog's fetches would count as data_operations cache results, and a
    // counter that does not start at 0 makes Prometheus' rate() extrapolate it differently.
    let up = Up::start_prepared(&["--memory"], |dir| {
        let routes = dir.join("routes.yaml");
        let text = std::fs::read_to_string(&routes).unwrap();
        let edited = text.replace(
            "cache: {ttl: 60s, warm: [/lake/catalog]}",
            "cache: {ttl: 60s}",
        );
        assert_ne!(text, edited, "the example's warm path moved");
        std::fs::write(routes, edited).unwrap();
    });
    let alice = bearer(up.dir.path(), "alice");
    let alice = [("authorization", alice.as_str())];
    let prom = Prometheus::start(
        &[
            Job {
                name: "nexus",
                target: format!("127.0.0.1:{}", up.http_port),
                path: "/metrics",
            },
            Job {
                name: "envoy",
                target: envoy_admin(&up),
                path: "/stats/prometheus",
            },
        ],
        &repo_root().join(RULES),
    );
    let within = Duration::from_secs(30);
    prom.wait_value(r#"count(up == 1)"#, |v| v == 2.0, within);
    let denied = r#"error_rate_total{category="data_operations",reason="auth_denied"}"#;
    prom.wait_value(denied, |v| v == 0.0, within);

    // The mix, 10 lake requests in two scraped halves (rate() needs a sample in between):
    // 3 without a token (401), then alice's reads: 2 hits, 5 misses.
    for _ in 0..3 {
        assert_eq!(up.get("/lake/tables", &[]).status, 401);
    }
    let cache_of = |path: &str| {
        let r = up.get(path, &alice);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.header("x-nexus-cache").unwrap_or_default().to_string()
    };
    assert_eq!(cache_of("/lake/datasets"), "miss");
    assert_eq!(cache_of("/lake/datasets"), "hit-local");
    // A scrape that holds all five of the first half: the 2xx series needs a sample here for
    // rate() to see it grow (waiting for the 401s alone once left it to the second scrape,
    // and histogram_quantile over rates of 0 is NaN).
    let lake = r#"category="data_operations",upstream="lake",rule="datapunk.lake""#;
    let count = format!(r#"sum(request_duration_seconds_count{{{lake}}})"#);
    prom.wait_value(&count, |v| v == 5.0, within);
    prom.wait_value(denied, |v| v == 3.0, within);
    assert_eq!(cache_of("/lake/tables"), "miss");
    assert_eq!(cache_of("/lake/tables"), "hit-local");
    for f in ["a", "b", "c"] {
        assert_eq!(cache_of(&format!("/lake/files/{f}")), "miss");
    }
    prom.wait_value(&count, |v| v == 10.0, within);

    // The Datapunk metrics as PromQL sees them.
    let p50 = prom
        .value(&format!(
            r#"histogram_quantile(0.5, sum by (le) (rate(request_duration_seconds_bucket{{{lake}}}[5m])))"#
        ))
        .expect("histogram_quantile over request_duration_seconds is a number");
    assert!(p50 > 0.0 && p50 <= 60.0, "{p50}");
    let by_status = prom.query(&format!(
        r#"sum by (method_class, status_class) (request_duration_seconds_count{{{lake}}})"#
    ));
    let of = |class: &str| {
        by_status
            .iter()
            .find(|s| s["metric"]["status_class"] == class && s["metric"]["method_class"] == "read")
            .map(|s| s["value"][1].as_str().unwrap().to_string())
    };
    assert_eq!(of("4xx").as_deref(), Some("3"), "{by_status:?}");
    assert_eq!(of("2xx").as_deref(), Some("7"), "{by_status:?}");
    let ratio = prom.wait_value(
        r#"cache_hit_ratio{category="data_operations"}"#,
        |v| (v - 2.0 / 7.0).abs() < 1e-9,
        within,
    );
    eprintln!("cache_hit_ratio {ratio}, p50 {p50} s");
    let hits = prom.value(r#"sum(cache_hits_total{category="data_operations"})"#);
    let misses = prom.value(r#"sum(cache_misses_total{category="data_operations"})"#);
    assert_eq!((hits, misses), (Some(2.0), Some(5.0)));
    let reasons = prom.query(r#"error_rate_total{category="data_operations"} > 0"#);
    assert_eq!(reasons.len(), 1, "only auth_denied: {reasons:?}");
    assert_eq!(reasons[0]["metric"]["reason"], "auth_denied");
    // Envoy's own counters, scraped from its admin endpoint: the refusals by reason through
    // the rendered tag extractors.
    prom.wait_value(
        r#"sum(nexus_auth_denied{reason="missing_credentials"})"#,
        |v| v == 3.0,
        within,
    );
    prom.wait_value(
        r#"sum(envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="nexus",envoy_response_code_class="4"})"#,
        |v| v >= 3.0,
        within,
    );
    // Health as gauges: Envoy's component is up.
    prom.wait_value(
        r#"nexus_component_up{component="envoy"}"#,
        |v| v == 1.0,
        within,
    );

    // Logs: the access log names the request id the upstream received as `correlation_id`,
    // in the JSON-log vocabulary; Envoy's own log lines are Nexus JSON lines.
    let r = up.get("/stream/events", &alice);
    let id = r.json().unwrap()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    let state_dir = state_dir(&up);
    let line = access_log_line(&state_dir, &id);
    assert_eq!(line["service"], "envoy", "{line}");
    assert_eq!(line["category"], "stream_processing", "{line}");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    let envoy_log = std::fs::read_to_string(state_dir.join("envoy.log")).unwrap();
    let lines: Vec<_> = envoy_log
        .lines()
        .map(|l| nexus_telemetry::parse_line(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(!lines.is_empty(), "Envoy logged nothing");
    assert!(lines.iter().all(|l| l["service"] == "envoy"), "{envoy_log}");
}

/// The access-log line of the request with `correlation_id`, once Envoy flushed it.
fn access_log_line(state_dir: &Path, correlation_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(state_dir.join("access.log")).unwrap_or_default();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["correlation_id"] == correlation_id);
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {correlation_id}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every line of every log in a `nexus up` run (its own, Envoy's, the access log) is one JSON
/// object with the required fields, and one request's correlation id is a field of the
/// router's line, auth's line and the access-log line for it (with the filters' debug lines
/// on, as `--filter-log-level debug` turns them on).
#[test]
fn every_log_line_is_json_and_one_request_is_followed_by_its_correlation_id() {
    let up = Up::start_with(&["--memory", "--filter-log-level", "debug"]);
    let alice = bearer(up.dir.path(), "alice");
    let r = up.get("/lake/tables", &[("authorization", alice.as_str())]);
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.json().unwrap()["headers"].clone();
    let id = echoed["x-request-id"].as_str().unwrap().to_string();
    let trace_id = echoed["traceparent"]
        .as_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_string();
    let denied = up.get("/lake/tables", &[]);
    assert_eq!(denied.status, 401);

    let state_dir = state_dir(&up);
    let access = access_log_line(&state_dir, &id);
    assert_eq!(access["status"], 200, "{access}");
    let access_log = std::fs::read_to_string(state_dir.join("access.log")).unwrap();
    for line in access_log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["timestamp", "service", "correlation_id", "trace_id"] {
            assert!(v.get(field).is_some(), "no {field} in {line}");
        }
    }

    // Envoy's log: the filters' lines for the request, with its ids as fields.
    let envoy_log = std::fs::read_to_string(state_dir.join("envoy.log")).unwrap();
    let lines: Vec<serde_json::Value> = envoy_log
        .lines()
        .map(|l| nexus_telemetry::parse_line(l).unwrap_or_else(|e| panic!("{e}")))
        .map(serde_json::Value::Object)
        .collect();
    let of_request = |filter: &str| {
        lines
            .iter()
            .find(|l| l["filter"] == filter && l["correlation_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {filter} line for {id} in\n{envoy_log}"))
    };
    let routed = of_request("nexus.router");
    assert_eq!(routed["message"], "routed", "{routed}");
    assert_eq!(routed["trace_id"], trace_id.as_str(), "{routed}");
    assert_eq!(routed["category"], "data_operations", "{routed}");
    assert_eq!(routed["level"], "debug", "{routed}");
    let allowed = of_request("nexus.auth");
    assert_eq!(allowed["message"], "allowed", "{allowed}");
    assert_eq!(allowed["trace_id"], trace_id.as_str(), "{allowed}");
    assert_eq!(allowed["client_id"], "alice", "{allowed}");
    // The refused request has its own line, with its own id.
    assert!(
        lines.iter().any(|l| l["filter"] == "nexus.auth"
            && l["message"] == "denied"
            && l["reason"] == "nexus_missing_credentials"
            && l["correlation_id"] != id.as_str()),
        "{envoy_log}"
    );

    // nexus up's own log.
    let log = up.log.lock().unwrap().clone();
    assert!(!log.is_empty());
    for line in &log {
        nexus_telemetry::parse_line(line).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `Envoy config and logs (envoy.log, access.log): DIR`: where `nexus up` keeps them.
fn state_dir(up: &Up) -> PathBuf {
    let banner = up.wait_for_output("Envoy config and logs", Duration::from_secs(5));
    PathBuf::from(banner.rsplit(": ").next().unwrap().trim())
}

#[test]
fn promtool_accepts_the_chart_rules_and_prometheus_parses_every_dashboard_query() {
    use support::prometheus::Prometheus;
    let promtool = nexus_toolenv::prometheus::promtool().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo_root().join(RULES))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 9 rules found"), "{text}");

    let prom = Prometheus::start(&[], &repo_root().join(RULES));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/nexus/files/grafana-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 11, "{exprs:?}");
    for expr in &exprs {
        let answer = prom.query_raw(expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
    // The check can fail: a broken query is refused with a parse error.
    let broken = prom.query_raw("sum by (category (rate(error_rate_total[5m]))");
    assert_eq!(broken["errorType"], "bad_data", "{broken}");
}

/// With `--amqp-url`, a `cache.invalidate` command on `service.commands` makes real Envoy's
/// next request a miss, and an edit `nexus up` refuses is announced on `service.events` as
/// `nexus.route.rejected.<namespace>.<name>` with its reason, as the controller announces a
/// route it does not accept.
#[test]
fn commands_and_refusals_travel_on_the_event_bus() {
    let deployment = format!("standalone-test-{}", std::process::id());
    let up = Up::start_with(&[
        "--memory",
        "--amqp-url",
        support::bus::AMQP,
        "--deployment",
        &deployment,
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let alice = bearer(up.dir.path(), "alice");
    let alice = [("authorization", alice.as_str())];
    up.get("/lake/datasets", &alice);
    let cached = up.get("/lake/datasets", &alice);
    assert_eq!(
        cached.header("x-nexus-cache"),
        Some("hit-local"),
        "{:?}",
        cached.headers
    );
    // The command queue may still be binding right after start: send again until it lands.
    let deadline = Instant::now() + Duration::from_secs(30);
    'invalidated: loop {
        let prefixes = serde_json::json!({ "prefixes": ["/lake/datasets"] });
        runtime.block_on(support::bus::send_command("cache.invalidate", prefixes));
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let r = up.get("/lake/datasets", &alice);
            if r.header("x-nexus-cache") != Some("hit-local") {
                assert_eq!(r.header("x-nexus-cache"), Some("miss"), "{:?}", r.headers);
                break 'invalidated;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            Instant::now() < deadline,
            "the command never reached Envoy's cache"
        );
    }
    let heard = runtime.block_on(support::bus::listen(
        "nexus.route.rejected.default.datapunk",
        "nexus.route.rejected",
        Duration::from_secs(60),
    ));
    up.edit("routes.yaml", |t| {
        t.replace("category: stream_processing", "category: streaming")
    });
    up.wait_for_output("NOT applied", Duration::from_secs(20));
    let heard = runtime.block_on(heard).unwrap();
    let rejected = heard.last().unwrap();
    assert_eq!(rejected["data"]["namespace"], "default", "{rejected}");
    assert_eq!(rejected["data"]["name"], "datapunk", "{rejected}");
    assert_eq!(rejected["data"]["reason"], "InvalidSpec", "{rejected}");
}

/// The example's portal, signed in by a real browser (headless Chromium over WebDriver) at a
/// real, certified OpenID provider (npm `oidc-provider`, standing in for Google), through
/// Envoy: page → provider login → consent → back with a session cookie → page served with the
/// identity → logout → the old session refused → the provider asked again.
#[test]
fn a_browser_signs_in_at_an_openid_provider_and_out_again() {
    use nexus_tests::browser::{Browser, OidcProvider};
    let provider_port = free_port();
    let issuer = format!("http://127.0.0.1:{provider_port}");
    let up = Up::start_prepared(&["--memory"], |dir| {
        let p = dir.join("routes.yaml");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("http://127.0.0.1:9400", &issuer)).unwrap();
    });
    // The callback is on the listener this run was given.
    let callback = format!("http://127.0.0.1:{}/_nexus/callback", up.port);
    up.edit("routes.yaml", |t| {
        t.replace("http://127.0.0.1:8080/_nexus/callback", &callback)
    });
    let provider = OidcProvider::start(
        provider_port,
        "datapunk-portal",
        "datapunk-portal-dev-secret",
        &callback,
    )
    .unwrap();
    let html = [("accept", "text/html")];
    let encoded = callback.replace(':', "%3A").replace('/', "%2F");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = up.get("/_nexus/sign-in?rd=/portal/home", &html);
        if r.status == 302 && r.header("location").is_some_and(|l| l.contains(&encoded)) {
            assert!(r
                .header("location")
                .unwrap()
                .starts_with(&format!("{issuer}/auth?")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sign-in never used {callback}: {} {:?}",
            r.status,
            r.headers
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An API client without a session is refused with JSON, not redirected.
    let r = up.get("/portal/home", &[("accept", "application/json")]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "missing_credentials");

    let browser = Browser::start().unwrap();
    let page = format!("http://127.0.0.1:{}/portal/home", up.port);
    browser.goto(&page).unwrap();
    // The provider's own login page (the library's development interactions).
    let login = browser
        .find("input[name=login]", Duration::from_secs(15))
        .unwrap();
    assert!(
        browser.url().unwrap().starts_with(&issuer),
        "{}",
        browser.url().unwrap()
    );
    browser.type_into(&login, "alice").unwrap();
    let password = browser
        .find("input[name=password]", Duration::from_secs(5))
        .unwrap();
    browser.type_into(&password, "any password").unwrap();
    let submit = browser
        .find("button[type=submit]", Duration::from_secs(5))
        .unwrap();
    browser.click(&submit).unwrap();
    // Consent, then back to the page with a session.
    browser
        .wait_url(
            |u| u.starts_with(&issuer) && u.contains("/interaction/"),
            Duration::from_secs(15),
        )
        .unwrap();
    let consent = browser
        .find("button[type=submit]", Duration::from_secs(15))
        .unwrap();
    browser.click(&consent).unwrap();
    browser
        .wait_url(|u| u == page, Duration::from_secs(15))
        .unwrap();
    let echo: serde_json::Value = serde_json::from_str(&browser.text().unwrap()).unwrap();
    assert_eq!(echo["service"], "portal", "{echo}");
    assert_eq!(
        echo["headers"]["x-nexus-client-id"], "alice@example.com",
        "{echo}"
    );
    assert_eq!(echo["headers"]["x-nexus-auth-method"], "session", "{echo}");
    assert_eq!(
        echo["headers"]["x-nexus-email"], "alice@example.com",
        "{echo}"
    );
    assert_eq!(echo["headers"]["x-nexus-name"], "alice", "{echo}");
    let session = browser
        .cookies()
        .unwrap()
        .into_iter()
        .find(|(name, _, _)| name == "nexus-session")
        .expect("no nexus-session cookie");
    assert!(session.2, "the session cookie is not HttpOnly");
    assert_eq!(provider.authorizations(), 1);
    // The same cookie works for any client, and the upstream never sees it as a credential
    // it must trust: the identity headers come from the session.
    let cookie = format!("nexus-session={}", session.1);
    let r = up.get(
        "/portal/home",
        &[
            ("cookie", &cookie),
            ("x-nexus-email", "mallory@example.com"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["headers"]["x-nexus-email"],
        "alice@example.com"
    );

    // Logout ends the session everywhere and clears the cookie.
    browser
        .goto(&format!("http://127.0.0.1:{}/_nexus/logout", up.port))
        .unwrap();
    assert!(
        !browser
            .cookies()
            .unwrap()
            .iter()
            .any(|(n, _, _)| n == "nexus-session"),
        "the cookie survived logout"
    );
    let r = up.get(
        "/portal/home",
        &[("cookie", &cookie), ("accept", "application/json")],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "invalid_session");
    // The page sends the browser to the provider again; it remembers alice, so she is back
    // at once with a new session.
    browser.goto(&page).unwrap();
    browser
        .wait_url(|u| u == page, Duration::from_secs(15))
        .unwrap();
    assert_eq!(provider.authorizations(), 2);
    let again = browser
        .cookies()
        .unwrap()
        .into_iter()
        .find(|(name, _, _)| name == "nexus-session")
        .expect("no new session cookie");
    assert_ne!(again.1, session.1, "the revoked session came back");
}

const SESSIONS_TOKEN: &str = "standalone-test-sessions-token";

/// A counter of the Envoy `nexus up` runs (a filter's `wasmcustom.<name>`), summed over workers.
fn envoy_counter(up: &Up, name: &str) -> u64 {
    let admin = envoy_admin(up);
    let port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let (_, stats) = http_get(port, &format!("/stats?filter=^wasmcustom\\.{name}$"));
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("wasmcustom.{name}: ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits until Envoy's counter `name` is at least `at_least` (counts, not time: the deadline
/// only stops a broken test).
fn wait_counter(up: &Up, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while envoy_counter(up, name) < at_least {
        assert!(
            Instant::now() < deadline,
            "Envoy's {name} never reached {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nexus up` on the bus as `deployment`, with a session-only rule (`/portal/`) and cortex
/// limited to 2 requests per hour per client (so only a reset can let a client in again).
fn up_on_the_bus(deployment: &str, amqp: &str, extra: &[&str]) -> Up {
    let mut args = vec!["--memory", "--amqp-url", amqp, "--deployment", deployment];
    args.extend_from_slice(extra);
    Up::start_prepared(&args, |dir| {
        let routes = dir.join("routes.yaml");
        let text = std::fs::read_to_string(&routes).unwrap();
        let limited = "{by: Client, requests: 5, per: Minute}";
        assert!(text.contains(limited));
        let mut text = text.replace(limited, "{by: Client, requests: 2, per: Hour}");
        // Sessions and a session-only `portal` rule, unless the example has them already.
        if !text.contains("\n    sessions:") {
            text = text.replace(
                "    defaultRequirement:",
                "    sessions: {}\n    defaultRequirement:",
            );
        }
        if !text.contains("- name: portal\n    match:") {
            text += "  - name: portal\n    match: {path: {prefix: /portal/}}\n    category: data_operations\n    auth: {session: {}}\n";
        }
        std::fs::write(&routes, text).unwrap();
    })
}

/// `session.revoke` and `ratelimit.reset` on `service.commands` change what real Envoy does:
/// a revoked session's next request is refused (the auth filter's session table heard the
/// revocation), and a client the proxy itself was refusing from its over-limit cache is
/// allowed again at once, though its window has most of an hour to run.
#[test]
fn session_revoke_and_ratelimit_reset_change_what_real_envoy_does() {
    let deployment = format!("standalone-commands-{}", std::process::id());
    let interval = ["--events-over-limit-interval-ms", "200"];
    let up = up_on_the_bus(&deployment, support::bus::AMQP, &interval);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // A session, confirmed by the sessions service and then served from the proxy's table.
    let admin = format!("Bearer {SESSIONS_TOKEN}");
    let created = client::request(
        up.http_port,
        "POST",
        "/sessions/v1/sessions",
        &[
            ("authorization", &admin),
            ("content-type", "application/json"),
        ],
        br#"{"client_id": "carol@example.com"}"#,
    )
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json().unwrap()["id"].as_str().unwrap().to_string();
    let cookie = format!("nexus-session={id}");
    let with_session = [("cookie", cookie.as_str())];
    for _ in 0..2 {
        let r = up.get("/portal/home", &with_session);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json().unwrap()["headers"]["x-nexus-client-id"],
            "carol@example.com"
        );
    }
    let answer = runtime.block_on(support::bus::command(
        &deployment,
        "session.revoke",
        serde_json::json!({ "session": id }),
    ));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["result"]["revoked"], true, "{answer}");
    wait_counter(&up, "nexus_auth.session.revoked", 1);
    let refused = up.get("/portal/home", &with_session);
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.json().unwrap()["error"], "invalid_session");

    // Alice's two requests an hour, then 429s: the service's, then the proxy's own.
    let alice = bearer(up.dir.path(), "alice");
    let alice = [("authorization", alice.as_str())];
    let first = up.get("/cortex/v1/models", &alice);
    assert_eq!(first.status, 200, "{}", first.text());
    let echoed = first.json().unwrap();
    let client_id = echoed["headers"]["x-nexus-client-id"].as_str().unwrap();
    // The rule's full name (`<route>.<rule>`), as descriptors, resets and summaries name it.
    let rule = echoed["headers"]["x-nexus-rule"].as_str().unwrap();
    assert!(rule.ends_with(".cortex"), "{rule}");
    let summaries = runtime.block_on(support::bus::record("nexus.ratelimit.over_limit.#"));
    assert_eq!(up.get("/cortex/v1/models", &alice).status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    while envoy_counter(&up, "nexus_ratelimit.over_limit_local") == 0 {
        assert_eq!(up.get("/cortex/v1/models", &alice).status, 429);
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "the proxy never refused alice itself"
        );
    }
    // The refusals the service made (not those the proxy made from its over-limit cache)
    // arrive as summaries from this deployment, counted per rule and client.
    let by_service = refused - envoy_counter(&up, "nexus_ratelimit.over_limit_local");
    assert!(by_service >= 1);
    let ours = format!("nexus://{deployment}/");
    let summed = || -> u64 {
        let heard = summaries.lock().unwrap();
        heard
            .iter()
            .filter(|e| e["source"].as_str().is_some_and(|s| s.starts_with(&ours)))
            .filter(|e| e["data"]["rule"] == rule && e["data"]["client"] == client_id)
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .sum()
    };
    while summed() < by_service {
        assert!(
            Instant::now() < deadline,
            "summaries: {:?}",
            summaries.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(summed(), by_service);
    let answer = runtime.block_on(support::bus::command(
        &deployment,
        "ratelimit.reset",
        serde_json::json!({ "client": client_id, "rule": rule }),
    ));
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        answer["result"]["deleted"].as_u64().unwrap() >= 1,
        "{answer}"
    );
    assert_eq!(answer["result"]["proxies_told"], true, "{answer}");
    wait_counter(&up, "nexus_ratelimit.over_limit_forgotten", 1);
    let again = up.get("/cortex/v1/models", &alice);
    assert_eq!(again.status, 200, "alice was reset: {}", again.text());
}

/// A metric's value in `nexus up`'s `/metrics` (0 when absent).
fn nexus_metric(up: &Up, name: &str) -> u64 {
    let (_, text) = http_get(up.http_port, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// With RabbitMQ unreachable (nothing listens on its port) Envoy serves every request as it
/// would with the bus up: nothing on a request's path waits on the bus. What Nexus publishes
/// meanwhile (the configuration it applied, the routes it programmed, the summary of the
/// refusals below) waits in the outbox, counted, and nothing is published or dropped.
#[test]
fn with_rabbitmq_unreachable_envoy_serves_every_request_and_events_wait_in_the_outbox() {
    let deployment = format!("standalone-bus-down-{}", std::process::id());
    let nothing = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let fast = [
        "--events-over-limit-interval-ms",
        "200",
        "--health-interval-ms",
        "200",
    ];
    let up = up_on_the_bus(&deployment, &nothing, &fast);
    let alice = bearer(up.dir.path(), "alice");
    let alice = [("authorization", alice.as_str())];
    for i in 0..100 {
        let r = up.get(&format!("/lake/datasets/{}", i % 10), &alice);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let cortex: Vec<u16> = (0..10)
        .map(|_| up.get("/cortex/v1/models", &alice).status)
        .collect();
    assert_eq!(cortex, [200, 200, 429, 429, 429, 429, 429, 429, 429, 429]);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = readiness(&up);
        let rabbitmq = &health["components"]["rabbitmq"];
        if rabbitmq["status"] == "down" {
            assert!(
                !rabbitmq["last_error"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{health}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rabbitmq never reported down: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // config.applied, route.programmed, then the refusals' summary: at least three events,
    // every one of them in the outbox.
    loop {
        let enqueued = nexus_metric(&up, "nexus_events_enqueued_total");
        let in_outbox = nexus_metric(&up, "nexus_events_outbox_depth");
        if enqueued >= 3 && in_outbox == enqueued {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{in_outbox} of {enqueued} events in the outbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(nexus_metric(&up, "nexus_events_published_total"), 0);
    assert_eq!(nexus_metric(&up, "nexus_events_overflow_total"), 0);
}
