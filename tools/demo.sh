#!/usr/bin/env bash
# `make demo`: the whole product on this machine, from nothing.
#   1. system packages   2. binaries   3. local Kubernetes control plane   4. CRDs
#   5. the operator      6. a VoicePipeline, until Ready
#   7. the gateway against the backend simulator, configured as the operator rendered it
#   8. one spoken turn through the gateway with voice-client
# It exits leaving everything running; `make demo-down` stops what it started.
# A failed step names itself and its log (.demo/logs/STEP.log).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
demo="$root/.demo"
namespace=voice-demo
pipeline=demo
mkdir -p "$demo/logs" "$demo/pids" "$demo/speech"
export KUBECONFIG="$root/.cluster/kubeconfig"
target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/voice-operator/target}
bin="$target_dir/debug"

total=8
n=0
step() { n=$((n + 1)); printf '\n==> [%d/%d] %s\n' "$n" "$total" "$*"; }
failed() {
  printf '\nmake demo: step %d (%s) failed. Its log: %s\n' "$n" "$1" "$2" >&2
  tail -n 20 "$2" >&2 || true
  exit 1
}
# Runs a quiet step: output to its log only.
quiet() { local name=$1; shift; "$@" >"$demo/logs/$name.log" 2>&1 || failed "$name" "$demo/logs/$name.log"; }
# Runs a long step: its progress on the terminal and in its log.
loud() { local name=$1; shift; "$@" 2>&1 | tee "$demo/logs/$name.log" || failed "$name" "$demo/logs/$name.log"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Starts a background process of the demo, recorded by pid for demo-down.
spawn() {
  local name=$1; shift
  setsid "$@" >"$demo/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$demo/pids/$name.pid"
}
wait_http() { # URL NAME: until it answers 200, or the process died
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$(cat "$demo/pids/$2.pid")" 2>/dev/null || failed "$2" "$demo/logs/$2.log"
    sleep 0.1
  done
  failed "$2" "$demo/logs/$2.log"
}

# Anything a previous demo left running goes first (the control plane is reused).
"$root/tools/demo-down.sh" --keep-plane >/dev/null 2>&1 || true

step "system packages (apt, only what is missing)"
quiet deps env DEMO=1 "$root/tools/deps.sh"

step "building voice-operator, voice-gateway, voice-sim, voice-client (in the background, beside step 3)"
# Both builds have serial stretches (linking, the largest crates and packages); side by side
# they keep the two cores busier than one after the other.
cargo build --locked -p voice-operator -p voice-gateway -p voice-sim -p voice-client --bins \
  >"$demo/logs/build.log" 2>&1 &
cargo_pid=$!
echo "cargo build started; its log: $demo/logs/build.log"

step "local Kubernetes control plane (first time: builds it from upstream, 7-20 minutes on 2 cores), then the cargo build"
loud cluster "$root/tests/plane/up.sh"
while kill -0 "$cargo_pid" 2>/dev/null; do
  echo ">> cargo: $(grep -E '^ *(Compiling|Finished|error)' "$demo/logs/build.log" | tail -n 1 | sed 's/^ *//')"
  sleep 15
done
wait "$cargo_pid" || failed build "$demo/logs/build.log"
tail -n 1 "$demo/logs/build.log"
kubectl() { "$root/.cluster/bin/kubectl" "$@"; }

step "installing the VoicePipeline CRD"
quiet crds kubectl apply --server-side -f "$root/crds/"
# Retried: kubectl wait fails at once on a CRD whose status.conditions is still null.
quiet crds-wait bash -c 'for _ in $(seq 1 60); do
  "$0" wait --for=condition=Established --timeout=60s crd/voicepipelines.voice.workflow.io && exit 0
  sleep 1
done; exit 1' "$root/.cluster/bin/kubectl"

step "starting the operator"
admin_port=$(free_port)
# Watching only the demo namespace: tests sharing this plane run operators of their own.
spawn operator env RUST_LOG=info "$bin/voice-operator" run --admin-addr "127.0.0.1:$admin_port" \
  --namespace "$namespace"
wait_http "http://127.0.0.1:$admin_port/readyz" operator
echo "operator running; admin port http://127.0.0.1:$admin_port (/metrics, /livez, /readyz)"

step "applying examples/minimal.yaml as vp/$pipeline in namespace $namespace, waiting for Ready"
quiet namespace bash -c "$root/.cluster/bin/kubectl create namespace $namespace --dry-run=client -o yaml | $root/.cluster/bin/kubectl apply -f -"
quiet pipeline kubectl apply -n "$namespace" -f "$root/examples/minimal.yaml"
quiet pipeline-ready kubectl wait -n "$namespace" --for=condition=Ready "vp/$pipeline" --timeout=180s
kubectl get vp -n "$namespace"
echo
kubectl get deployments,services,servicemonitors,prometheusrules,configmaps -n "$namespace" \
  -l "app.kubernetes.io/instance=$pipeline"

step "starting the gateway against the backend simulator (voice-sim, seed latency profile)"
riva_port=$(free_port); llm_port=$(free_port); grpc_port=$(free_port); metrics_port=$(free_port)
# The question, spoken by espeak-ng; the simulator's ASR knows it by its sidecar transcript.
question="What is the capital of France?"
if command -v espeak-ng >/dev/null && command -v sox >/dev/null; then
  espeak-ng -w "$demo/speech/raw.wav" "$question" 2>/dev/null
  sox "$demo/speech/raw.wav" -r 16000 -c 1 -b 16 -e signed-integer "$demo/speech/question.wav"
  rm -f "$demo/speech/raw.wav"
  echo "$question" > "$demo/speech/question.txt"
else
  "$bin/voice-sim" speak --text "$question" --out "$demo/speech/question.wav"
fi
spawn sim "$bin/voice-sim" --riva-addr "127.0.0.1:$riva_port" --llm-addr "127.0.0.1:$llm_port" \
  --profile seed --transcripts "$demo/speech"
wait_http "http://127.0.0.1:$llm_port/v1/models" sim
# The gateway's environment is the one the operator rendered into the gateway Deployment
# (its ConfigMap and plain values; secrets stay in the cluster), with this machine's backends
# and ports on top.
kubectl get deployment -n "$namespace" -l "app.kubernetes.io/instance=$pipeline,app.kubernetes.io/component=gateway" -o json \
  | KUBECTL="$root/.cluster/bin/kubectl" NS="$namespace" python3 -c '
import json, os, shlex, subprocess, sys
env = {}
for item in json.load(sys.stdin)["items"]:
    for c in item["spec"]["template"]["spec"]["containers"]:
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                cm = subprocess.run([os.environ["KUBECTL"], "get", "configmap", "-n", os.environ["NS"],
                                     source["configMapRef"]["name"], "-o", "json"],
                                    check=True, capture_output=True, text=True).stdout
                env.update(json.loads(cm).get("data", {}))
        env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
for name, value in sorted(env.items()):
    print("export " + name + "=" + shlex.quote(value))
' > "$demo/gateway.env"
(
  # shellcheck disable=SC1091
  source "$demo/gateway.env"
  export RIVA_URI="127.0.0.1:$riva_port" LLM_SERVICE_URL="http://127.0.0.1:$llm_port/v1" \
    GRPC_PORT="$grpc_port" METRICS_PORT="$metrics_port" BIND_ADDRESS=127.0.0.1 LOG_FORMAT=text
  spawn gateway "$bin/voice-gateway"
)
wait_http "http://127.0.0.1:$metrics_port/readyz" gateway
echo "gateway on 127.0.0.1:$grpc_port with $(wc -l < "$demo/gateway.env") settings from the rendered Deployment"

step "one spoken turn: \"$question\""
quiet turn "$bin/voice-client" --target "127.0.0.1:$grpc_port" --wav "$demo/speech/question.wav" \
  --out "$demo/reply.wav"
cat "$demo/logs/turn.log"

cat <<EOF

The demo is running. Explore it:
  export KUBECONFIG=$KUBECONFIG PATH=$root/.cluster/bin:\$PATH
  kubectl get vp -n $namespace                      # the pipeline and its status
  kubectl describe vp/$pipeline -n $namespace       # conditions, events
  $bin/voice-operator render -f examples/minimal.yaml   # what the operator applies
  curl -s http://127.0.0.1:$metrics_port/metrics | grep ^voice_gateway   # gateway metrics
  curl -s http://127.0.0.1:$admin_port/metrics                         # operator metrics
  $bin/voice-client --target 127.0.0.1:$grpc_port --text "Tell me a joke"
  reply audio: $demo/reply.wav      logs: $demo/logs/  and  $root/.cluster/logs/
Stop everything with: make demo-down
EOF
