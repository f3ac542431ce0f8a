#!/usr/bin/env bash
# `make demo-down`: stops every process `make demo` started (by the pids it recorded), then
# the local control plane. --keep-plane leaves the plane running.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo="$root/.demo"
for f in "$demo"/pids/*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    echo ">> stopped $(basename "$f" .pid) (pid $pid)" >&2
  fi
  rm -f "$f"
done
[ "${1:-}" = "--keep-plane" ] || "$root/tests/plane/down.sh"
