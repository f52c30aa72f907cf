#!/usr/bin/env bash
# Persistence benchmark: sustained ingest over HTTP with the event log in PostgreSQL
# or the embedded store, `sync` and `async`, then snapshot and restore of ~10M simulated events.
#
#   load-tests/bench-store.sh                 # everything (about 10 minutes)
#   KINDS=postgres MODES=async USERS=10000 TEN_M=0 load-tests/bench-store.sh
#
# Needs release builds (built here unless SKIP_BUILD=1) and, for PostgreSQL, a server at
# PGURL (default postgres://postgres@127.0.0.1:5432) where it may create and drop the
# database `momentum_bench`. Prints one line per measurement; JSON reports go to OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

KINDS=${KINDS:-"postgres embedded"}
MODES=${MODES:-"async sync"}
USERS=${USERS:-10000}        # ingest runs: 10,000 simulated users over 180 days = 1.7M events
TEN_M_USERS=${TEN_M_USERS:-59000} # 59,000 users over 180 days = 9.88M events
TEN_M=${TEN_M:-1}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
PORT=${PORT:-18480}
OUT=${OUT:-target/bench-store}
BIN=target/release

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p momentum -p momentum-load
fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export MOMENTUM__SERVER__BIND=127.0.0.1:$PORT
export MOMENTUM__SNAPSHOT__INTERVAL_SECS=0
export MOMENTUM__TRAINER__INTERVAL_SECS=0
export MOMENTUM__CHURN__INTERVAL_SECS=0
export MOMENTUM__SECURITY__ADMIN_KEY=bench-admin
export MOMENTUM__LOGGING__LEVEL=${LOG_LEVEL:-warn}
BASE=http://127.0.0.1:$PORT

fresh_store() { # KIND
  export MOMENTUM__STORE__KIND=$1
  export MOMENTUM__STORE__PATH=$WORK/data
  rm -rf "$WORK/data"
  if [ "$1" = postgres ]; then
    export MOMENTUM__STORE__URL=$PGURL/momentum_bench
    psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS momentum_bench" \
      -c "CREATE DATABASE momentum_bench" >/dev/null
  fi
}

start_server() { # LOG
  "$BIN/momentum" >"$1" 2>&1 &
  SERVER_PID=$!
  until curl -sf "$BASE/readyz" >/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$1"; exit 1; }
    sleep 0.1
  done
}

stop_server() { # graceful: flush + final snapshot
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=""
}

metric() { curl -s "$BASE/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# The simulated events end now, so nothing is older than the retention or the feature windows.
START_MS=$(( ($(date +%s) - 180 * 86400) * 1000 ))

echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
for kind in $KINDS; do
  for mode in $MODES; do
    fresh_store "$kind"
    export MOMENTUM__STORE__DURABILITY=$mode
    start_server "$WORK/server.log"
    line=$("$BIN/momentum-load" simulate --users "$USERS" --days 180 --start-ms "$START_MS" \
      --post "$BASE" --batch 1000 --connections 4 --report "$OUT/ingest-$kind-$mode.json" 2>&1 |
      grep "closed loop" || true)
    echo "ingest $kind $mode: ${line#*= } (load $(cut -d' ' -f1-3 /proc/loadavg))"
    stop_server
  done
done

if [ "$TEN_M" = 1 ]; then
  for kind in $KINDS; do
    fresh_store "$kind"
    export MOMENTUM__STORE__DURABILITY=async
    start_server "$WORK/server.log"
    line=$("$BIN/momentum-load" simulate --users "$TEN_M_USERS" --days 180 --start-ms "$START_MS" \
      --post "$BASE" --batch 1000 --connections 4 --report "$OUT/ten-m-$kind.json" 2>&1 |
      grep "closed loop" || true)
    echo "10M ingest $kind async: ${line#*= }"
    snap=$(curl -s -XPOST -H "x-admin-key: bench-admin" "$BASE/v1/admin/snapshot")
    echo "10M snapshot $kind: $snap"
    echo "10M resident memory $kind: $(metric momentum_process_resident_memory_bytes) bytes"
    stop_server
    started=$(date +%s.%N)
    start_server "$WORK/server2.log"
    ready=$(date +%s.%N)
    echo "10M restore $kind: momentum_restore_duration_seconds $(metric momentum_restore_duration_seconds), process start to ready $(echo "$ready - $started" | bc) s"
    stop_server
  done
fi
