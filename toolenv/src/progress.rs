//! Progress lines for slow steps: numbered, timed, and a heartbeat while a long command runs,
//! so a cold setup (minutes) never looks like a hang.

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often a long command reports that it is still running.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// One numbered step of a setup: `toolenv [2/4] envoy: ...`.
pub struct Step {
    prefix: String,
    started: Instant,
}

impl Step {
    pub fn new(index: usize, total: usize, name: &str) -> Self {
        Self {
            prefix: format!("toolenv [{index}/{total}] {name}"),
            started: Instant::now(),
        }
    }

    pub fn say(&self, message: &str) {
        eprintln!("{}: {message}", self.prefix);
    }

    pub fn done(&self) {
        self.say(&format!(
            "done in {:.1} s",
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// Runs `cmd`, printing `still <doing> (Ns)` every 30 s until it exits; its output goes
    /// where `cmd` sends it.
    pub fn run_with_heartbeat(&self, cmd: &mut Command, doing: &str) -> Result<ExitStatus> {
        let shown = format!("{cmd:?}");
        let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
        let started = Instant::now();
        let mut next = HEARTBEAT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() >= next {
                self.say(&format!(
                    "still {doing} ({} s)",
                    started.elapsed().as_secs()
                ));
                next += HEARTBEAT;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
