# syntax=docker/dockerfile:1
#
# The `ticketing` image: one binary that runs every service (`ticketing serve`, embedded
# SQLite + bus in /data) or the ones named (`ticketing serve auth`, PostgreSQL + NATS).
#
#     docker build -t ticketing .                     # needs BuildKit (default since Docker 23)
#     docker run --rm -p 3000:3000 -v ticketing-data:/data ticketing
#     docker run --rm -p 3000:3000 -e JWT_KEY=... -e DATABASE_URL=... -e NATS_URL=... ticketing serve auth
#
# See docs/deploy.md. The builder's Debian release must match the runtime's (both bookworm):
# the binary links against the builder's glibc.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# The slim image already has gcc and libc6-dev, which is all the C the build needs
# (ring, and the SQLite that libsqlite3-sys bundles); TLS is rustls, so no OpenSSL.
COPY . .

# Downloaded crates (registry, git checkouts) live in cache mounts shared between builds,
# so a source change does not download anything again. target/ is deliberately NOT a
# cache mount: migrations are embedded at compile time (`sqlx::migrate!`), and a cached
# target/ could keep a binary built before a new migration file was added. The binary is
# copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked -p ticketing \
    && install -D -m 0755 target/release/ticketing /out/ticketing

# -------------------------------------------------------------------------- runtime
FROM debian:bookworm-slim AS runtime

# ca-certificates: for TLS connections (e.g. NATS at a tls:// URL). Not pinned: the point is
# to get the current CA bundle.
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

COPY --from=build /out/ticketing /usr/local/bin/ticketing

# Listen on every interface inside the container (the binary's default is 127.0.0.1).
# The data dir only matters in embedded mode (no DATABASE_URL / NATS_URL): SQLite files,
# the embedded bus and a generated session key live there, so keep it on a volume.
ENV TICKETING_ADDR=0.0.0.0:3000 \
    TICKETING_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
EXPOSE 3000

USER 10001:10001
ENTRYPOINT ["ticketing"]
CMD ["serve"]
