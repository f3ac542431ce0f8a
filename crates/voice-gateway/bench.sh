#!/usr/bin/env bash
# Gateway benchmarks against voice-sim (see the "Voice gateway" section of BENCHMARKS.md).
# Usage: crates/voice-gateway/bench.sh [quick]
# Two offered loads per level: back to back (each stream starts its next turn as soon as the last
#   ends: saturates the 2 cores, measures queueing) and paced (PACE_MS, default 5000: each stream
#   starts a turn every PACE_MS on average, Poisson arrivals, as users who pause between turns).
# Binaries: VOICE_GATEWAY_BIN, VOICE_SIM_BIN, VOICE_BENCH_BIN, or built here with --release.
# BASELINE_GATEWAY_BIN: another gateway build (e.g. an older commit) run against the same sim;
#   each overhead row is then measured for it right before the same row for this build.
# LEVELS: the overhead rows to run, as streams:turns:pace_ms words (e.g. "100:5:5000 1000:3:5000",
#   the paced rows only); default: all five (quick: three).
# Each overhead row also runs, right before it, against `voice-bench null-gateway` (build "null
#   (floor)"): the gateway's API doing no work, NULL_CHUNKS audio chunks per turn (default 1), on
#   the same gRPC stack. Its `through` is the bare client <-> server round trip at that load.
# TWIN_GAP_MS: pause between a turn and its direct twin (default 0; see voice-bench --help).
# Then the most streams sustained (`voice-bench capacity`): CAPACITY_FROM (1000; quick: 100)
#   paced streams, doubled up to CAPACITY_MAX (32000; quick: 400) while sustained with `through`
#   p99 <= CAPACITY_P99_MS (5), CAPACITY_TURNS (2) turns each, then one bisection step.
# PIN=1: gateway(s) on CPU 0, sim and bench client on CPU 1 (taskset); other load is not excluded.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
quick="${1:-}"
# Outside the checkout, as in the Makefile, so a fresh clone reuses the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voice-operator/target}"
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
if [ "${PIN:-}" = 1 ]; then gw_cpu=(taskset -c 0); other_cpu=(taskset -c 1); else gw_cpu=(); other_cpu=(); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One short sentence per reply: the overhead runs measure the path to the first audio.
echo '{"*": "Sure, here is a short answer for you."}' > "$work/short.json"

start() { # start PROFILE [sim args…]: sets RIVA LLM GRPC ADMIN GW_PID
  local profile="$1"; shift
  "${other_cpu[@]}" "$VOICE_SIM_BIN" --riva-addr 127.0.0.1:0 --llm-addr 127.0.0.1:0 --profile "$profile" "$@" \
    > "$work/sim.out" 2>/dev/null &
  pids+=($!); SIM_PID=$!
  for _ in $(seq 100); do [ -s "$work/sim.out" ] && break; sleep 0.05; done
  RIVA="$(sed -n 's/.*riva=\([^ ]*\).*/\1/p' "$work/sim.out")"
  LLM="$(sed -n 's/.*llm=\([^ ]*\).*/\1/p' "$work/sim.out")"
  GRPC="$(free_port)"; ADMIN="$(free_port)"
  start_gw "$VOICE_GATEWAY_BIN" "$GRPC" "$ADMIN"; GW_PID=$STARTED
  BASE_PID=""
  if [ -n "${BASELINE_GATEWAY_BIN:-}" ]; then
    GRPC_B="$(free_port)"; ADMIN_B="$(free_port)"
    start_gw "$BASELINE_GATEWAY_BIN" "$GRPC_B" "$ADMIN_B"; BASE_PID=$STARTED
  fi
  "${gw_cpu[@]}" "$VOICE_BENCH_BIN" null-gateway --chunks "${NULL_CHUNKS:-1}" > "$work/null.out" &
  pids+=($!); NULL_PID=$!
  for _ in $(seq 100); do [ -s "$work/null.out" ] && break; sleep 0.05; done
  NULL_ADDR="$(sed -n 's/^null-gateway listening on //p' "$work/null.out")"
}
start_gw() { # start_gw BIN GRPC_PORT ADMIN_PORT: sets STARTED
  RIVA_URI="$RIVA" LLM_SERVICE_URL="http://$LLM/v1" GRPC_PORT="$2" METRICS_PORT="$3" \
    BIND_ADDRESS=127.0.0.1 LOG_LEVEL=error MAX_CONCURRENT_STREAMS="${MAX_STREAMS:-5000}" "${gw_cpu[@]}" "$1" &
  pids+=($!); STARTED=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && break; sleep 0.05; done
}
stop() {
  kill "$GW_PID" $BASE_PID "$NULL_PID" "$SIM_PID" 2>/dev/null || true
  wait "$GW_PID" $BASE_PID "$NULL_PID" "$SIM_PID" 2>/dev/null || true
}
bench() { "${other_cpu[@]}" "$VOICE_BENCH_BIN" "$@"; }
overhead_row() { # overhead_row LABEL TARGET PID: one overhead row of the current level
  echo "| $profile | $1 $(bench overhead --target "$2" --riva "$RIVA" --llm "$LLM" \
    --streams "$n" --turns "$turns" --pace-ms "$p" --twin-gap-ms "${TWIN_GAP_MS:-0}" --gateway-pid "$3" --sim-pid "$SIM_PID")"
}

