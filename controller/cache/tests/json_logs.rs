//! Every line `nexus-cache` logs is one JSON object in `nexus_telemetry`'s format: its startup
//! (said once its listener is bound), a Redis it cannot reach, and a fatal error.

use std::process::{Command, Stdio};
use std::time::Duration;

use nexus_telemetry::{parse_line, read_lines};

const BIN: &str = env!("CARGO_BIN_EXE_nexus-cache");

#[test]
fn startup_and_redis_warnings_are_json_lines() {
    // Port 1 on loopback: nothing listens, so the pub/sub follower warns.
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1/0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines(
        child.stderr.take().unwrap(),
        |l| {
            l.iter().any(|l| l.contains("\"warn\"")) && l.iter().any(|l| l.contains("listening on"))
        },
        Duration::from_secs(20),
    );
    let _ = child.kill();
    let _ = child.wait();
    let parsed: Vec<_> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
    assert!(
        parsed.iter().any(|l| l["level"] == "info"
            && l["message"]
                .as_str()
                .unwrap()
                .starts_with("listening on 127.0.0.1:")),
        "{lines:?}"
    );
    assert!(parsed.iter().any(|l| l["level"] == "warn"), "{lines:?}");
    assert!(
        parsed.iter().all(|l| l["service"] == "nexus-cache"),
        "{lines:?}"
    );
}

#[test]
fn a_fatal_error_is_a_json_line_and_a_failed_exit() {
    let out = Command::new(BIN)
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().map(|l| parse_line(l).unwrap()).collect();
    assert_eq!(lines.last().expect("no error line")["level"], "error");
}
