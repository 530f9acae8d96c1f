# The Sluice image: `sluice` (proxy, controller) and `sluice-demo-agent` (the agent
# simulator the chart's demo runs). Build: docker build -t ghcr.io/sluice-dev/sluice:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice -p sluice-demo-agent \
 && cp target/release/sluice target/release/sluice-demo-agent /usr/local/bin/

FROM debian:bookworm-slim
# Root certificates for https JWKS URLs.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice-demo-agent /usr/local/bin/
# Matches the chart's securityContext (runAsNonRoot).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
