# Momentum server image. Multi-stage: a Rust builder whose dependency layer is cached until a
# manifest or Cargo.lock changes, and a slim Debian runtime that runs as a non-root user.
#
#   docker build -t momentum .
#   docker run -p 8080:8080 -e MOMENTUM__SECURITY__ADMIN_KEY=... -v momentum-data:/var/lib/momentum momentum
#
# docs/operations.md describes the volumes, the configuration and the health check.
# tests/integration/ops.rs checks that this file copies what the build and the binary need.

############################ builder ############################
FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# 1. Dependencies only. Manifests of every workspace member plus empty sources, so cargo can
#    resolve the workspace and compile all third-party crates; this layer is reused until a
#    manifest or the lock file changes.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/
COPY models/Cargo.toml models/
COPY load-tests/Cargo.toml load-tests/
COPY device/Cargo.toml device/
RUN mkdir -p src actors/src models/src load-tests/src device/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs actors/src/lib.rs models/src/lib.rs load-tests/src/lib.rs device/src/lib.rs \
 && cargo build --release --locked -p momentum \
 && cargo clean --release --locked -p momentum -p momentum-actors -p momentum-models \
 && rm -rf src actors/src models/src load-tests/src device/src

# 2. The real sources and what the code embeds at compile time (config/default.toml, the
#    OpenAPI document, the SQL migrations, the web console's pages).
COPY config/ config/
COPY console/ console/
COPY migrations/ migrations/
COPY openapi.json ./
COPY models/ models/
COPY actors/ actors/
COPY load-tests/ load-tests/
COPY device/ device/
COPY src/ src/
RUN cargo build --release --locked -p momentum --bin momentum \
 && strip target/release/momentum

############################ runtime ############################
FROM debian:bookworm-slim

# ca-certificates for TLS to PostgreSQL; nothing else is needed at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 momentum \
 && useradd --system --uid 10001 --gid momentum --home-dir /var/lib/momentum \
      --shell /usr/sbin/nologin momentum \
 && mkdir -p /var/lib/momentum /etc/momentum /usr/share/momentum \
 && chown momentum:momentum /var/lib/momentum

COPY --from=builder /build/target/release/momentum /usr/local/bin/momentum
# Configuration: default.toml (for reference; the binary embeds it), alert rules, dashboard.
# Put overrides in /etc/momentum/momentum.toml or in MOMENTUM__SECTION__KEY variables.
COPY config/ /etc/momentum/
# The SQL schema, for operators (the binary embeds and applies it on start with store.kind =
# "postgres").
COPY migrations/ /usr/share/momentum/migrations/
RUN touch /etc/momentum/momentum.toml

ENV MOMENTUM__SERVER__BIND=0.0.0.0:8080 \
    MOMENTUM__STORE__PATH=/var/lib/momentum \
    MOMENTUM__LOGGING__FORMAT=json

# Event log, snapshots and models (embedded store); configuration.
VOLUME ["/var/lib/momentum", "/etc/momentum"]
EXPOSE 8080
USER momentum:momentum
WORKDIR /var/lib/momentum

# GET /healthz over bash's /dev/tcp: no curl in the image. The port follows
# MOMENTUM__SERVER__BIND.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${MOMENTUM__SERVER__BIND##*:} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["momentum"]
CMD ["serve", "--config", "/etc/momentum/momentum.toml"]
