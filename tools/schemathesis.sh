#!/usr/bin/env bash
# Checks that openapi.json describes the server exactly: builds the server, starts it on a free
# loopback port with a temporary embedded store, an admin key and a model key, runs
# schemathesis (https://schemathesis.readthedocs.io) against its /openapi.json with every
# check enabled, and stops it. Any failure fails the script.
#
#   tools/schemathesis.sh                 # 30 examples per operation (about a minute)
#   ST_MAX_EXAMPLES=200 tools/schemathesis.sh
#
# schemathesis is installed (pinned) into target/st-venv. tools/schemathesis.toml holds the
# configuration (deterministic generation), tools/schemathesis_hooks.py the rules the
# document can only describe.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-30}"
VENV=target/st-venv

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q -p momentum
store=$(mktemp -d)
log="$store/server.log"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
admin_key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
model_key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

MOMENTUM__SERVER__BIND="127.0.0.1:$port" \
MOMENTUM__STORE__PATH="$store/data" \
MOMENTUM__SECURITY__ADMIN_KEY="$admin_key" \
MOMENTUM__SECURITY__MODEL_KEY="$model_key" \
MOMENTUM__LOGGING__LEVEL=warn \
  target/debug/momentum serve >"$log" 2>&1 &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$store"
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
ready=0
for _ in $(seq 1 300); do
  if curl -fsS -o /dev/null "$base/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "the server did not become ready; its log:" >&2
  cat "$log" >&2
  exit 1
fi

"$VENV/bin/schemathesis" --config-file tools/schemathesis.toml run "$base/openapi.json" \
  --checks all \
  --header "X-Admin-Key: $admin_key" \
  --max-examples "$MAX_EXAMPLES" \
  --no-color \
  --request-timeout 30
