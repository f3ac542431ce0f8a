#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback: etcd, kube-apiserver (RBAC on),
# kube-controller-manager, kube-scheduler and kwok (fake kubelets), registers kwok nodes
# (one of them a GPU node) and installs prometheus-operator's upstream monitoring CRDs.
#
#   tests/plane/up.sh [--dir DIR] [--no-monitoring-crds]
#
# DIR (default: .cluster at the repository root) receives the admin kubeconfig, the
# certificates, each component's log (logs/NAME.log) and pid (pids/NAME.pid).
# Running it again while the plane answers changes nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir="$root/.cluster"
monitoring_crds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --no-monitoring-crds) monitoring_crds=0; shift ;;
    *) echo "usage: $0 [--dir DIR] [--no-monitoring-crds]" >&2; exit 2 ;;
  esac
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
kubeconfig="$dir/kubeconfig"
# shellcheck source=versions.env
source "$here/versions.env"

say() { printf '>> %s\n' "$*" >&2; }
fail() {
  printf 'cluster-up failed: %s\n' "$*" >&2
  for log in "$dir"/logs/*.log; do [ -f "$log" ] && printf '   log: %s\n' "$log" >&2; done
  exit 1
}
alive() { [ -f "$dir/pids/$1.pid" ] && kill -0 "$(cat "$dir/pids/$1.pid")" 2>/dev/null; }
# The kubectl built with the plane (same version) once there is one, else the PATH's.
kc() {
  local k=kubectl
  [ -x "$dir/bin/kubectl" ] && k="$dir/bin/kubectl"
  "$k" --kubeconfig "$kubeconfig" "$@"
}

components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
all_alive=1
for c in "${components[@]}"; do alive "$c" || all_alive=0; done
if [ "$all_alive" = 1 ] && kc get --raw /readyz >/dev/null 2>&1; then
  # The tools beside it (kubectl, helm) follow the pinned versions even while it runs.
  ln -sfn "$("$here/build.sh")" "$dir/bin"
  say "control plane already running ($kubeconfig)"
  exit 0
fi
# Something is half up (or left over from a crash): stop it before starting afresh.
"$here/down.sh" --dir "$dir" >/dev/null 2>&1 || true

start=$(date +%s.%N)
bin=$("$here/build.sh")
rm -rf "$dir/etcd" "$dir/pki" "$dir/logs" "$dir/pids"
ln -sfn "$bin" "$dir/bin"
mkdir -p "$dir/pki" "$dir/logs" "$dir/pids"

# --- ports: free ones, chosen by the kernel -------------------------------------------------
read -r etcd_port etcd_peer_port api_port scheduler_port kwok_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# --- certificates, generated at every start --------------------------------------------------
pki="$dir/pki"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=voice-local-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  cat > serving.ext <<EOF
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1
extendedKeyUsage=serverAuth
EOF
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key \
    -out apiserver.csr 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile serving.ext -out apiserver.crt 2>/dev/null
  echo "extendedKeyUsage=clientAuth" > client.ext
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -keyout admin.key \
    -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile client.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)

b64() { base64 -w0 < "$1"; }
cat > "$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: voice-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: voice-local
  context: {cluster: voice-local, user: admin}
current-context: voice-local
EOF
chmod 600 "$kubeconfig"

# Each component runs in its own session, so a stray signal to the caller does not reach it.
launch() {
  local name=$1; shift
  setsid "$bin/$name" "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids/$name.pid"
}
# Node heartbeats: kwok renews each node's Lease in kube-node-lease (--node-lease-duration-seconds
# below, as a kubelet does every 10 s), which is what the node lifecycle controller watches. On 2
# busy cores a renewal can be late, so the grace period is longer than upstream's 50 s; the
# operator benchmark sets VOICE_PLANE_NODE_GRACE=1h for its 1,000-pod storm.
# High client QPS: thousands of pipelines make thousands of ReplicaSets and Pods, and the
# default 20 requests/s would measure the plane's throttling instead of the operator.
qps=(--kube-api-qps=500 --kube-api-burst=1000)

launch etcd --name=voice-local --data-dir="$dir/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" \
  --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="voice-local=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync --quota-backend-bytes=4294967296 --log-level=warn

# A /16 of Service addresses: the scale benchmark creates a Service per pipeline, thousands.
# VOICE_PLANE_APISERVER_V sets its klog verbosity (default 0): at 2 and above it logs the trace
# of every request that took over 500 ms ("Trace[...]"), which it does not at 0.
launch kube-apiserver --v="${VOICE_PLANE_APISERVER_V:-0}" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --secure-port="$api_port" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none --service-cluster-ip-range=10.96.0.0/16 \
  --authorization-mode=Node,RBAC --allow-privileged=true \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --max-requests-inflight=1000 --max-mutating-requests-inflight=500

deadline=$(( $(date +%s) + 90 ))
until kc get --raw /readyz >/dev/null 2>&1; do
  alive kube-apiserver || fail "kube-apiserver exited"
  alive etcd || fail "etcd exited"
  [ "$(date +%s)" -lt "$deadline" ] || fail "kube-apiserver not ready after 90s"
  sleep 0.2
done

launch kube-controller-manager --kubeconfig="$kubeconfig" --leader-elect=false --secure-port=0 \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --use-service-account-credentials=false \
  --node-monitor-grace-period="${VOICE_PLANE_NODE_GRACE:-5m}" \
  --concurrent-deployment-syncs=20 --concurrent-replicaset-syncs=20 --concurrent-gc-syncs=40 \
  "${qps[@]}"

cat > "$dir/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $kubeconfig
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
EOF
launch kube-scheduler --config="$dir/scheduler.yaml" --bind-address=127.0.0.1 \
  --secure-port="$scheduler_port"

# kwok plays each pod's stages (scheduled → running → ready) with 4 workers by default;
# VOICE_PLANE_KWOK_PARALLELISM changes that (the operator benchmark sets 32; tests keep 4).
kwok_config=()
if [ -n "${VOICE_PLANE_KWOK_PARALLELISM:-}" ]; then
  cat > "$dir/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  podPlayStageParallelism: $VOICE_PLANE_KWOK_PARALLELISM
EOF
  kwok_config=(--config="$dir/kwok.yaml")
fi
# --node-lease-duration-seconds: without it kwok v0.7.0 keeps no Lease and, by an inverted check
# in its default node stages (getDefaultNodeStages(lease = duration == 0)), patches node status
# only every 10-20 minutes, so every 5 minutes (the grace period) the node lifecycle controller
# marked all nodes not ready and all pods Ready=False, and kwok did not set them Ready again:
# whatever test spanned that moment waited for a pipeline that stayed unavailable.
launch kwok --kubeconfig="$kubeconfig" --manage-all-nodes=true --node-lease-duration-seconds=40 \
  --server-address="127.0.0.1:$kwok_port" --node-ip=127.0.0.1 "${kwok_config[@]}"

# --- nodes ----------------------------------------------------------------------------------
kc apply --server-side --field-manager=voice-local-plane -f "$here/nodes.yaml" >/dev/null \
  || fail "could not register the kwok nodes"

if [ "$monitoring_crds" = 1 ]; then
  KUBECTL="$dir/bin/kubectl" "$here/monitoring-crds.sh" "$kubeconfig" >/dev/null || fail "could not install the monitoring CRDs"
fi

kc wait --for=condition=Ready node --all --timeout=60s >/dev/null \
  || fail "kwok nodes did not become Ready"
for c in "${components[@]}"; do alive "$c" || fail "$c exited"; done
# A namespace's pods need its default ServiceAccount, which the controller-manager creates.
until kc get serviceaccount default -n default >/dev/null 2>&1; do sleep 0.2; done

elapsed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
cat >&2 <<EOF
>> control plane ready in ${elapsed}s: Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION
   export KUBECONFIG=$kubeconfig
   export PATH=$dir/bin:\$PATH   # optional: kubectl $K8S_VERSION, matching the server
   kubectl get nodes          # kwok nodes, one with nvidia.com/gpu: 8
   kubectl get crd            # servicemonitors, podmonitors, prometheusrules.monitoring.coreos.com
   logs: $dir/logs/   stop: make cluster-down
EOF
