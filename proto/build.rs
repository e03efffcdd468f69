//! Compiles `proto/**/*.proto` with protox (pure Rust: no system `protoc`), generating tonic
//! clients and servers only when the `grpc` feature is on.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "envoy/service/ratelimit/v3/rls.proto",
        "envoy/service/accesslog/v3/als.proto",
        "nexus/cache/v1/cache.proto",
        "nexus/ratelimit/v1/lease.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_fds(fds)?;
    Ok(())
}
