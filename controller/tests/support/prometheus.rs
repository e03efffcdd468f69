//! A private Prometheus (Debian's package, `nexus_toolenv::prometheus`) scraping given targets
//! every second with the chart's rules loaded; queried through its HTTP API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A scrape job: name, `host:port`, metrics path.
pub struct Job<'a> {
    pub name: &'a str,
    pub target: String,
    pub path: &'a str,
}

/// Stopped (and its data dir removed) on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping and evaluating `rules` every second;
    /// returns once `/-/ready` answers.
    pub fn start(jobs: &[Job], rules: &Path) -> Prometheus {
        let bin = nexus_toolenv::prometheus::server().unwrap_or_else(|e| panic!("{e:#}"));
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{:?}]\nscrape_configs:\n",
            rules.display().to_string()
        );
        for j in jobs {
            config.push_str(&format!(
                "- job_name: {}\n  metrics_path: {}\n  static_configs: [{{targets: [{:?}]}}]\n",
                j.name, j.path, j.target
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while nexus_tests::client::get(port, "/-/ready", &[]).map_or(true, |r| r.status != 200) {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query`'s whole answer (`status` `success` or `error` with `error`).
    pub fn query_raw(&self, expr: &str) -> Value {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let r = nexus_tests::client::get(self.port, &path, &[]).unwrap();
        r.json()
            .unwrap_or_else(|_| panic!("{expr}: {} {}", r.status, r.text()))
    }

    /// The result vector of `expr`; a query error fails the test.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let v = self.query_raw(expr);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of `expr` (None: no series, or NaN).
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        assert!(
            result.len() <= 1,
            "{expr}: more than one series: {result:?}"
        );
        let v: f64 = result.first()?["value"][1].as_str()?.parse().ok()?;
        (!v.is_nan()).then_some(v)
    }

    /// Polls `expr` until its single value satisfies `want` (scrapes and rule evaluations
    /// happen every second); fails naming the last value.
    pub fn wait_value(&self, expr: &str, want: impl Fn(f64) -> bool, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let v = self.value(expr);
            if let Some(v) = v.filter(|v| want(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} stayed {v:?} for {within:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
