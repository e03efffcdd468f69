//! Generated protobuf types (and, with the `grpc` feature, tonic services) of the APIs Nexus
//! speaks. Source protos live beside this crate, in `proto/`.

#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

/// `envoy.service.ratelimit.v3`: the rate limit service API Envoy's ratelimit filter calls.
pub mod ratelimit {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
}

/// gRPC path of `ShouldRateLimit`, for hosts that dispatch calls by name (proxy-wasm).
pub const RATELIMIT_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const RATELIMIT_METHOD: &str = "ShouldRateLimit";
