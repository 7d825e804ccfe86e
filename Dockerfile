# syntax=docker/dockerfile:1
# One image for every subcommand: `docker run faultline serve|worker|migrate|jobs|…`.

# --- build: dependencies first, so they are cached until Cargo.toml or Cargo.lock change.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates/faultline/Cargo.toml crates/faultline/
COPY crates/faultline-cli/Cargo.toml crates/faultline-cli/
COPY crates/faultline-pg/Cargo.toml crates/faultline-pg/
RUN for c in faultline faultline-pg; do mkdir -p crates/$c/src && touch crates/$c/src/lib.rs; done \
    && mkdir -p crates/faultline-cli/src && echo 'fn main() {}' > crates/faultline-cli/src/main.rs \
    && cargo build --release --locked -p faultline-queue-cli --features otel \
    && rm -rf crates/*/src
COPY crates crates
RUN touch crates/faultline/src/lib.rs crates/faultline-pg/src/lib.rs crates/faultline-cli/src/main.rs \
    && cargo build --release --locked -p faultline-queue-cli --features otel

# --- runtime: slim, non-root.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin faultline
COPY --from=build /src/target/release/faultline /usr/local/bin/faultline
USER faultline
EXPOSE 8000 9464
# The API's liveness; compose overrides it for workers (their /metrics instead).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["faultline"]
CMD ["serve", "--listen", "0.0.0.0:8000"]
