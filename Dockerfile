# The Sluice image: `sluice` (proxy, controller) and `sluice-demo-agent` (the agent
# simulator the chart's demo runs), tagged with the release version that the binaries
# and the chart share. Build it with `make image` (docker, or CONTAINER=podman), which
# runs:
#   docker build --build-arg SLUICE_VERSION=0.1.0 --build-arg SLUICE_GIT_COMMIT=$(git rev-parse --short HEAD) \
#     -t ghcr.io/sluice-dev/sluice:0.1.0 .
FROM rust:1.95-bookworm AS build
# The build context has no .git (.dockerignore): the commit that `sluice --version`
# prints comes from here.
ARG SLUICE_GIT_COMMIT=unknown
WORKDIR /src
COPY . .
RUN SLUICE_GIT_COMMIT="$SLUICE_GIT_COMMIT" cargo build --release --locked -p sluice -p sluice-demo-agent \
      --features sluice/otlp \
 && cp target/release/sluice target/release/sluice-demo-agent /usr/local/bin/

FROM debian:bookworm-slim
ARG SLUICE_VERSION=0.1.0
ARG SLUICE_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Sluice, a Kubernetes-native gateway for AI agents" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="$SLUICE_VERSION" \
      org.opencontainers.image.revision="$SLUICE_GIT_COMMIT"
# Root certificates for https JWKS URLs.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice-demo-agent /usr/local/bin/
# Matches the chart's securityContext (runAsNonRoot, runAsUser 65532).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
