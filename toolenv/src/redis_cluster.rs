//! A private Redis Cluster for tests: three primaries and three replicas on loopback ports from
//! [`crate::ports`], in a temporary directory, made with `redis-cli --cluster create`. A test may
//! kill the primary that owns a key's slot (SIGKILL, like a crash) and wait for its replica to
//! take over. The machine's shared Redis on 6379 is never touched.
//!
//! Each node runs under a small `sh` that holds the read end of a pipe from this process: when
//! the pipe closes (the cluster is dropped, or the test process dies however it dies) the shell
//! kills its node, so no node outlives the test, even a cluster kept in a `static`.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ports::free_port_with_offset;

/// Redis puts a node's cluster bus at its client port plus this.
const BUS_OFFSET: u16 = 10_000;
const PRIMARIES: usize = 3;
/// How long a primary may be unreachable before the others mark it failed and its replica is
/// promoted (Redis's default is 15 s; tests want a failover in about a second).
const NODE_TIMEOUT_MS: u32 = 1_000;
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Three primaries and three replicas; every node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
    /// From the first `redis-server` to `cluster_state:ok` on every node with every replica in
    /// sync.
    pub started_in: Duration,
}

struct Node {
    port: u16,
    /// The node's guard shell; None once killed.
    guard: Option<Child>,
}

/// What [`RedisCluster::kill_primary_of`] killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Killed {
    pub port: u16,
    pub slot: u16,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster with one replica per primary, and waits until
    /// every node says `cluster_state:ok` and every replica is in sync with its primary.
    pub fn start() -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("nexus-redis-cluster-")
            .tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..PRIMARIES * 2 {
            let port = free_port_with_offset(BUS_OFFSET)?;
            nodes.push(Node {
                port,
                guard: Some(spawn_node(dir.path(), port)?),
            });
        }
        let mut cluster = Self {
            nodes,
            _dir: dir,
            started_in: Duration::ZERO,
        };
        for node in &cluster.nodes {
            wait_until(READY_WITHIN, || Ok(cli(node.port, &["PING"])? == "PONG"))
                .with_context(|| format!("redis-server on port {} did not start", node.port))?;
        }
        cluster.create()?;
        cluster.wait_ready()?;
        cluster.started_in = started.elapsed();
        Ok(cluster)
    }

    fn create(&self) -> Result<()> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--cluster", "create"]);
        cmd.args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        crate::run(&mut cmd).context("redis-cli --cluster create")?;
        Ok(())
    }

    /// Every node says `cluster_state:ok`, and every primary has a replica that acknowledged
    /// its whole replication stream (a replica "online" right after its first sync may not
    /// have applied anything yet; a failover then would promote an empty copy).
    fn wait_ready(&self) -> Result<()> {
        wait_until(READY_WITHIN, || {
            let mut caught_up = 0;
            for port in self.live_ports() {
                if !cli(port, &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                    return Ok(false);
                }
                if replica_caught_up(&cli(port, &["INFO", "replication"])?) {
                    caught_up += 1;
                }
            }
            Ok(caught_up == PRIMARIES)
        })
        .context("the Redis Cluster did not become ready")
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`: every node as a seed, in the URL form
    /// the Nexus services read.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `redis://127.0.0.1:P` of every node started (killed ones included).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.guard.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn any_live_port(&self) -> Result<u16> {
        self.live_ports()
            .first()
            .copied()
            .context("every node of the cluster was killed")
    }

    /// The hash slot of `key` (its hash tag's, when it has one).
    pub fn slot_of(&self, key: &str) -> Result<u16> {
        let answer = cli(self.any_live_port()?, &["CLUSTER", "KEYSLOT", key])?;
        answer
            .parse()
            .with_context(|| format!("CLUSTER KEYSLOT answered {answer:?}"))
    }

    /// The port of the healthy primary serving `slot`, as a live node sees the cluster.
    pub fn primary_of_slot(&self, slot: u16) -> Result<Option<u16>> {
        let nodes = cli(self.any_live_port()?, &["CLUSTER", "NODES"])?;
        Ok(nodes.lines().find_map(|line| owner(line, slot)))
    }

    /// Kills (SIGKILL) the primary serving `key`'s slot.
    pub fn kill_primary_of(&mut self, key: &str) -> Result<Killed> {
        let slot = self.slot_of(key)?;
        let port = self
            .primary_of_slot(slot)?
            .with_context(|| format!("no primary serves slot {slot}"))?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("the primary on {port} is not one of this cluster's"))?;
        kill(node);
        Ok(Killed { port, slot })
    }

    /// Waits until another node serves the killed primary's slot and every live node says
    /// `cluster_state:ok`; returns the new primary's port.
    pub fn wait_for_failover(&self, killed: Killed, within: Duration) -> Result<u16> {
        let mut promoted = None;
        wait_until(within, || {
            promoted = self
                .primary_of_slot(killed.slot)?
                .filter(|p| *p != killed.port);
            if promoted.is_none() {
                return Ok(false);
            }
            for port in self.live_ports() {
                if !cli(port, &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .with_context(|| format!("no failover of slot {} within {within:?}", killed.slot))?;
        promoted.context("failover without a new primary")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill(node);
        }
    }
}

/// `redis-server` in cluster mode on `port`, in memory only, under a shell that kills it when
/// its stdin (a pipe from this process) closes or receives a line.
fn spawn_node(dir: &Path, port: u16) -> Result<Child> {
    let p = port.to_string();
    let timeout = NODE_TIMEOUT_MS.to_string();
    let conf = dir.join(format!("nodes-{port}.conf"));
    let log = dir.join(format!("node-{port}.log"));
    Command::new("sh")
        .args([
            "-c",
            r#"redis-server "$@" & node=$!; read _; kill -9 "$node"; wait "$node""#,
            "sh",
        ])
        .args([
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
        ])
        .arg("--cluster-config-file")
        .arg(&conf)
        .args(["--cluster-node-timeout", &timeout])
        .args(["--appendonly", "no", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (apt-get install redis-server)")
}

/// Tells the node's guard shell to kill it, and waits until the shell has.
fn kill(node: &mut Node) {
    if let Some(mut guard) = node.guard.take() {
        if let Some(mut stdin) = guard.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = guard.wait();
    }
}

/// `redis-cli -p PORT ARGS...`, its output trimmed.
fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True for a primary's `INFO replication` whose replica is online and has acknowledged the
/// primary's offset (acknowledgements come every second).
fn replica_caught_up(info: &str) -> bool {
    let field = |line: &str, name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name))
            .map(str::to_string)
    };
    let offset = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("master_repl_offset:"));
    let replica = info.lines().find(|l| l.starts_with("slave0:"));
    match (offset, replica) {
        (Some(offset), Some(replica)) => {
            field(replica, "state=").as_deref() == Some("online")
                && field(replica, "offset=").as_deref() == Some(offset.trim())
                && offset.trim() != "0"
        }
        _ => false,
    }
}

