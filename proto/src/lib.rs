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

/// `envoy.service.accesslog.v3`: Envoy's gRPC access log service (`envoy.access_loggers.http_grpc`
/// streams each request's entry to it), trimmed to the fields the request metrics read.
pub mod accesslog {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.accesslog.v3.rs"));
}

/// `nexus.cache.v1`: the cache-coherency service (shared cache on Redis, invalidation events).
pub mod cache {
    include!(concat!(env!("OUT_DIR"), "/nexus.cache.v1.rs"));
}

/// gRPC service and method names of `nexus.cache.v1.Cache`, for proxy-wasm dispatch.
pub const CACHE_SERVICE: &str = "nexus.cache.v1.Cache";
pub const CACHE_GET: &str = "Get";
pub const CACHE_PUT: &str = "Put";
pub const CACHE_INVALIDATE: &str = "Invalidate";
pub const CACHE_SUBSCRIBE: &str = "Subscribe";

/// `datapunk.lake.v1`: the lake service's gRPC API, which the gateway also serves as REST.
pub mod lake {
    include!(concat!(env!("OUT_DIR"), "/datapunk.lake.v1.rs"));
}

/// The descriptor set (imports included) of the services the gateway can transcode REST to,
/// built from `proto/` (Envoy's gRPC-JSON transcoder reads it).
pub const TRANSCODING_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/transcoding.bin"));

/// Fully qualified names of the services in [`TRANSCODING_DESCRIPTOR_SET`] (`datapunk.lake.v1.Lake`).
pub fn transcodable_services() -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(TRANSCODING_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect()
}

/// `nexus.ratelimit.v1`: leased quota (a share of a limit's window budget per proxy).
pub mod lease {
    include!(concat!(env!("OUT_DIR"), "/nexus.ratelimit.v1.rs"));
}

/// gRPC service and method names of `nexus.ratelimit.v1.RateLimitLeases`, for proxy-wasm dispatch.
pub const LEASE_SERVICE: &str = "nexus.ratelimit.v1.RateLimitLeases";
pub const LEASE_METHOD: &str = "Lease";
