# Multi-stage build: compile with the Rust toolchain, run on a slim image as
# a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY projections ./projections
RUN cargo build --release --locked --bin ledger

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 ledger
COPY --from=build /src/target/release/ledger /usr/local/bin/ledger
USER ledger
ENV LEDGER_LISTEN=0.0.0.0:8080 LEDGER_GRPC_LISTEN=0.0.0.0:8000
EXPOSE 8080 8000
ENTRYPOINT ["ledger"]
CMD ["serve"]