/// The port of a `CLUSTER NODES` line's node when it is a healthy primary serving `slot`.
fn owner(line: &str, slot: u16) -> Option<u16> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags = fields.get(2)?;
    if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
        return None;
    }
    let serves = fields.iter().skip(8).any(|range| {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
    });
    let addr = fields.get(1)?.split(['@', ',']).next()?;
    serves.then(|| addr.rsplit_once(':')?.1.parse().ok())?
}

fn wait_until(within: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_caught_up_once_it_acknowledged_the_primary_offset() {
        let info = |offset: &str| {
            format!(
                "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
                 slave0:ip=127.0.0.1,port=38335,state=online,offset={offset},lag=0\r\n\
                 master_repl_offset:82433\r\n"
            )
        };
        assert!(replica_caught_up(&info("82433")));
        assert!(!replica_caught_up(&info("0")));
        assert!(!replica_caught_up(
            "role:master\nconnected_slaves:0\nmaster_repl_offset:14\n"
        ));
    }

    #[test]
    fn owner_reads_cluster_nodes_lines() {
        let primary = "07c3 127.0.0.1:30004@40004 master - 0 1 4 connected 0-5460 7000";
        assert_eq!(owner(primary, 0), Some(30004));
        assert_eq!(owner(primary, 5460), Some(30004));
        assert_eq!(owner(primary, 7000), Some(30004));
        assert_eq!(owner(primary, 5461), None);
        let failed = "07c3 127.0.0.1:30004@40004 master,fail - 0 1 4 connected 0-5460";
        assert_eq!(owner(failed, 1), None);
        let replica = "e7d1 127.0.0.1:30005@40005 myself,slave 07c3 0 1 4 connected";
        assert_eq!(owner(replica, 1), None);
    }
}