# streams:turns:pace_ms (0: back to back)
pace="${PACE_MS:-5000}"
if [ -n "${LEVELS:-}" ]; then
  levels="$LEVELS"
elif [ "$quick" = quick ]; then
  levels="1:20:0 100:3:0 100:3:$pace"
else
  levels="1:200:0 100:10:0 1000:3:0 100:5:$pace 1000:3:$pace"
fi
echo "## Gateway overhead on time to first audio (ms); CPU per turn (ms) of each process"
echo "| profile | build | load | streams | turns | turns/s | late starts | gateway p50 | gateway p99 | direct p50 | direct p99 | p50 diff | p99 diff | paired p50 | paired p99 | in-gateway p50 | in-gateway p99 | through p50 | through p99 | gateway CPU | sim CPU | bench CPU | failed streams |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for profile in zero seed; do
  start "$profile" --script "$work/short.json"
  for lv in $levels; do
    IFS=: read -r n turns p <<< "$lv"
    overhead_row "null (floor)" "$NULL_ADDR" "$NULL_PID"
    if [ -n "$BASE_PID" ]; then overhead_row baseline "127.0.0.1:$GRPC_B" "$BASE_PID"; fi
    overhead_row HEAD "127.0.0.1:$GRPC" "$GW_PID"
  done
  stop
done
echo
echo "## Pipelining: turn completion (ms) vs ideal bound and sequential sum (seed profile, 4-sentence reply)"
echo "| turns | gateway p50 | bound p50 | sequential p50 | gateway/bound p50 | gateway/bound p99 | gateway/sequential p50 |"
echo "|---|---|---|---|---|---|---|"
start seed
bench pipeline --target "127.0.0.1:$GRPC" --riva "$RIVA" --llm "$LLM" --turns "$([ "$quick" = quick ] && echo 3 || echo 10)"
echo
echo "## Memory per idle stream (gateway RSS, KiB)"
echo "| streams | RSS before | RSS after | KiB per stream |"
echo "|---|---|---|---|"
bench idle-memory --target "127.0.0.1:$GRPC" --pid "$GW_PID" --streams "$([ "$quick" = quick ] && echo 100 || echo 1000)"
stop
echo
# The most streams sustained: paced streams through the gateway alone (no direct twins), each
# starting a turn every PACE_MS (phases spread evenly: a steady N / PACE turns a second), N doubled
# from CAPACITY_FROM until a level is not sustained (a stream failed, a turn started late because
# the one before it took longer than the pace, or `through` p99 went over CAPACITY_P99_MS, the
# 1,000-stream target), each level on a fresh sim and gateway.
cap_p99="${CAPACITY_P99_MS:-5}"
if [ "$quick" = quick ]; then cap_n="${CAPACITY_FROM:-100}"; cap_max="${CAPACITY_MAX:-400}";
else cap_n="${CAPACITY_FROM:-1000}"; cap_max="${CAPACITY_MAX:-32000}"; fi
echo "## The most streams sustained on 2 cores (seed profile; each stream one turn every $pace ms, phases spread evenly; gateway, sim and bench client on the same cores)"
echo "| streams | offered turns/s | served turns/s | turns | late starts | first audio p50 | first audio p99 | through p50 | through p99 | in-gateway p99 | gateway cores | gateway peak RSS (MiB) | failed streams | sustained (through p99 <= $cap_p99 ms) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
cap_level() { # cap_level N: prints the level's row; true if sustained
  local row
  start seed --script "$work/short.json"
  row="$(bench capacity --target "127.0.0.1:$GRPC" --streams "$1" --turns "${CAPACITY_TURNS:-2}" \
    --pace-ms "$pace" --p99-limit-ms "$cap_p99" --gateway-pid "$GW_PID")"
  stop
  echo "$row"
  [[ "$row" == *"| yes |" ]]
}
best=0 failed_at=0
export MAX_STREAMS=$((cap_max * 2))
while [ "$cap_n" -le "$cap_max" ]; do
  if cap_level "$cap_n"; then best=$cap_n; else failed_at=$cap_n; break; fi
  cap_n=$((cap_n * 2))
done
# One step of bisection between the last level sustained and the first not.
if [ "$best" -gt 0 ] && [ "$failed_at" -gt 0 ]; then
  mid=$(((best + failed_at) / 2))
  if cap_level "$mid"; then best=$mid; fi
fi
unset MAX_STREAMS
echo
echo "Most streams sustained (of the levels tried): $best"
echo
echo "## Cost of one histogram observation"
echo "| observations | ns per observation |"
echo "|---|---|"
"$VOICE_BENCH_BIN" histogram
