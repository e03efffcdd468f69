//! Every line `nexus-ratelimit` logs is one JSON object in `nexus_telemetry`'s format: with a
//! value that carries quotes (a domain named `we"ird`, which hand-written JSON broke on), and
//! for a fatal error.

use std::process::{Command, Stdio};
use std::time::Duration;

use nexus_telemetry::{parse_line, read_lines};

const BIN: &str = env!("CARGO_BIN_EXE_nexus-ratelimit");

#[test]
fn startup_line_with_quotes_is_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("limits.yaml"),
        "domain: 'we\"ird'\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines(
        child.stderr.take().unwrap(),
        |l| !l.is_empty(),
        Duration::from_secs(20),
    );
    let _ = child.kill();
    let _ = child.wait();
    let first = lines.first().expect("nexus-ratelimit logged nothing");
    let line = parse_line(first).unwrap();
    assert_eq!(line["service"], "nexus-ratelimit");
    assert_eq!(line["level"], "info");
    let message = line["message"].as_str().unwrap();
    assert!(message.contains(r#"we\"ird"#), "{message}");
}

#[test]
fn a_fatal_error_is_a_json_line_and_a_failed_exit() {
    let out = Command::new(BIN)
        .args(["--config-dir", "/nonexistent/nexus-limits"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().map(|l| parse_line(l).unwrap()).collect();
    let last = lines.last().expect("no error line");
    assert_eq!(last["level"], "error");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/nexus-limits"),
        "{last:?}"
    );
}
