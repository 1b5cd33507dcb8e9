# tunehook as a container: build with the official Rust image, run on Debian slim as a
# non-root user, with the database on the /data volume.
#
#   docker build -t tunehook .
#   docker run -p 8080:8080 -v tunehook:/data tunehook

FROM docker.io/library/rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first: this layer stays cached while only the code changes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin tunehook \
    && rm -rf src
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tunehook

FROM docker.io/library/debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home tunehook \
    && mkdir -p /data /app/config \
    && chown tunehook:tunehook /data
COPY --from=build /src/target/release/tunehook /usr/local/bin/tunehook
COPY config/tunehook.toml /app/config/tunehook.toml
WORKDIR /app
ENV TUNEHOOK_LISTEN=0.0.0.0:8080 \
    TUNEHOOK_DATABASE_URL=sqlite:///data/tunehook.db \
    TUNEHOOK_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["tunehook", "healthcheck"]
ENTRYPOINT ["tunehook"]
CMD ["serve"]
