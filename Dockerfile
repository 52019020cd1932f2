# syntax=docker/dockerfile:1
#
# Switchyard: one image for every service.
#
#   docker build -t switchyard .
#   docker run --rm -p 50051:50051 -p 8080:8080 switchyard        # all-in-one: `switchyard up`
#   docker run ... switchyard serve credentials                     # one service, production backends
#                                                                   # (config: SWITCHYARD_CONFIG / SWITCHYARD_*)
# Kubernetes: helm/switchyard (one Deployment per service, each `serve <name>`).
#
# Build cache: BuildKit cache mounts keep the cargo registry and target/ between builds, so after
# a source change only the crates that changed are recompiled, without a dependency-only layer
# (which a workspace whose members keep changing would make brittle).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
# Debian 12 like the builder (same glibc); has libgcc, CA certificates and /tmp, no shell.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
ARG TARGETPLATFORM
# The slim image has gcc and libc6-dev, which the bundled SQLite (libsqlite3-sys) and aws-lc-sys
# (built with the cc crate, no cmake, on x86_64/aarch64 Linux) need. protoc comes from the
# protoc-bin-vendored crate, so no protobuf-compiler package is installed.
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5
WORKDIR /src
COPY . .
# target/ is a cache mount, not part of the layer: the binary is copied out of it to /out.
RUN --mount=type=cache,id=switchyard-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=switchyard-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=switchyard-target-${TARGETPLATFORM},target=/src/target,sharing=locked \
    cargo build --release --locked -p switchyard \
    && install -D -m 0755 target/release/switchyard /out/switchyard \
    && mkdir -p /out/data

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Switchyard integration hub: gRPC services in one binary" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/switchyard /usr/local/bin/switchyard
# The data directory, writable by the runtime user, so `switchyard up` works without a volume.
# (In Kubernetes an emptyDir is mounted here and the root filesystem is read-only.)
COPY --from=builder --chown=10001:10001 /out/data/ /var/lib/switchyard/
WORKDIR /var/lib/switchyard
USER 10001:10001
# 50051: gRPC (with grpc.health.v1 for probes); 8080: HTTP /healthz /readyz /metrics.
EXPOSE 50051 8080
# No HEALTHCHECK: the image has no shell or probe client; Kubernetes uses native gRPC probes.
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["up", "--grpc-addr", "0.0.0.0:50051", "--http-addr", "0.0.0.0:8080"]
