#!/bin/sh
# Builds the static egressd binary: what the Dockerfile runs, and what CI runs to
# check it, with the same flags. Usage: scripts/build.sh OUTPUT [VERSION]
set -eu
out=${1:?usage: scripts/build.sh OUTPUT [VERSION]}
version=${2:-${VERSION:-dev}}
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$out" ./cmd/egressd
