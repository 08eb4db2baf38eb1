# syntax=docker/dockerfile:1
#
# The `ticketing` image: one binary that runs every service (`ticketing serve`, embedded
# SQLite + bus in /data) or the ones named (`ticketing serve auth`, PostgreSQL + NATS).
#
# Two final stages, the same runtime underneath:
#
#   runtime (default)    builds the binary here, in the Rust stage below:
#       docker build -t ticketing .
#   runtime-prebuilt     takes a Linux x86-64 glibc binary built outside, from the build
#                        context (a CI build, or when no Rust image can be pulled):
#       cargo build --release --locked -p ticketing
#       docker build --target runtime-prebuilt --build-arg BINARY=target/release/ticketing -t ticketing .
#
# Both strip the binary. Base images are pinned by digest (the multi-arch index, so any
# platform resolves); to move to a newer one, change tag and digest together, e.g. with
# `docker buildx imagetools inspect debian:bookworm-slim`. The builder's Debian release must
# match the runtime's (both bookworm): the binary links against the builder's glibc.
# See docs/deploy.md.

ARG RUST_IMAGE=rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
ARG RUNTIME_IMAGE=debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818
ARG CARGO_CHEF_VERSION=0.1.71

# Stages run in file order up to --target, so the prebuilt path comes first: building it
# never needs the Rust image.

# ------------------------------------------------------------------------------ base
FROM ${RUNTIME_IMAGE} AS base

# ca-certificates: for TLS connections (PostgreSQL with sslmode, NATS at a tls:// URL,
# Stripe). Not pinned: the point is to get the current CA bundle.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 ticketing \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ticketing \
    && mkdir -p /data \
    && chown 10001:10001 /data

# Listen on every interface inside the container (the binary's default is 127.0.0.1).
# The data dir only matters in embedded mode (no DATABASE_URL / NATS_URL): SQLite files,
# the embedded bus and a generated session key live there, so keep it on a volume.
ENV TICKETING_ADDR=0.0.0.0:3000 \
    TICKETING_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
EXPOSE 3000
ENTRYPOINT ["ticketing"]
CMD ["serve"]

# -------------------------------------------------------------------- runtime-prebuilt
# A stage of its own, so the unstripped binary never becomes a layer of the image.
FROM base AS strip-prebuilt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
# Path of the binary inside the build context.
ARG BINARY=target/release/ticketing
COPY ${BINARY} /tmp/ticketing
RUN install -D -m 0755 /tmp/ticketing /out/ticketing && strip /out/ticketing

FROM base AS runtime-prebuilt
COPY --from=strip-prebuilt /out/ticketing /usr/local/bin/ticketing
USER 10001:10001

# ----------------------------------------------------------------------------- chef
# cargo-chef splits the build in two: the dependencies (which change rarely) are compiled
# in a layer keyed only by the dependency recipe, so a source change reuses that layer and
# recompiles only the workspace's own crates.
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked cargo-chef --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
# recipe.json: the manifests and lock file with the sources stubbed out.
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------- build
FROM chef AS build
# The slim image already has gcc and libc6-dev, which is all the C the build needs
# (ring, and the SQLite that libsqlite3-sys bundles); TLS is rustls, so no OpenSSL.
COPY --from=planner /src/recipe.json recipe.json
# Downloaded crates live in cache mounts shared between builds; the compiled dependencies
# are this layer, reused until recipe.json changes.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked -p ticketing --recipe-path recipe.json
COPY . .
# target/ is NOT a cache mount: migrations are embedded at compile time (`sqlx::migrate!`),
# and a cached target/ could keep a binary built before a new migration file was added.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked -p ticketing \
    && install -D -m 0755 target/release/ticketing /out/ticketing \
    && strip /out/ticketing

# --------------------------------------------------------------------------- runtime
# Last, so a plain `docker build .` builds it.
FROM base AS runtime
COPY --from=build /out/ticketing /usr/local/bin/ticketing
USER 10001:10001
