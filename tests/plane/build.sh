#!/usr/bin/env bash
# Builds the local control plane's binaries from upstream Go modules, once per version.
# Prints the directory that holds etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok and a kubectl of the same Kubernetes version; with --with-helm also helm
# (only the chart tests need it, so `make demo` does not wait for it).
#   tests/plane/build.sh [--with-helm]
# Binaries live outside the checkout, keyed by a hash of the pinned versions and
# go.mod/go.sum, so a fresh clone reuses them and a version change rebuilds.
# A cold build is one `go build` of the six binaries of the Kubernetes wrapper module (etcd,
# the four Kubernetes commands and kwok share most packages, each compiled once), printing how
# many packages it has compiled.
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

# kwok is built in the Kubernetes module, against the plane's own client libraries (v0.34), so
# that the packages it shares with the Kubernetes binaries are compiled once (its own module
# would compile v0.33 copies of api, apimachinery, client-go, apiserver…: ~4.5 CPU-minutes of a
# cold build). kwok v0.7.0 names one constant that apimachinery v0.34 dropped; the build patches
# that one file of kwok to use the constant's value, the annotation name, instead.
kwok_file=pkg/utils/informer/informer.go
kwok_patch='s|metav1\.InitialEventsListBlueprintAnnotationKey|"kubernetes.io/initial-events-list-blueprint"|g'

# The key: what the binaries are made of (versions, module graphs, Go, build flags), not this
# script's other lines, so a change to how progress is shown does not rebuild anything.
key=$( (echo "$CGO_ENABLED $GOFLAGS -trimpath | $k8s_ldflags | $helm_ldflags | -s -w"
        echo "$kwok_patch"
        cat "$here/versions.env" "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/helm/go.mod "$here"/helm/go.sum
        go env GOVERSION) | sha256sum | cut -c1-16)
bin="$cache_root/plane/$key/bin"
# Binaries of earlier versions are of no further use.
for old in "$cache_root"/plane/*; do [ "$old" = "$cache_root/plane/$key" ] || rm -rf "$old"; done
k8s_binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
binaries=("${k8s_binaries[@]}")
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
  ( rc=0; cd "$module" && go build -v -trimpath -ldflags "$ldflags" -o "$out/" "$@" \
      >"$logs/$name.log" 2>&1 || rc=$?; echo "$rc" >"$logs/$name.rc" ) &
}

start=$(date +%s)
builds=()
k8s_pkgs=()
for b in "${k8s_binaries[@]}"; do
  wanted "$b" || continue
  case "$b" in
    etcd) k8s_pkgs+=(./etcd) ;;
    kwok) k8s_pkgs+=(sigs.k8s.io/kwok/cmd/kwok) ;;
    *) k8s_pkgs+=("k8s.io/kubernetes/cmd/$b") ;;
  esac
done
mkdir -p "$logs/out"
if [ ${#k8s_pkgs[@]} -gt 0 ]; then
  modfile=()
  if wanted kwok; then
    # kwok's module, copied out of the module cache (the go command does not build patched
    # files there), with the one file patched, replaces the module for this build only: the
    # build reads a copy of go.mod with that replace line (-modfile) and its go.sum.
    kwok_dir=$(cd "$here/k8s" && go mod download -json sigs.k8s.io/kwok \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    # At a fixed path beside the binaries, so that a rebuild finds kwok's packages in the Go
    # build cache.
    kwok_src="$cache_root/plane/$key/src/kwok"
    rm -rf "$kwok_src" && mkdir -p "${kwok_src%/*}"
    cp -r "$kwok_dir" "$kwok_src" && chmod -R u+w "$kwok_src"
    sed -i "$kwok_patch" "$kwok_src/$kwok_file"
    if cmp -s "$kwok_dir/$kwok_file" "$kwok_src/$kwok_file"; then
      echo ">> kwok's $kwok_file no longer names the constant the patch replaces: drop the patch" >&2
      exit 1
    fi
    { cat "$here/k8s/go.mod"; echo "replace sigs.k8s.io/kwok => $kwok_src"; } > "$logs/build.mod"
    cp "$here/k8s/go.sum" "$logs/build.sum"
    modfile=(-modfile "$logs/build.mod")
  fi
  go_build kubernetes "$here/k8s" "$logs/out" "$k8s_ldflags" "${modfile[@]}" "${k8s_pkgs[@]}"
  builds+=(kubernetes)
fi
if wanted helm; then
  go_build helm "$here/helm" "$logs/out" "$helm_ldflags" helm.sh/helm/v3/cmd/helm; builds+=(helm)
fi
echo ">> building ${missing[*]} from upstream sources (first time for these versions: ~7-20 minutes on 2 cores)" >&2

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
