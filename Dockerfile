# syntax=docker/dockerfile:1

# Build: the same `cargo build --release --locked` as the README's run command.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# Run: a slim image, a non-root user, configuration, certificates and logs on volumes.
FROM debian:bookworm-slim

# ca-certificates tracks the bookworm security updates; pinning its version would make the
# build fail each time Debian publishes a new one, so it is left unpinned on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 keyward \
    && useradd --system --uid 10001 --gid keyward --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin keyward \
    && mkdir -p /app/config /app/certs /app/logs \
    && chown keyward:keyward /app/certs /app/logs

WORKDIR /app
COPY --from=builder /src/target/release/keyward /usr/local/bin/keyward
# config/container.toml is the default configuration listening on 0.0.0.0: it becomes the
# image's config/keyward.toml. Mount your own over /app/config.
COPY config/ /app/config/
COPY config/container.toml /app/config/keyward.toml

USER 10001:10001
VOLUME ["/app/config", "/app/certs", "/app/logs"]
EXPOSE 8443 3128 9090
# The image has no curl: keyward asks its own admin port (server.admin_listen of the config).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["keyward", "health", "--ready"]
ENTRYPOINT ["keyward"]
CMD ["run"]
