# syntax=docker/dockerfile:1
# One image, every role: `roster lb`, `roster inject`, and the injected
# sidecar `roster-agent` (the agent alone: same CLI as `roster agent`, less
# resident memory). `make image` builds it.

FROM rust:1-bookworm AS build
# cmake builds libz-ng-sys (pingora's compression).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin roster --bin roster-agent \
 && install -D -m 0755 target/release/roster /out/roster \
 && install -D -m 0755 target/release/roster-agent /out/roster-agent

# glibc + libgcc, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/roster /out/roster-agent /usr/local/bin/
USER 65532:65532
EXPOSE 8000 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/roster"]
CMD ["--help"]
