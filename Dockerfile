# One static, non-root image with every subcommand: `run` (the operator),
# `upload` (the upload CronJob's step) and `crd`.
FROM docker.io/library/rust:1.95-bookworm AS build
# amd64 or arm64 (docker buildx --platform); each builds natively, arm64
# under QEMU in the release workflow.
ARG TARGETARCH=amd64
RUN case "$TARGETARCH" in amd64) echo x86_64;; arm64) echo aarch64;; *) exit 1;; esac > /arch \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /arch)-unknown-linux-musl"
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --target "$(cat /arch)-unknown-linux-musl" \
 && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target "$(cat /arch)-unknown-linux-musl" --bin dbbackup-operator \
 && cp "target/$(cat /arch)-unknown-linux-musl/release/dbbackup-operator" /dbbackup-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /dbbackup-operator /dbbackup-operator
USER 65532:65532
ENTRYPOINT ["/dbbackup-operator"]
CMD ["run"]
