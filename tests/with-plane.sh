#!/usr/bin/env bash
# Runs a command with the local control plane up. A plane that was already running is
# reused and left running; one started here is stopped when the command ends, pass or fail.
#   tests/with-plane.sh COMMAND...
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
started=0
if ! "$root/.cluster/bin/kubectl" --kubeconfig "$root/.cluster/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
  # -o: the plane's daemons must not inherit the lock, or it is held while they run.
  flock -o "$root/.cluster.lock" "$here/plane/up.sh" || exit 1
  started=1
fi
# Tests use the kubectl built with the plane: the same version as the API server.
PATH="$root/.cluster/bin:$PATH" "$@"
status=$?
[ "$started" = 1 ] && "$here/plane/down.sh"
exit $status
