#!/usr/bin/env bash
# Installs prometheus-operator's upstream CRDs (ServiceMonitor, PodMonitor, PrometheusRule)
# into the cluster of KUBECONFIG, taken from the prometheus-operator Go module at the pinned
# version, so that what the operator writes is validated by the real schemas.
#   tests/plane/monitoring-crds.sh KUBECONFIG
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
kubeconfig=$1
module=github.com/prometheus-operator/prometheus-operator
src=$(cd "$here/k8s" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
crds=()
for kind in servicemonitors podmonitors prometheusrules; do
  crds+=(-f "$src/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml")
done
"${KUBECTL:-kubectl}" --kubeconfig "$kubeconfig" apply --server-side --field-manager=voice-local-plane "${crds[@]}"
# kubectl wait fails at once ("accessor error: <nil>") on a CRD whose status.conditions is
# still null, so it is retried until the CRDs are Established or 60 s have passed.
for attempt in $(seq 1 60); do
  "${KUBECTL:-kubectl}" --kubeconfig "$kubeconfig" wait --for=condition=Established --timeout=60s \
    crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com \
    crd/prometheusrules.monitoring.coreos.com && break
  [ "$attempt" = 60 ] && exit 1
  sleep 1
done
