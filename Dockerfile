# Skiff's image: one static binary in an empty image, run as a non-root user.
#
#   docker build -t skiff .                     # builds the binary in the first stage
#   docker build --target init -t skiff-init .  # the transparent-mode init image
#   docker run --rm skiff version
#   docker run --rm -v "$PWD/examples:/etc/skiff:ro" skiff run --config /etc/skiff/dev.yaml
#
# The binary is linked statically against musl, so the image needs no libc and DNS lookups
# (DNS endpoints, passthrough) use /etc/resolv.conf as mounted by the kubelet.
#
# To package a binary built elsewhere instead (how this file is checked on machines without
# a container registry), put a static binary at target/static/skiff and run
#   buildah bud --isolation chroot --build-arg BINARY=prebuilt -t skiff .

ARG BINARY=build

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p skiff \
 && mkdir -p /out && cp target/release/skiff /out/skiff

FROM scratch AS prebuilt
COPY target/static/skiff /out/skiff

FROM ${BINARY} AS binary

# The init image of transparent mode (`skiff inject --transparent`): the same binary with
# nft and iptables, which `skiff init-iptables` runs. It needs root and NET_ADMIN, runs once
# per pod and exits. Build it with `--target init`; the default target is the proxy image.
FROM debian:bookworm-slim AS init
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=binary /out/skiff /usr/local/bin/skiff
ENTRYPOINT ["/usr/local/bin/skiff"]
CMD ["init-iptables"]

FROM scratch
COPY --from=binary /out/skiff /skiff
# A fixed non-root uid, so transparent interception rules can exclude the proxy's own
# traffic by owner.
USER 2102:2102
EXPOSE 4140 4143 4191
ENTRYPOINT ["/skiff"]
CMD ["run", "--config", "/etc/skiff/skiff.yaml"]
