#!/usr/bin/env bash
# bench/fleet.sh: what the shared Redis tier buys a fleet. Starts one in-memory upstream
# (bench/load upstream), one redis-server, and two fleets of 3 regcache replicas each on
# 127.0.0.1: one sharing Redis, one without. Sends the same cold bursts to both (clients
# spread round-robin over the replicas) and prints, per burst, the upstream requests the
# fleet made (summed from the replicas' /metrics) and client latencies. Then restarts one
# shared replica and asks it for tags the fleet already knows. Everything binds 127.0.0.1
# and everything started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
out=bench/out/bin
mkdir -p "$out"
go build -o "$out/regcache" ./cmd/regcache
go build -o "$out/load" ./bench/load
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

up=127.0.0.1:5710
redis_port=6391
"$out/load" upstream -listen "$up" -tags 2000 -repos 1 2>"$work/upstream.log" & pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --loglevel warning >"$work/redis.log" 2>&1 & pids+=($!)

wait_http() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
config() { # listen, with-redis
  printf 'listen: %s\ndefault_upstream: bench.local\ncache:\n  tag_ttl: 10m\n' "$1"
  [ "$2" = yes ] && printf '  redis:\n    addr: 127.0.0.1:%s\n' "$redis_port"
  printf 'upstreams:\n  - name: bench.local\n    url: http://%s\n' "$up"
}
declare -A replica_pid
start_replica() { # port, with-redis
  config "127.0.0.1:$1" "$2" >"$work/rc-$1.yaml"
  "$out/regcache" -config "$work/rc-$1.yaml" -access-log=false -log-level=warn 2>>"$work/rc-$1.log" &
  replica_pid[$1]=$!
  pids+=($!)
  wait_http "http://127.0.0.1:$1/healthz"
}
for p in 5231 5232 5233; do start_replica "$p" yes; done
for p in 5241 5242 5243; do start_replica "$p" no; done
wait_http "http://$up/v2/"
shared=http://127.0.0.1:5231,http://127.0.0.1:5232,http://127.0.0.1:5233
solo=http://127.0.0.1:5241,http://127.0.0.1:5242,http://127.0.0.1:5243

burst() { # bases, method, offset, clients
  "$out/load" burst -base "$1" -method "$2" -path-fmt /v2/fleet/app0/manifests/v%d -offset "$3" -tags 50 -clients "$4"
}
echo "machine: $(nproc) cores, $(go version | cut -d' ' -f3), $(redis-server --version | cut -d' ' -f1-3)"
echo
echo "| burst (cold, 50 tags, clients round-robin over 3 replicas) | fleet | upstream HEAD | upstream GET | errors | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
row() { # label, fleet, json
  python3 -c 'import json,sys; r=json.loads(sys.argv[3]); print("| %s | %s | %d | %d | %d | %.1f | %.1f |" % (sys.argv[1], sys.argv[2], r["upstream_head"], r["upstream_get"], r["errors"], r["p50_ms"], r["p99_ms"]))' "$1" "$2" "$3"
}
row "1,000 HEAD clients" "3 replicas, no Redis" "$(burst "$solo" HEAD 0 1000)"
row "1,000 HEAD clients" "3 replicas + Redis" "$(burst "$shared" HEAD 0 1000)"
row "1,000 GET clients" "3 replicas, no Redis" "$(burst "$solo" GET 100 1000)"
row "1,000 GET clients" "3 replicas + Redis" "$(burst "$shared" GET 100 1000)"

# A replica restarts (a rollout, an eviction): with Redis it warms without upstream.
kill "${replica_pid[5231]}"; wait "${replica_pid[5231]}" 2>/dev/null || true
start_replica 5231 yes
kill "${replica_pid[5241]}"; wait "${replica_pid[5241]}" 2>/dev/null || true
start_replica 5241 no
row "300 GET clients, restarted replica, known tags" "no Redis" "$(burst http://127.0.0.1:5241 GET 100 300)"
row "300 GET clients, restarted replica, known tags" "with Redis" "$(burst http://127.0.0.1:5231 GET 100 300)"
