# syntax=docker/dockerfile:1
#
# support-server in a container: a Rust build stage and a small Debian
# runtime. Build and run it through docker-compose.yml (see
# docs/operations.md); no Docker engine runs on the development machines, so
# this file is checked by review and `docker-compose config` only.

# ---------------------------------------------------------------- build --
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory live in BuildKit cache mounts, so a
# rebuild after a source change recompiles only the workspace's own crates,
# not the dependencies. The binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p support-server \
    && install -m 0755 target/release/support-server /usr/local/bin/support-server

# -------------------------------------------------------------- runtime --
FROM debian:bookworm-slim
# e2fsprogs: the reference tools operators use next to the server;
# ca-certificates: TLS to PostgreSQL, object storage and webhooks;
# curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends e2fsprogs ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/support-server --shell /usr/sbin/nologin support \
    && install -d -o support -g support -m 0750 /var/lib/support-server
COPY --from=build /usr/local/bin/support-server /usr/local/bin/support-server
USER support
WORKDIR /var/lib/support-server
ENV SUPPORT_DATA_DIR=/var/lib/support-server \
    SUPPORT_LISTEN=0.0.0.0:8080
VOLUME ["/var/lib/support-server"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["support-server"]
CMD ["serve"]
