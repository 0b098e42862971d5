# Ward's container image: a multi-stage build, a small runtime image with the `ward` binary and
# the built-in rules and pipelines. It cannot be built on the development machine (no Docker
# engine there), so it is kept deliberately plain; the Helm chart points at the image it makes.
#
#   docker build -t ward:dev .
#   docker run --rm ward:dev --help

FROM rust:1-bookworm AS build
WORKDIR /src
# rdkafka-sys builds librdkafka from source (C toolchain from the image; OpenSSL for TLS).
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin ward && strip target/release/ward

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ward --create-home ward
COPY --from=build /src/target/release/ward /usr/local/bin/ward
COPY --from=build /src/pipelines /usr/share/ward/pipelines
COPY --from=build /src/rules/sigma /usr/share/ward/rules/sigma
USER 10001
WORKDIR /var/lib/ward
ENTRYPOINT ["/usr/local/bin/ward"]
CMD ["run", "/usr/share/ward/pipelines/detection.yaml"]
