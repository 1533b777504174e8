# Shoal image: shoal-peer, shoal-supernode and shoal-lazyfs on Debian bookworm-slim.
# Build: docker build -t ghcr.io/shoal-dev/shoal:0.1.0 .   (see docs/deploy.md)

# --- builder: the Rust toolchain, never in the final image.
FROM rust:1-bookworm AS builder
WORKDIR /src
# protoc: the snapshotter's gRPC service and the CRI client are generated at build time.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY common common
COPY supernode supernode
COPY peer peer
COPY lazyfs lazyfs
COPY bench bench
COPY deploy-tests deploy-tests
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/shoal-peer target/release/shoal-supernode target/release/shoal-lazyfs /out/ \
 && strip /out/*

# --- final: the three binaries, CA certificates (https registries) and fuse3 (lazyfs mounts).
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/shoal-peer /out/shoal-supernode /out/shoal-lazyfs /usr/local/bin/
# peer: mirror 65001, p2p 65002, metrics 65003; supernode: 8002
EXPOSE 8002 65001 65002 65003
ENTRYPOINT []
CMD ["shoal-peer", "run"]
