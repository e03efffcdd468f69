//! The Nexus rate-limit service: Envoy's `envoy.service.ratelimit.v3.RateLimitService`, so both
//! the nexus-ratelimit filter and Envoy's native ratelimit filter can call it.
//!
//! - [`limits`]: the configured limits (envoyproxy/ratelimit's format, `nexus_config::ratelimit`)
//!   indexed per domain, and how a request's descriptors find their limit.
//! - [`algorithm`]: fixed window (envoyproxy/ratelimit-compatible) and GCRA, as pure functions.
//! - [`storage`]: where counters live, behind one trait: [`storage::MemoryStorage`] and
//!   [`storage::RedisStorage`].
//! - [`service`]: decisions for whole requests, and the tonic service.
//! - [`leases`]: leased quota (`nexus.ratelimit.v1.RateLimitLeases`) from the same counters.
//! - [`config_dir`]: `--config-dir` followed while the service runs.

pub mod algorithm;
pub mod config_dir;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use algorithm::Algorithm;
pub use limits::Limits;
pub use service::{RateLimiter, UnknownDomain};
