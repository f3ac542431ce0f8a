# syntax=docker/dockerfile:1.7
# Container images of the operator and the gateway (and the simulator, for demos), built from
# one workspace build:
#   docker build --target operator -t voice-operator .
#   docker build --target gateway  -t voice-gateway  .
#   docker build --target sim      -t voice-sim      .
# Final images are distroless (glibc, CA certificates, no shell) and run as the non-root user
# 65532; they expect a read-only root filesystem. Protobuf code is generated with a vendored
# protoc, and the operator's allocator (jemalloc) is built with the rust image's C toolchain, so
# the builder needs nothing beyond that image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p voice-operator -p voice-gateway -p voice-sim -p voice-client \
 && mkdir -p /out \
 && cp target/release/voice-operator target/release/voice-gateway target/release/voice-sim \
       target/release/voice-client /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/voice-operator /usr/local/bin/voice-operator
USER 65532:65532
# Admin port (ADMIN_ADDR, default 0.0.0.0:8081): /metrics, /livez, /readyz.
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/voice-operator"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /out/voice-gateway /usr/local/bin/voice-gateway
COPY --from=build /out/voice-client /usr/local/bin/voice-client
USER 65532:65532
# gRPC (StreamAudio, grpc.health.v1, reflection) and metrics (/metrics, /livez, /readyz).
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/voice-gateway"]

FROM gcr.io/distroless/cc-debian12:nonroot AS sim
COPY --from=build /out/voice-sim /usr/local/bin/voice-sim
USER 65532:65532
# A simulator of Riva (gRPC) and an OpenAI-compatible LLM (HTTP): no GPU, no models.
EXPOSE 50051 8000
ENTRYPOINT ["/usr/local/bin/voice-sim"]
CMD ["--riva-addr", "0.0.0.0:50051", "--llm-addr", "0.0.0.0:8000", "--profile", "seed"]
