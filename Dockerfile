# pinecone-admin-proxy: a static-ish Rust binary on a distroless base, run as a numeric
# non-root user. No HEALTHCHECK: orchestrators probe /healthz, /readyz and /startupz on
# the ops port.
#
#   docker build -t pinecone-admin-proxy .

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The Admin API's specifications: build.rs makes the policy's route table of them.
COPY spec ./spec
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/pinecone-admin-proxy /out/pinecone-admin-proxy

# glibc and libgcc only; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pinecone-admin-proxy /usr/local/bin/pinecone-admin-proxy
USER 65532:65532
EXPOSE 8484 9484
ENTRYPOINT ["/usr/local/bin/pinecone-admin-proxy"]
