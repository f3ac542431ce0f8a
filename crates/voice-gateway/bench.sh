#!/usr/bin/env bash
# Gateway benchmarks against voice-sim (see the "Voice gateway" section of BENCHMARKS.md).
# Usage: crates/voice-gateway/bench.sh [quick]
# Binaries: VOICE_GATEWAY_BIN, VOICE_SIM_BIN, VOICE_BENCH_BIN, or built here with --release.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
quick="${1:-}"
if [ -z "${VOICE_GATEWAY_BIN:-}" ] || [ -z "${VOICE_SIM_BIN:-}" ] || [ -z "${VOICE_BENCH_BIN:-}" ]; then
  (cd "$root" && cargo build -q --release -p voice-gateway -p voice-sim -p voice-client)
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  VOICE_GATEWAY_BIN="${VOICE_GATEWAY_BIN:-$target/release/voice-gateway}"
  VOICE_SIM_BIN="${VOICE_SIM_BIN:-$target/release/voice-sim}"
  VOICE_BENCH_BIN="${VOICE_BENCH_BIN:-$target/release/voice-bench}"
fi
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One short sentence per reply: the overhead runs measure the path to the first audio.
echo '{"*": "Sure, here is a short answer for you."}' > "$work/short.json"

start() { # start PROFILE [sim args…]: sets RIVA LLM GRPC ADMIN GW_PID
  local profile="$1"; shift
  "$VOICE_SIM_BIN" --riva-addr 127.0.0.1:0 --llm-addr 127.0.0.1:0 --profile "$profile" "$@" \
    > "$work/sim.out" 2>/dev/null &
  pids+=($!); SIM_PID=$!
  for _ in $(seq 100); do [ -s "$work/sim.out" ] && break; sleep 0.05; done
  RIVA="$(sed -n 's/.*riva=\([^ ]*\).*/\1/p' "$work/sim.out")"
  LLM="$(sed -n 's/.*llm=\([^ ]*\).*/\1/p' "$work/sim.out")"
  GRPC="$(free_port)"; ADMIN="$(free_port)"
  RIVA_URI="$RIVA" LLM_SERVICE_URL="http://$LLM/v1" GRPC_PORT="$GRPC" METRICS_PORT="$ADMIN" \
    BIND_ADDRESS=127.0.0.1 LOG_LEVEL=error MAX_CONCURRENT_STREAMS=5000 "$VOICE_GATEWAY_BIN" &
  pids+=($!); GW_PID=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.05; done
}
stop() { kill "$GW_PID" "$SIM_PID" 2>/dev/null || true; wait "$GW_PID" "$SIM_PID" 2>/dev/null || true; }

if [ "$quick" = quick ]; then levels="1:20 100:3"; else levels="1:200 100:10 1000:3"; fi
echo "## Gateway overhead on time to first audio (ms)"
echo "| profile | streams | turns | gateway p50 | gateway p99 | direct p50 | direct p99 | p50 diff | p99 diff | paired p50 | paired p99 | failed streams |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for profile in zero seed; do
  start "$profile" --script "$work/short.json"
  for lv in $levels; do
    n="${lv%%:*}"; turns="${lv##*:}"
    row="$("$VOICE_BENCH_BIN" overhead --target "127.0.0.1:$GRPC" --riva "$RIVA" --llm "$LLM" \
      --streams "$n" --turns "$turns")"
    echo "| $profile ${row#|}" | sed 's/^| \([a-z]*\) | /| \1 | /'
  done
  stop
done
echo
echo "## Pipelining: turn completion (ms) vs ideal bound and sequential sum (seed profile, 4-sentence reply)"
echo "| turns | gateway p50 | bound p50 | sequential p50 | gateway/bound p50 | gateway/bound p99 | gateway/sequential p50 |"
echo "|---|---|---|---|---|---|---|"
start seed
"$VOICE_BENCH_BIN" pipeline --target "127.0.0.1:$GRPC" --riva "$RIVA" --llm "$LLM" --turns "$([ "$quick" = quick ] && echo 3 || echo 10)"
echo
echo "## Memory per idle stream (gateway RSS, KiB)"
echo "| streams | RSS before | RSS after | KiB per stream |"
echo "|---|---|---|---|"
"$VOICE_BENCH_BIN" idle-memory --target "127.0.0.1:$GRPC" --pid "$GW_PID" --streams "$([ "$quick" = quick ] && echo 100 || echo 1000)"
stop
echo
echo "## Cost of one histogram observation"
echo "| observations | ns per observation |"
echo "|---|---|"
"$VOICE_BENCH_BIN" histogram
