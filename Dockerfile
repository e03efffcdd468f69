# syntax=docker/dockerfile:1.7
#
# The `nexus` controller image: the binary plus the filter modules it serves.
#
#   docker build -t ghcr.io/nexus-gateway/nexus:0.1.0 .
#
# Stage 1 builds the wasm filters (`cargo xtask build-filters`, rustup's wasm32 target) and the
# `nexus` binary; stage 2 is distroless (glibc + libgcc, no shell), user 65532. The modules land
# in /opt/nexus/modules, which is what the Helm chart passes (`--modules`, NEXUS_MODULES;
# values `controller.modulesDir`).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# clang + llvm-ar compile ring's C parts for wasm32 (nexus-auth's JWT signatures).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-unknown-unknown
ENV CC_wasm32_unknown_unknown=clang \
    AR_wasm32_unknown_unknown=llvm-ar \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# xtask remaps /src and $CARGO_HOME in the modules, so their sha256 (pinned by the rendered
# EnvoyFilters) matches a build of the same commit anywhere else.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build-filters \
 && cargo build --release --locked -p nexus-controller --bin nexus \
 && mkdir -p /out/modules \
 && cp target/filters/*.wasm target/filters/*.wasm.sha256 /out/modules/ \
 && cp target/release/nexus /out/nexus \
 && /out/nexus --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/nexus-gateway/nexus" \
      org.opencontainers.image.description="Nexus controller: NexusRoute reconciler, filter modules, rate-limit and cache services" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/nexus /usr/local/bin/nexus
COPY --from=build /out/modules/ /opt/nexus/modules/
ENV NEXUS_MODULES=/opt/nexus/modules
USER 65532:65532
# http (health, metrics), rate limit (gRPC), modules, cache coherency (gRPC)
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["/usr/local/bin/nexus"]
CMD ["controller"]
