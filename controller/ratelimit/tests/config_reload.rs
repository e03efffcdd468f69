//! `--config-dir` is followed while the service runs: a changed, added or removed file takes
//! effect without a restart; a file that does not load is refused with its name and JSON path,
//! reported once, and the last configuration that loaded keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nexus_proto::ratelimit::rate_limit_service_client::RateLimitServiceClient;
use nexus_ratelimit_service::config_dir::{ConfigDir, Reload};
use nexus_ratelimit_service::Limits;
use tonic::transport::Channel;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_nexus-ratelimit");

/// One domain limiting key `k` to `per_minute`.
fn domain(name: &str, per_minute: u32) -> String {
    format!(
        "domain: {name}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: {per_minute}}}\n"
    )
}

/// A limit with a unit envoyproxy/ratelimit does not know.
const BAD: &str = "domain: gamma\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n";

/// Writes `name` by moving a finished file into place, as tools and ConfigMap volumes do.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn limit_of(limits: &Limits, domain: &str) -> Option<u32> {
    Some(limits.resolve(domain, &[("k", "x")])?.requests_per_unit)
}

fn loaded(reload: Reload) -> Limits {
    match reload {
        Reload::Loaded(limits) => limits,
        Reload::Unchanged => panic!("the change was not seen"),
        Reload::Refused(why) => panic!("refused: {why}"),
    }
}

#[test]
fn each_change_loads_and_a_bad_directory_is_refused_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("limits");
    std::fs::create_dir(&dir).unwrap();
    put(&dir, "a.yaml", &domain("alpha", 1));
    let (mut watched, first) = ConfigDir::open(dir.clone(), false).unwrap();
    assert_eq!(limit_of(&first, "alpha"), Some(1));
    assert!(matches!(watched.check(), Reload::Unchanged));

    put(&dir, "a.yaml", &domain("alpha", 5));
    assert_eq!(limit_of(&loaded(watched.check()), "alpha"), Some(5));
    put(&dir, "b.yml", &domain("beta", 2));
    let both = loaded(watched.check());
    assert_eq!(both.domains().collect::<Vec<_>>(), ["alpha", "beta"]);

    put(&dir, "c.yaml", BAD);
    let Reload::Refused(why) = watched.check() else {
        panic!("a bad file must be refused")
    };
    let c = dir.join("c.yaml").display().to_string();
    assert!(why.starts_with(&format!("{c}: ")), "{why}");
    assert!(why.contains("$.descriptors[0].rate_limit.unit"), "{why}");
    assert!(why.contains("fortnight"), "{why}");
    assert!(
        matches!(watched.check(), Reload::Unchanged),
        "reported once"
    );

    std::fs::remove_file(dir.join("c.yaml")).unwrap();
    std::fs::remove_file(dir.join("b.yml")).unwrap();
    let after = loaded(watched.check());
    assert_eq!(after.domains().collect::<Vec<_>>(), ["alpha"]);

    std::fs::remove_dir_all(&dir).unwrap();
    let Reload::Refused(why) = watched.check() else {
        panic!("a vanished directory must be refused")
    };
    assert!(why.contains("limits"), "{why}");
    assert!(matches!(watched.check(), Reload::Unchanged));
}

/// The service binary on `dir`, reading it every 50 ms; its log lines come on the receiver.
fn start(dir: &Path, port: u16) -> (Child, Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("--config-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--unknown-domain", "error", "--config-poll-ms", "50"])
        .env_remove("REDIS_URL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = nexus_telemetry::lines_of(child.stderr.take().unwrap());
    (child, lines)
}

/// `current_limit.requests_per_unit` the service answers for `domain`, or `None` when it
/// refuses the call (an unknown domain, with `--unknown-domain error`).
async fn served(client: &mut RateLimitServiceClient<Channel>, domain: &str) -> Option<u32> {
    let answer = client
        .should_rate_limit(support::request(domain, &[&[("k", "x")]]))
        .await
        .ok()?
        .into_inner();
    Some(answer.statuses[0].current_limit.as_ref()?.requests_per_unit)
}

/// Asks until the service answers `want` for `domain` (a reload is seen within a poll
/// interval; 20 s leaves room for a loaded machine).
async fn until_served(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    want: Option<u32>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = served(client, domain).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{domain}: still {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next log line at `level` (each line checked as one JSON object).
fn next_line_at(
    lines: &Receiver<String>,
    level: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {level} line logged"));
        let line = nexus_telemetry::parse_line(&line).unwrap();
        if line["level"] == level {
            return line;
        }
    }
}

#[tokio::test]
async fn the_service_serves_each_reload_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "a.yaml", &domain("alpha", 1));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut child, lines) = start(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "service not up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(served(&mut client, "alpha").await, Some(1));

    put(dir.path(), "a.yaml", &domain("alpha", 7));
    put(dir.path(), "b.yaml", &domain("beta", 3));
    until_served(&mut client, "alpha", Some(7)).await;
    until_served(&mut client, "beta", Some(3)).await;

    put(dir.path(), "c.yaml", BAD);
    let refused = next_line_at(&lines, "error");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("c.yaml: "), "{refused:?}");
    assert!(
        error.contains("$.descriptors[0].rate_limit.unit"),
        "{refused:?}"
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("last configuration that loaded keeps serving"),
        "{refused:?}"
    );
    assert_eq!(served(&mut client, "alpha").await, Some(7));
    assert_eq!(served(&mut client, "beta").await, Some(3));

    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    until_served(&mut client, "beta", None).await;
    assert_eq!(served(&mut client, "alpha").await, Some(7));
    let _ = child.kill();
    let _ = child.wait();
}
