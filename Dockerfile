# egressd: an egress allowlist proxy sidecar.
#   docker build --build-arg VERSION=$(git describe --tags --always) -t egressd .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same command CI runs (scripts/build.sh): static, trimmed, version stamped.
RUN scripts/build.sh /out/egressd "$VERSION"

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/egressd /usr/local/bin/egressd
COPY configs/egressd.yaml /etc/egressd/egressd.yaml
COPY configs/allowlist.d/ /etc/egressd/allowlist.d/
USER nonroot:nonroot
# proxy, metrics, admin
EXPOSE 3128 9090 9091
ENTRYPOINT ["/usr/local/bin/egressd"]
CMD ["serve", "--config", "/etc/egressd/egressd.yaml"]
