#!/usr/bin/env bash
# Runs the Python tests (nvidia-riva-client, openai SDK, grpcio) against voice-sim and
# voice-gateway. Binaries: VOICE_SIM_BIN, VOICE_GATEWAY_BIN (VOICE_CLIENT_BIN optional); when
# unset they are built with cargo. The venv lives outside the checkout, keyed by the hash of
# requirements.txt, and is reused. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${VOICE_PY_CACHE:-$HOME/.cache/voice-operator}"
hash="$(sha256sum "$here/requirements.txt" | cut -c1-12)"
venv="$cache/venv-$hash"
if [ ! -x "$venv/bin/pytest" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv.tmp.$$"
  "$venv.tmp.$$/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  rm -rf "$venv" && mv "$venv.tmp.$$" "$venv"
  # venvs record their path in scripts: recreate the entry points for the final location.
  sed -i "s|$venv.tmp.$$|$venv|g" "$venv"/bin/* 2>/dev/null || true
fi
if [ -z "${VOICE_SIM_BIN:-}" ] || [ -z "${VOICE_GATEWAY_BIN:-}" ]; then
  (cd "$root" && cargo build -q -p voice-sim -p voice-gateway)
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  export VOICE_SIM_BIN="${VOICE_SIM_BIN:-$target/debug/voice-sim}"
  export VOICE_GATEWAY_BIN="${VOICE_GATEWAY_BIN:-$target/debug/voice-gateway}"
fi
cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
