# syntax=docker/dockerfile:1
# Inferno in a container: built with cargo on the official Rust image, run on Debian slim as
# an unprivileged user. README, "Container image". Build and run:
#   docker build -t inferno .
#   docker build -t inferno-cuda --build-arg FEATURES=cuda .   # needs a CUDA base image too
#   docker run -p 8080:8080 -v inferno-data:/var/lib/inferno inferno
# tests/deploy.rs lints this file with hadolint and checks its structure; it is not built
# there (no image registry on the test machines).

# ---- build --------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# llama.cpp is compiled by llama-cpp-sys-2: CMake, and libclang for its bindgen step.
# Versions come with Debian bookworm's security updates; pinning them would break each
# point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cargo features, e.g. "cuda" or "vulkan" (README, "GPU builds"); empty: the CPU build.
ARG FEATURES=""
# .cargo/config.toml applies: x86-64-v3 (AVX2) and llama.cpp at -O3.
RUN cargo build --release --locked --bin inferno --features "${FEATURES}" \
    && install -D -m 0755 target/release/inferno /out/inferno

# ---- run ----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# The binary links libgomp (llama.cpp's OpenMP threads) and libstdc++; ca-certificates: TLS
# to NATS and PostgreSQL; curl: the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/inferno \
        --shell /usr/sbin/nologin inferno \
    && install -d -o inferno -g inferno -m 0700 /var/lib/inferno /var/lib/inferno/models
COPY --from=build /out/inferno /usr/local/bin/inferno
# Event log, JWT secret, signing key and models live in the volume. On first start the
# generated admin password goes to /var/lib/inferno/initial-admin-password (no terminal);
# set INFERNO_ADMIN_PASSWORD (from a secret) to choose it instead.
ENV INFERNO_SERVER__BIND=0.0.0.0:8080 \
    INFERNO_STORAGE__DATA_DIR=/var/lib/inferno \
    INFERNO_MODELS__DIR=/var/lib/inferno/models \
    INFERNO_LOGGING__FORMAT=json
USER 10001:10001
WORKDIR /var/lib/inferno
VOLUME ["/var/lib/inferno"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
# SIGTERM (docker stop) drains in-flight requests for [server] shutdown_timeout_secs (30):
# give `docker stop` a longer timeout (-t 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/inferno", "serve"]
CMD []
