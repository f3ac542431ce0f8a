#!/usr/bin/env bash
# Stops every process that up.sh started, by the pids it recorded; logs stay for reading.
#   tests/plane/down.sh [--dir DIR]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir="$(cd "$here/../.." && pwd)/.cluster"
[ "${1:-}" = "--dir" ] && dir=$2
[ -d "$dir/pids" ] || exit 0
# Reverse start order: kwok and the controllers first, etcd last.
order=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
for name in "${order[@]}"; do
  f="$dir/pids/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    echo ">> stopped $name (pid $pid)" >&2
  fi
  rm -f "$f"
done
# etcd's data is thrown away: the next cluster-up starts from an empty cluster.
rm -rf "$dir/etcd"
echo ">> control plane stopped; logs kept in $dir/logs/" >&2
