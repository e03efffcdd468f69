//! `nexus-cache`: the cache-coherency service on its own (the controller binary hosts it too).
//!
//!   nexus-cache [--listen 127.0.0.1:8083] [--http-listen ADDR] [--redis-url redis://...|redis+cluster://h1:p1,h2:p2]
//!               [--redis-timeout-ms 100] [--max-value-bytes N] [--replica NAME]
//!               [--watermark-ttl-ms 3600000] [--clock-skew-ms 0]
//!
//! `NEXUS_CACHE_TOKEN` is the bearer token of `POST /cache/invalidate` on `--http-listen`;
//! `NEXUS_CACHE_CLOCK_SKEW_MS` is the default of `--clock-skew-ms`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nexus_cache_service::storage::RedisNamespace;
use nexus_cache_service::{http, server, Config};

struct Args {
    listen: SocketAddr,
    http_listen: Option<SocketAddr>,
    redis_url: Option<String>,
    redis_timeout: Duration,
    config: Config,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], server::DEFAULT_PORT)),
        http_listen: None,
        redis_url: std::env::var("REDIS_URL").ok(),
        redis_timeout: Duration::from_millis(100),
        config: Config::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?.parse()?,
            "--http-listen" => args.http_listen = Some(value()?.parse()?),
            "--redis-url" => args.redis_url = Some(value()?),
            "--redis-timeout-ms" => args.redis_timeout = Duration::from_millis(value()?.parse()?),
            "--max-value-bytes" => args.config.max_value_bytes = value()?.parse()?,
            "--replica" => args.config.replica = value()?,
            "--watermark-ttl-ms" => {
                args.config.watermark_ttl = Duration::from_millis(value()?.parse()?)
            }
            "--clock-skew-ms" => {
                args.config.clock_skew_allowance = Duration::from_millis(value()?.parse()?)
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    nexus_telemetry::init("nexus-cache");
    // Errors are log lines too, in the same JSON as the rest.
    match serve() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve() -> Result<()> {
    let args = parse_args()?;
    let cache = server::build(
        args.redis_url.as_deref(),
        &RedisNamespace::default(),
        args.config,
        args.redis_timeout,
    )?;
    if let Some(addr) = args.http_listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!("http listening on {}", listener.local_addr()?);
        tokio::spawn(http::serve(cache.clone(), listener, std::future::pending()));
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Said once bound, so the line is true when it is read.
    tracing::info!(
        "listening on {} ({})",
        listener.local_addr()?,
        cache.describe()
    );
    server::serve_grpc(cache, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
