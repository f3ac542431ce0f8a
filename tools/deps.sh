#!/usr/bin/env bash
# Installs the Debian packages that the build and the tests use, when one is missing.
# Rust and Go come with the machine; everything else (Go modules, crates with a vendored
# protoc, Python packages) is fetched by the step that needs it.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v flock >/dev/null || need+=(util-linux)
# objdump: the container image test reads the glibc versions the binaries need.
command -v objdump >/dev/null || need+=(binutils)
command -v promtool >/dev/null || need+=(prometheus)
command -v lua5.1 >/dev/null || need+=(lua5.1)
lua5.1 -e 'require("cjson")' 2>/dev/null || need+=(lua-cjson)
# The demo speaks its question with espeak-ng and resamples it with sox.
if [ -n "${DEMO:-}" ]; then
  command -v espeak-ng >/dev/null || need+=(espeak-ng)
  command -v sox >/dev/null || need+=(sox)
fi
# kubectl and helm need no package: tests/plane/build.sh builds them at the pinned versions.
[ ${#need[@]} -eq 0 ] && exit 0
echo ">> installing ${need[*]}" >&2
if [ "$(id -u)" != 0 ]; then sudo=sudo; else sudo=; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
