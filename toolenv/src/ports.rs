//! Loopback ports for the servers tests start (etcd, kube-apiserver, Envoy, private Redis and
//! RabbitMQ nodes, the controller's listeners).

use std::net::TcpListener;

use anyhow::{bail, Result};

/// A free loopback TCP port, never one this process was handed before.
///
/// The kernel may give a port just released by `bind(0)` to the next `bind(0)`: two calls in a
/// row could name the same port for two servers (CI saw a controller's HTTP server and its
/// access-log service both told 43811). Remembering what was handed out rules that out.
pub fn free_port() -> Result<u16> {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if claim(port) {
            return Ok(port);
        }
    }
    bail!("no loopback port this process has not used already")
}

/// A free port p with p+1 free too (etcd's client and peer ports).
pub fn free_port_pair() -> Result<u16> {
    free_port_with_offset(1)
}

/// A free port p with p+`offset` free too, both claimed (a Redis Cluster node's client port
/// and its cluster bus, which Redis puts at p+10000).
pub fn free_port_with_offset(offset: u16) -> Result<u16> {
    for _ in 0..200 {
        let p = free_port()?;
        let Some(q) = p.checked_add(offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", q)).is_ok() && claim(q) {
            return Ok(p);
        }
    }
    bail!("no free pair of loopback ports {offset} apart")
}

/// Records `port` as handed out; false if it already was.
fn claim(port: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if handed_out.contains(&port) {
        return false;
    }
    handed_out.push(port);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            assert!(seen.insert(free_port().unwrap()), "a port handed out twice");
        }
        let pair = free_port_pair().unwrap();
        assert!(seen.insert(pair) && seen.insert(pair + 1));
        let bus = free_port_with_offset(10_000).unwrap();
        assert!(seen.insert(bus) && seen.insert(bus + 10_000));
    }
}
