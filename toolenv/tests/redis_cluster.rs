//! A private three-primary Redis Cluster starts on free loopback ports, and a killed primary's
//! replica takes over its slots with the data it had replicated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use nexus_toolenv::redis_cluster::RedisCluster;

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-c", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_killed_primary_fails_over_to_its_replica_with_its_data() {
    let mut cluster = RedisCluster::start().unwrap();
    eprintln!("cluster of 6 nodes ready in {:?}", cluster.started_in);
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    assert_eq!(cluster.seed_urls().len(), 6);
    let seed = port_of(&cluster.seed_urls()[0]);
    assert_eq!(cli(seed, &["SET", "{failover}k", "kept"]), "OK");
    let slot = cluster.slot_of("{failover}k").unwrap();
    assert_eq!(slot, cluster.slot_of("failover").unwrap(), "hash tag");
    let primary = cluster.primary_of_slot(slot).unwrap().unwrap();
    // The write reached the replica before the crash.
    assert_eq!(cli(primary, &["WAIT", "1", "5000"]), "1");

    let killed = cluster.kill_primary_of("{failover}k").unwrap();
    assert_eq!((killed.port, killed.slot), (primary, slot));
    let at = Instant::now();
    let promoted = cluster
        .wait_for_failover(killed, Duration::from_secs(30))
        .unwrap();
    eprintln!(
        "failover of slot {slot}: {primary} -> {promoted} in {:?}",
        at.elapsed()
    );
    assert_ne!(promoted, primary);
    assert_eq!(cli(promoted, &["GET", "{failover}k"]), "kept");
    assert_eq!(cli(primary, &["PING"]), "", "the killed node is gone");
}
