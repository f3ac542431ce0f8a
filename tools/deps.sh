#!/usr/bin/env bash
# Installs the Debian packages that the build and the tests use, when one is missing.
# Rust and Go come with the machine; everything else (Go modules, crates, Python packages)
# is fetched by the step that needs it.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v flock >/dev/null || need+=(util-linux)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v promtool >/dev/null || need+=(prometheus)
command -v lua5.1 >/dev/null || need+=(lua5.1)
lua5.1 -e 'require("cjson")' 2>/dev/null || need+=(lua-cjson)
if ! command -v kubectl >/dev/null; then
  echo "kubectl is missing: install kubectl 1.30 or newer (Debian's kubernetes-client is too old)" >&2
  exit 1
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo ">> installing ${need[*]}" >&2
if [ "$(id -u)" != 0 ]; then sudo=sudo; else sudo=; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
