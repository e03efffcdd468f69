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
    transcoding(grpc)
}

/// The services the gateway transcodes REST to (Envoy's gRPC-JSON transcoder): their
/// descriptor set with every import (the transcoder resolves `google.api.http` through it),
/// written to `OUT_DIR/transcoding.bin`, and their Rust types.
fn transcoding(grpc: bool) -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["datapunk/lake/v1/lake.proto"];
    for p in protos
        .iter()
        .chain(&["google/api/http.proto", "google/api/annotations.proto"])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(protos)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("transcoding.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
