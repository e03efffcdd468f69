//! RabbitMQ for tests and benches: the machine's at its standard loopback port (127.0.0.1:5672),
//! started for the run when nothing answers there ([`ensure_running`]), and private nodes on
//! free ports, in a temporary directory, that a fault test may stop (SIGKILL, like a crash)
//! and start again with their data ([`PrivateNode`]): the shared one is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ports::free_port;

/// Debian's server script; run directly (not through the `/usr/sbin` wrapper, which `su`s to
/// the rabbitmq user and reads the shared node's configuration).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub const PORT: u16 = 5672;

/// A node this process started (on its own ports and data); killed on drop.
pub struct PrivateNode {
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNode {
    /// Starts a new node on a free port and waits (up to 90 s: a cold node takes ~15 s on 2
    /// busy cores) until it accepts AMQP connections.
    pub fn start() -> Result<Self> {
        Self::start_on(free_port()?)
    }

    /// Like [`PrivateNode::start`] on `port`.
    pub fn start_on(port: u16) -> Result<Self> {
        if !Path::new(SERVER).exists() {
            bail!("{SERVER} is missing: apt-get install rabbitmq-server");
        }
        let dir = tempfile::Builder::new().prefix("nexus-rabbit-").tempdir()?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.path().join("rabbitmq.conf"), "")?;
        std::fs::write(dir.path().join("env.conf"), "")?;
        let mut r = Self {
            port,
            dist_port: free_port()?,
            node: format!("nexus-test-{}-{port}@localhost", std::process::id()),
            dir,
            child: None,
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Kills the node at once (no clean shutdown: a crash), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The child is the node's own beam.smp (see `restart`): this kills that one
            // process by its id, nothing else.
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while answers(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (Re)starts the node on the same ports and data, and waits until it accepts AMQP.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = std::fs::File::create(self.path("server.log"))?;
        let child = Command::new(SERVER)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", self.path("env.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            // The script then `exec`s erl, which `exec`s beam.smp: the child we hold is the
            // node itself, not a shell that forwards signals.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {SERVER}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if answers(self.port) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("rabbitmq-server exited ({status}): {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "private rabbitmq-server did not listen on {} within 90 s: {}",
            self.port,
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.path("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when an AMQP 0-9-1 server answers the protocol header on 127.0.0.1:`port` (its first
/// frame, `connection.start`, is a method frame: type 1).
pub fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut first = [0u8; 1];
    s.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && s.read_exact(&mut first).is_ok()
        && first[0] == 1
}

/// The machine's RabbitMQ when it answers on 127.0.0.1:5672 (None), else a node started now
/// on that port (installing Debian's `rabbitmq-server` when missing), with its data in a
/// temporary directory, until the returned guard drops.
pub fn ensure_running() -> Result<Option<PrivateNode>> {
    if answers(PORT) {
        return Ok(None);
    }
    crate::apt::ensure(&["rabbitmq-server"])?;
    // The package's install may have started the system's node.
    if answers(PORT) {
        return Ok(None);
    }
    eprintln!("toolenv: nothing answers AMQP on 127.0.0.1:{PORT}; starting rabbitmq-server there for this run");
    PrivateNode::start_on(PORT).map(Some)
}
