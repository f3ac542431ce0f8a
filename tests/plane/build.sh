#!/usr/bin/env bash
# Builds the local control plane's binaries from upstream Go modules, once per version.
# Prints the directory that holds etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok, a kubectl of the same Kubernetes version, and helm (for the chart).
# Binaries live outside the checkout, keyed by a hash of the pinned versions and
# go.mod/go.sum, so a fresh clone reuses them and a version change rebuilds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${VOICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-operator}
key=$( (cat "$here/build.sh" "$here/versions.env" "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/kwok/go.mod "$here"/kwok/go.sum "$here"/helm/go.mod "$here"/helm/go.sum; go env GOVERSION) | sha256sum | cut -c1-16)
bin="$cache_root/plane/$key/bin"
# Binaries of earlier versions are of no further use.
for old in "$cache_root"/plane/*; do [ "$old" = "$cache_root/plane/$key" ] || rm -rf "$old"; done
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl helm)

missing=()
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
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

for b in "${missing[@]}"; do
  start=$(date +%s)
  echo ">> building $b (first time for these versions: several CPU-minutes)" >&2
  case "$b" in
    etcd) (cd "$here/k8s" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" ./etcd) ;;
    kwok) (cd "$here/kwok" && go build -trimpath -ldflags "-s -w" -o "$bin/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok) ;;
    helm) (cd "$here/helm" && go build -trimpath -ldflags "$helm_ldflags" -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm) ;;
    *) (cd "$here/k8s" && go build -trimpath -ldflags "$k8s_ldflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b") ;;
  esac
  mv "$bin/$b.tmp" "$bin/$b"
  echo ">> built $b in $(( $(date +%s) - start ))s" >&2
done
echo "$bin"
