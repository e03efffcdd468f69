//! `nexus-ratelimit`: the rate-limit service on its own (the controller binary hosts it too).
//!
//!   nexus-ratelimit --config-dir DIR [--listen 127.0.0.1:8081] [--redis-url redis://...|redis+cluster://h1:p1,h2:p2]
//!                   [--algorithm fixed-window|gcra] [--unknown-domain allow|deny|error]
//!                   [--merge-domain-config] [--response-dynamic-metadata]
//!                   [--config-poll-ms 1000]
//!
//! `--config-dir` holds files in envoyproxy/ratelimit's format, read as it reads them, and is
//! followed while the service runs (read again every `--config-poll-ms`; see `config_dir`);
//! `--merge-domain-config` is its `MERGE_DOMAIN_CONFIG=true` (a domain may span files),
//! `--response-dynamic-metadata` its `RESPONSE_DYNAMIC_METADATA=true`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nexus_ratelimit_service::config_dir::ConfigDir;
use nexus_ratelimit_service::server::SharedLimiter;
use nexus_ratelimit_service::{Algorithm, UnknownDomain};

struct Args {
    config_dir: PathBuf,
    listen: SocketAddr,
    redis_url: Option<String>,
    algorithm: Algorithm,
    unknown_domain: UnknownDomain,
    redis_timeout: Duration,
    merge_domain_config: bool,
    response_dynamic_metadata: bool,
    config_poll: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        config_dir: PathBuf::from("."),
        listen: "127.0.0.1:8081".parse()?,
        redis_url: std::env::var("REDIS_URL").ok(),
        algorithm: Algorithm::FixedWindow,
        unknown_domain: UnknownDomain::Allow,
        redis_timeout: Duration::from_millis(100),
        merge_domain_config: false,
        response_dynamic_metadata: false,
        config_poll: Duration::from_secs(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config-dir" => args.config_dir = value()?.into(),
            "--listen" => args.listen = value()?.parse()?,
            "--redis-url" => args.redis_url = Some(value()?),
            "--algorithm" => args.algorithm = value()?.parse().map_err(anyhow::Error::msg)?,
            "--unknown-domain" => {
                args.unknown_domain = value()?.parse().map_err(anyhow::Error::msg)?
            }
            "--redis-timeout-ms" => args.redis_timeout = Duration::from_millis(value()?.parse()?),
            "--merge-domain-config" => args.merge_domain_config = true,
            "--response-dynamic-metadata" => args.response_dynamic_metadata = true,
            "--config-poll-ms" => args.config_poll = Duration::from_millis(value()?.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if args.config_poll.is_zero() {
        bail!("--config-poll-ms must be at least 1");
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    nexus_telemetry::init("nexus-ratelimit");
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
    let (config_dir, limits) = ConfigDir::open(args.config_dir, args.merge_domain_config)?;
    for warning in limits.warnings() {
        tracing::warn!("{warning}");
    }
    let domains: Vec<String> = limits.domains().map(str::to_string).collect();
    let limiter = SharedLimiter::new(
        limits,
        args.redis_url.as_deref(),
        args.algorithm,
        args.unknown_domain,
        args.redis_timeout,
    )?;
    limiter.set_response_dynamic_metadata(args.response_dynamic_metadata);
    tracing::info!(
        "starting on {} with {} storage, {:?}, domains {:?}",
        args.listen,
        limiter.describe(),
        args.algorithm,
        domains
    );
    tokio::spawn(config_dir.follow(limiter.clone(), args.config_poll));
    limiter
        .serve(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
