//! Nexus without a cluster: `nexus up DIR` reads NexusRoute YAML (the same CRD schema the
//! controller reconciles), renders a plain Envoy configuration with the Nexus filters, runs
//! the Nexus services in-process and real Envoy beside them, and applies edits to DIR live.
//!
//! [`gateway`] reads DIR, [`envoy`] renders (pure, unit-tested), [`envoy_log`] writes Envoy's log, [`run`] is the runtime,
//! [`demo`] the echo upstreams for trying it with no services of your own, [`tls`] HTTPS on the
//! listener.

pub mod demo;
pub mod envoy;
pub mod envoy_log;
pub mod gateway;
pub mod run;
pub mod tls;
