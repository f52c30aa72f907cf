#!/usr/bin/env bash
# Prints the path of the Kafka-protocol broker the cluster tests run (Nisshi 0.8.1 over
# PostgreSQL), installing it first if it is not there yet. Idempotent: once installed, it
# only prints the path.
#
#   tools/broker.sh                       # → $MOMENTUM_TOOLS/nisshi-0.8.1/bin/nisshi
#   export MOMENTUM_BROKER_BIN=$(tools/broker.sh)
#
# The install builds Nisshi from crates.io with only the PostgreSQL and object-store engines:
# about 12 minutes on 2 cores, once per machine (MOMENTUM_TOOLS defaults to
# ~/.cache/momentum-tools, which CI keeps between runs). Progress goes to stderr.
set -euo pipefail

VERSION=0.8.1
ROOT="${MOMENTUM_TOOLS:-$HOME/.cache/momentum-tools}/nisshi-$VERSION"
BIN="$ROOT/bin/nisshi"

if [ ! -x "$BIN" ]; then
  echo "installing nisshi $VERSION into $ROOT (about 12 minutes on 2 cores)" >&2
  cargo install nisshi --version "$VERSION" --locked --ignore-rust-version \
    --no-default-features --features postgres,dynostore --root "$ROOT" >&2
fi
echo "$BIN"
