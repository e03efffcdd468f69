//! `cargo xtask run`: real Envoy on 127.0.0.1:8080 with the Nexus filters in front of four demo
//! upstreams (lake, stream, cortex, forge) that echo what they receive.

use anyhow::{Context, Result};
use nexus_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use nexus_tests::upstream::Upstream;

fn main() -> Result<()> {
    let port: u16 = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .map(|p| p.parse())
        .transpose()
        .context("--port takes a number")?
        .unwrap_or(8080);
    let upstreams = ["lake", "stream", "cortex", "forge"]
        .iter()
        .map(|n| Upstream::start(n))
        .collect::<Result<Vec<_>>>()?;
    let config = EnvoyConfig {
        filters: vec![WasmFilter {
            name: "nexus-router".into(),
            module: nexus_tests::filter_module("nexus_router")?,
            config: std::fs::read_to_string(nexus_tests::repo_root().join("examples/router.json"))?,
        }],
        upstreams: upstreams
            .iter()
            .map(|u| (u.name.clone(), u.port()))
            .collect(),
        listen_port: port,
        concurrency: 2,
        ..Default::default()
    };
    let envoy = Envoy::start(&config)?;
    println!(
        "Nexus is up: Envoy on http://127.0.0.1:{} (admin http://127.0.0.1:{})",
        envoy.port, envoy.admin_port
    );
    println!("Try:");
    for path in [
        "/lake/tables",
        "/stream/events",
        "/cortex/v1/infer",
        "/forge/models",
    ] {
        println!("  curl -s http://127.0.0.1:{}{path}", envoy.port);
    }
    println!(
        "  curl -s -i http://127.0.0.1:{}/nowhere                 # 404 JSON, no route",
        envoy.port
    );
    println!("  curl -s http://127.0.0.1:{}/lake/x -H 'x-nexus-upstream: forge'   # spoofing is stripped", envoy.port);
    println!("Ctrl-C stops Envoy and the upstreams.");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
