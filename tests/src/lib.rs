//! End-to-end harness for Nexus filters in real Envoy.
//!
//! - [`envoy`]: generates a bootstrap (listener, wasm filters, routes on `x-nexus-upstream`,
//!   clusters), starts `envoy` on 127.0.0.1 with kernel-chosen ports, waits for readiness via
//!   the admin API, and kills it on drop.
//! - [`upstream`]: in-process HTTP upstreams that record every request and echo it as JSON.
//! - [`client`]: a blocking HTTP/1.1 client small enough to read in one sitting.
//! - [`ratelimit_service`]: the Nexus rate-limit service in-process, stoppable mid-test.
//! - [`cache_service`]: a fake `nexus.cache.v1.Cache` whose events tests send and whose
//!   streams tests break; real `nexus-cache-service` replicas on Redis; an Envoy with the
//!   nexus-cache filter following one.
//! - [`load`]: `wrk` runs for benchmarks, parsed.
//! - [`jwks`]: a JWKS server whose keys tests rotate and which tests take down.
//! - [`grpc_lake`]: a gRPC lake service that answers `UNAVAILABLE` on command and can be killed.
//! - [`misbehaving`]: an upstream that fails, holds or breaks answers on command and counts
//!   the tries it saw, per request id.
//! - [`body_upstream`]: an upstream answering JSON bodies of chosen sizes, with PII, chunked.
//! - [`oauth_providers`]: GitHub's token check and an RFC 7662 endpoint, answering locally.
//! - [`browser`]: headless Chromium over WebDriver, and a certified OpenID provider.

pub mod body_upstream;
pub mod browser;
pub mod cache_service;
pub mod client;
pub mod envoy;
pub mod grpc_lake;
pub mod jwks;
pub mod load;
pub mod misbehaving;
pub mod oauth_providers;
pub mod ratelimit_service;
pub mod sessions_service;
pub mod upstream;

use std::path::PathBuf;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A filter module built by `cargo xtask build-filters`, or a clear error naming that command.
pub fn filter_module(lib_name: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root()
        .join("target/filters")
        .join(format!("{lib_name}.wasm"));
    if !path.is_file() {
        anyhow::bail!(
            "{} is missing: run `cargo xtask build-filters` (or `cargo xtask test`)",
            path.display()
        );
    }
    Ok(path)
}
