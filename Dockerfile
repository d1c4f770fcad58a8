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
# The default configuration listens on 127.0.0.1 and has a loopback-only demo service:
# mount your own config/keyward.toml (listen = "0.0.0.0:8443") over /app/config.
COPY config/ /app/config/

USER 10001:10001
VOLUME ["/app/config", "/app/certs", "/app/logs"]
EXPOSE 8443 3128 9090
ENTRYPOINT ["keyward"]
CMD ["run"]
