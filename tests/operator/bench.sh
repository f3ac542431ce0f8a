#!/usr/bin/env bash
# The operator's benchmarks (BENCHMARKS.md, section "Operator"), each on a fresh private plane:
# the plane alone making SCALE bare gateway Deployments available; the writes alone (SCALE
# pipelines' children and two status writes each, sent without an operator); then apply → children
# latency over LATENCY pipelines, and SCALE pipelines until all Ready with the operator's peak
# RSS, CPU, API requests per pipeline and steady-state writes per minute.
#   tests/operator/bench.sh [LATENCY=100] [SCALE=1000] [STEADY_SECONDS=60]
#   BASELINE_OPERATOR=/path/to/older/voice-operator tests/operator/bench.sh ...
#     also runs an older build first, side by side in the same table (build it from an older
#     commit into another target dir, e.g. git worktree + CARGO_TARGET_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# Outside the checkout, as in the Makefile, so a fresh clone reuses the build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/voice-operator/target}
# The benchmark's private planes (tests/plane/up.sh; tests keep the defaults): a 1-hour node
# grace period, a margin for the 1,000-pod storm on 2 cores (the node lifecycle controller marks
# every pod of a node not ready when the node's Lease is not renewed in time; until kwok was given
# --node-lease-duration-seconds it kept no Lease at all, which was the "no renewal for 5 minutes"
# seen in an earlier run); 32 kwok pod workers instead of 4, so kwok is not what limits the
# plane-alone baseline.
export VOICE_PLANE_NODE_GRACE=${VOICE_PLANE_NODE_GRACE:-1h}
export VOICE_PLANE_KWOK_PARALLELISM=${VOICE_PLANE_KWOK_PARALLELISM-32}
cargo build -q --release --locked -p voice-operator -p operator-tests --bin voice-operator --bin operator-bench
"$CARGO_TARGET_DIR/release/operator-bench" --operator "$CARGO_TARGET_DIR/release/voice-operator" \
  --baseline-operator "${BASELINE_OPERATOR:-}" \
  --latency "${1:-100}" --scale "${2:-1000}" --steady-seconds "${3:-60}"
