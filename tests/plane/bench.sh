#!/usr/bin/env bash
# Measures the local control plane's warm start: binaries cached, from nothing running to a
# ready API with Ready kwok nodes and the monitoring CRDs installed (what `make cluster-up`
# waits for). Starts and stops a private plane RUNS times (default 5) in a temporary dir.
#   tests/plane/bench.sh [RUNS]
# The cold build (no Go module or build cache) is measured by:
#   GOMODCACHE=$(mktemp -d) GOCACHE=$(mktemp -d) VOICE_CACHE_DIR=$(mktemp -d) \
#     bash -c 'time tests/plane/build.sh'
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-5}
"$here/build.sh" >/dev/null
dir=$(mktemp -d)
trap '"$here/down.sh" --dir "$dir" >/dev/null 2>&1; rm -rf "$dir"' EXIT
times=()
for i in $(seq 1 "$runs"); do
  t0=$(date +%s.%N)
  "$here/up.sh" --dir "$dir" 2>/dev/null
  t1=$(date +%s.%N)
  "$here/down.sh" --dir "$dir" 2>/dev/null
  times+=("$(python3 -c "print(round($t1 - $t0, 2))")")
  echo "run $i: ${times[-1]} s" >&2
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "warm start to ready plane: median %.1f s, min %.1f s, max %.1f s over %d runs\n", a[int((NR+1)/2)], a[1], a[NR], NR}'
