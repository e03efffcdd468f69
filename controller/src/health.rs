//! Health checks on the Datapunk design's schedule: each component and dependency is checked
//! every 5 s with a 3 s timeout, and flips to `down` only after 3 failures in a row, so one
//! slow answer does not flap readiness. The first result counts at once (a process does not
//! wait 15 s to say what it found), and one success brings a component back. Each component
//! reports when it was last checked and its last error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::server::{Component, State};

/// When and how hard to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row that make an `ok` component `down`.
    pub threshold: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            threshold: 3,
        }
    }
}

/// One check's answer: `Ok(detail)` or `Err(what went wrong)`.
pub type CheckResult = Result<String, String>;
type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// A named check of one component.
pub struct Check {
    pub name: &'static str,
    /// A required component that is down fails `/health/ready`.
    pub required: bool,
    run: Box<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl Check {
    pub fn new<F, Fut>(name: &'static str, required: bool, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        Self {
            name,
            required,
            run: Box::new(move || Box::pin(run())),
        }
    }
}

/// The state machine behind one component: what it reports after each result.
#[derive(Debug, Default)]
pub struct Tracker {
    /// None until the first result.
    up: Option<bool>,
    failures_in_a_row: u32,
    last_error: Option<String>,
    last_detail: String,
}

impl Tracker {
    /// Records one result at `now` (RFC 3339) and returns the component to report.
    pub fn record(&mut self, result: CheckResult, threshold: u32, now: String) -> Component {
        match result {
            Ok(detail) => {
                self.up = Some(true);
                self.failures_in_a_row = 0;
                self.last_detail = detail;
            }
            Err(error) => {
                self.failures_in_a_row += 1;
                let first = self.up.is_none();
                if first || self.failures_in_a_row >= threshold.max(1) {
                    self.up = Some(false);
                }
                self.last_error = Some(error);
            }
        }
        let detail = match (self.up, &self.last_error) {
            (Some(false), Some(e)) => e.clone(),
            _ => self.last_detail.clone(),
        };
        let mut c = if self.up == Some(false) {
            Component::down(detail)
        } else {
            Component::ok(detail)
        };
        c.last_check = Some(now);
        c.last_error.clone_from(&self.last_error);
        c.failures_in_a_row = Some(self.failures_in_a_row);
        c
    }
}

/// Runs every check on `schedule` until the process ends, writing each into `state`.
pub fn spawn(state: Arc<State>, checks: Vec<Check>, schedule: Schedule) {
    for check in checks {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tracker = Tracker::default();
            loop {
                let result = match tokio::time::timeout(schedule.timeout, (check.run)()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {:?}", schedule.timeout)),
                };
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let mut c = tracker.record(result, schedule.threshold, now);
                if !check.required {
                    c = c.optional();
                }
                state.set_component(check.name, c);
                tokio::time::sleep(schedule.interval).await;
            }
        });
    }
}

/// Redis behind the rate-limit service, by PING; None when its counters are in memory.
pub fn redis(
    limiter: &nexus_ratelimit_service::server::SharedLimiter,
    required: bool,
) -> Option<Check> {
    if matches!(
        limiter,
        nexus_ratelimit_service::server::SharedLimiter::Memory(_)
    ) {
        return None;
    }
    let limiter = limiter.clone();
    Some(Check::new("redis", required, move || {
        let limiter = limiter.clone();
        async move {
            match limiter.ping().await {
                Some(Ok(())) => Ok(limiter.describe()),
                Some(Err(e)) => Err(format!("{}: {e}", limiter.describe())),
                None => Ok("counters in memory".to_string()),
            }
        }
    }))
}

/// RabbitMQ, as the event publisher and command consumer see their connections; the detail
/// counts what was published, waits in the outbox, overflowed, and what commands did.
pub fn rabbitmq(stats: Arc<nexus_events::Stats>, required: bool) -> Check {
    Check::new("rabbitmq", required, move || {
        let stats = stats.clone();
        async move { stats.health() }
    })
}

/// An HTTP server on loopback answering `GET path` with 200 (Envoy's admin `/ready`).
pub fn http_ok(name: &'static str, addr: std::net::SocketAddr, path: &'static str) -> Check {
    Check::new(name, true, move || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        let status = text.lines().next().unwrap_or_default().to_string();
        if status.split_whitespace().nth(1) == Some("200") {
            Ok(format!("http://{addr}{path}: {status}"))
        } else {
            Err(format!("http://{addr}{path}: {status}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Status;

    fn record(t: &mut Tracker, r: CheckResult) -> Component {
        t.record(r, 3, "2026-12-07T00:00:00Z".to_string())
    }

    #[test]
    fn flips_down_after_three_failures_in_a_row_and_back_on_one_success() {
        let mut t = Tracker::default();
        assert_eq!(record(&mut t, Ok("up".into())).status, Status::Ok);
        let c = record(&mut t, Err("refused".into()));
        assert_eq!((c.status, c.failures_in_a_row), (Status::Ok, Some(1)));
        assert_eq!(c.last_error.as_deref(), Some("refused"));
        assert_eq!(record(&mut t, Err("refused".into())).status, Status::Ok);
        let c = record(&mut t, Err("timed out".into()));
        assert_eq!(c.status, Status::Down);
        assert_eq!(c.detail.as_deref(), Some("timed out"));
        let c = record(&mut t, Ok("up again".into()));
        assert_eq!((c.status, c.failures_in_a_row), (Status::Ok, Some(0)));
        assert_eq!(c.detail.as_deref(), Some("up again"));
        // The last error stays visible after recovery.
        assert_eq!(c.last_error.as_deref(), Some("timed out"));
        assert_eq!(c.last_check.as_deref(), Some("2026-12-07T00:00:00Z"));
    }

    #[test]
    fn a_success_between_failures_restarts_the_count() {
        let mut t = Tracker::default();
        record(&mut t, Ok("up".into()));
        record(&mut t, Err("x".into()));
        record(&mut t, Err("x".into()));
        record(&mut t, Ok("up".into()));
        record(&mut t, Err("x".into()));
        assert_eq!(record(&mut t, Err("x".into())).status, Status::Ok);
    }

    #[test]
    fn the_first_result_counts_at_once() {
        let mut t = Tracker::default();
        assert_eq!(record(&mut t, Err("refused".into())).status, Status::Down);
    }
}
