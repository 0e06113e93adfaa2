#!/usr/bin/env bash
# scripts/soak.sh [duration, default 120s]: a bounded soak of regcache against an in-process
# upstream that keeps failing in turns, with mixed hits, misses, blobs, tag lists and bad
# requests at high concurrency (bench/soak). Prints RSS and goroutines over time, requests
# by kind/status/X-Cache, goroutines at the end, and fails if any answer was corrupt.
# Everything binds 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out/bin
go build -o bench/out/bin/regcache ./cmd/regcache
go run ./bench/soak -bin bench/out/bin/regcache -d "${1:-120s}"
