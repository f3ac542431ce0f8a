#!/usr/bin/env bash
# Builds the local control plane's binaries from upstream Go modules, once per version.
# Prints the directory that holds etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok and a kubectl of the same Kubernetes version; with --with-helm also helm
# (only the chart tests need it, so `make demo` does not wait for it).
#   tests/plane/build.sh [--with-helm]
# Binaries live outside the checkout, keyed by a hash of the pinned versions and
# go.mod/go.sum, so a fresh clone reuses them and a version change rebuilds.
# A cold build is one `go build` of the five Kubernetes binaries (they share most packages)
# with kwok's module built beside it, each printing how many packages it has compiled.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
with_helm=0
case "${1:-}" in
  --with-helm) with_helm=1 ;;
  "") ;;
  *) echo "usage: $0 [--with-helm]" >&2; exit 2 ;;
esac
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${VOICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-operator}
# -mod=readonly: the build never edits go.mod or go.sum (they are part of the cache key).
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
k8s_ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
# helm's defaults for the Kubernetes version it renders and lints for: the plane's.
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
done

# The key: what the binaries are made of (versions, module graphs, Go, build flags), not this
# script's other lines, so a change to how progress is shown does not rebuild anything.
key=$( (echo "$CGO_ENABLED $GOFLAGS -trimpath | $k8s_ldflags | $helm_ldflags | -s -w"
        cat "$here/versions.env" "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/kwok/go.mod "$here"/kwok/go.sum "$here"/helm/go.mod "$here"/helm/go.sum
        go env GOVERSION) | sha256sum | cut -c1-16)
bin="$cache_root/plane/$key/bin"
# Binaries of earlier versions are of no further use.
for old in "$cache_root"/plane/*; do [ "$old" = "$cache_root/plane/$key" ] || rm -rf "$old"; done
k8s_binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
binaries=("${k8s_binaries[@]}" kwok)
[ "$with_helm" = 1 ] && binaries+=(helm)

missing=()
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi
wanted() { local b; for b in "${missing[@]}"; do [ "$b" = "$1" ] && return 0; done; return 1; }

mkdir -p "$bin"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# go build NAME MODULE_DIR OUT_DIR LDFLAGS PACKAGES...: in the background, its package list
# (-v) in $logs/NAME.log, so progress can be shown; writes $logs/NAME.rc when done.
go_build() {
  local name=$1 module=$2 out=$3 ldflags=$4; shift 4
  ( cd "$module" && go build -v -trimpath -ldflags "$ldflags" -o "$out/" "$@" \
      >"$logs/$name.log" 2>&1; echo $? >"$logs/$name.rc" ) &
}

start=$(date +%s)
builds=()
k8s_pkgs=()
for b in "${k8s_binaries[@]}"; do
  wanted "$b" || continue
  case "$b" in
    etcd) k8s_pkgs+=(./etcd) ;;
    *) k8s_pkgs+=("k8s.io/kubernetes/cmd/$b") ;;
  esac
done
mkdir -p "$logs/out"
if [ ${#k8s_pkgs[@]} -gt 0 ]; then
  go_build kubernetes "$here/k8s" "$logs/out" "$k8s_ldflags" "${k8s_pkgs[@]}"; builds+=(kubernetes)
fi
if wanted kwok; then
  go_build kwok "$here/kwok" "$logs/out" "-s -w" sigs.k8s.io/kwok/cmd/kwok; builds+=(kwok)
fi
if wanted helm; then
  go_build helm "$here/helm" "$logs/out" "$helm_ldflags" helm.sh/helm/v3/cmd/helm; builds+=(helm)
fi
echo ">> building ${missing[*]} from upstream sources (first time for these versions: ~10-20 minutes on 2 cores)" >&2

# Progress every 30 s until every build has finished.
all_done() { local name; for name in "${builds[@]}"; do [ -f "$logs/$name.rc" ] || return 1; done; }
ticks=0
until all_done; do
  sleep 1
  ticks=$((ticks + 1))
  [ $((ticks % 30)) = 0 ] || continue
  progress=""
  for name in "${builds[@]}"; do
    state="$(grep -c . "$logs/$name.log" 2>/dev/null || true) packages"
    [ -f "$logs/$name.rc" ] && state="done"
    progress+=" $name: $state;"
  done
  echo ">>   $(( $(date +%s) - start ))s:$progress" >&2
done
wait
failed=0
for name in "${builds[@]}"; do
  if [ "$(cat "$logs/$name.rc")" != 0 ]; then
    echo ">> building $name failed:" >&2
    grep -v '^[a-zA-Z0-9_./~-]*$' "$logs/$name.log" | tail -n 30 >&2 || true
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
for b in "${missing[@]}"; do mv "$logs/out/$b" "$bin/$b"; done
echo ">> built ${missing[*]} in $(( $(date +%s) - start ))s" >&2
echo "$bin"
