#!/usr/bin/env bash
# bench/run.sh [duration]: regcache beside its anchors on this machine, in one run.
# Installs what it needs (Debian wrk and nginx; distribution's registry v3.1.2 by go install),
# builds regcache and the bench tools, then runs bench/run (see its doc comment). Every
# server binds 127.0.0.1; everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
dur="${1:-2s}"

need=()
for tool in wrk nginx taskset; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=("${need[@]/taskset/util-linux}")
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

out=bench/out/bin
mkdir -p "$out"
gobin="$(go env GOPATH)/bin"
if [ ! -x "$gobin/registry" ]; then
  echo "installing distribution's registry v3.1.2 (takes a minute or two)"
  go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2
fi
cp "$gobin/registry" "$out/registry"
go build -o "$out/regcache" ./cmd/regcache
go build -o "$out/ceiling" ./bench/ceiling
go build -o "$out/load" ./bench/load
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3)"
shift || true
go run ./bench/run -bin "$out" -d "$dur" "$@"
