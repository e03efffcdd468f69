//! Nexus controller: reconciles `NexusRoute`s into Istio objects and rate-limit config.
//!
//! The pure core ([`model`], [`render`], [`plan`], [`objects`], the conditions in [`status`])
//! needs no API server; [`controller`], [`leader`] and [`server`] are the runtime around it.

pub mod access_log;
pub mod access_log_service;
pub mod audit;
pub mod cache;
pub mod controller;
pub mod crd;
pub mod enforcement;
pub mod health;
pub mod input;
pub mod leader;
pub mod model;
pub mod objects;
pub mod plan;
pub mod policy;
pub mod ratelimit;
pub mod render;
pub mod request_metrics;
pub mod server;
pub mod sessions;
pub mod standalone;
pub mod status;
pub mod telemetry;
pub mod warm;

// Separate group (rustfmt keeps it here): the Helm chart's values, the source of its schema.
pub mod chart;
