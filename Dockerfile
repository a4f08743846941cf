# Builds the release binary and a small runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p quartet && cp target/release/quartet /quartet

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates qemu-utils \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /quartet /usr/local/bin/quartet
COPY deploy/quartet.compose.toml /etc/quartet/quartet.toml
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/quartet"]
CMD ["serve", "--config", "/etc/quartet/quartet.toml"]
