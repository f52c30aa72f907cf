#!/usr/bin/env bash
# Memory benchmark: resident memory of a server holding many users, each with a few events.
# Generates a synthetic ratings CSV (user `u{n}`, EVENTS distinct items each, drawn from ITEMS
# items with a 1/rank^0.8 skew, rating 4, each user's events one after another), ingests it over
# HTTP with `momentum-load ingest --batch 5000 --connections 4` into a server on a temporary
# embedded store (default configuration, `sync`), and prints VmRSS right after the ingest and
# SETTLE seconds later (by then a rebuild of the item model the last events triggered, whose
# matrix and pair list are freed after it, has finished), the peak (VmHWM), the ingest rate
# and the co-occurrence footprint; then writes a snapshot
# (`POST /v1/admin/snapshot`) and prints the peak while it was written.
#
#   load-tests/bench-memory.sh                         # 1M users × 1 event
#   EVENTS=20 load-tests/bench-memory.sh               # 1M users × 20 events (about 8 minutes)
#   USERS=20000 EVENTS=5 SKIP_BUILD=1 load-tests/bench-memory.sh
#
# Environment: USERS [1000000], EVENTS per user [1], ITEMS [2000], SEED [7], PORT [18481],
# SETTLE [5], SKIP_BUILD [0], and any MOMENTUM__* setting for the server (for example
# MOMENTUM__SNAPSHOT__INTERVAL_SECS=0 to keep a scheduled snapshot out of a long run).
# Needs bash, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-1000000}
EVENTS=${EVENTS:-1}
ITEMS=${ITEMS:-2000}
SEED=${SEED:-7}
PORT=${PORT:-18481}
BIN=${CARGO_TARGET_DIR:-target}/release

if [ "$EVENTS" -gt "$ITEMS" ]; then
  echo "bench-memory: EVENTS ($EVENTS) must not exceed ITEMS ($ITEMS)" >&2
  exit 2
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p momentum -p momentum-load
fi
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 - "$USERS" "$EVENTS" "$ITEMS" "$SEED" "$WORK/ratings.csv" <<'PY'
import bisect, itertools, random, sys
users, events, items, seed, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = random.Random(seed)
cum = list(itertools.accumulate(1 / (r + 1) ** 0.8 for r in range(items)))
total = cum[-1]
ts = 1_700_000_000
with open(path, "w") as f:
    f.write("user_id,item_id,rating,timestamp\n")
    for n in range(users):
        chosen = set()
        while len(chosen) < events:
            chosen.add(bisect.bisect_left(cum, rng.random() * total))
        for i in sorted(chosen):
            ts += 1
            f.write(f"u{n},i{i},4,{ts}\n")
PY

MOMENTUM__STORE__PATH="$WORK/store" MOMENTUM__LOGGING__LEVEL=warn \
  MOMENTUM__SECURITY__ADMIN_KEY=bench-memory \
  MOMENTUM__TRAINER__INTERVAL_SECS=0 MOMENTUM__CHURN__INTERVAL_SECS=0 \
  "$BIN/momentum" --bind "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
start=$(date +%s.%N)
"$BIN/momentum-load" ingest --ratings "$WORK/ratings.csv" --batch 5000 --connections 4 \
  --target "http://127.0.0.1:$PORT" --report "$WORK/ingest.json" >/dev/null 2>"$WORK/load.log"
end=$(date +%s.%N)
status=$(grep -E '^(VmRSS|VmHWM)' "/proc/$SERVER_PID/status" | tr -s ' \t' ' ')
sleep "${SETTLE:-5}"
settled=$(grep -E '^(VmRSS|VmHWM)' "/proc/$SERVER_PID/status" | tr -s ' \t' ' ')
# Then a snapshot of that state (POST /v1/admin/snapshot, answered once it is written and
# verified): the peak while it is written, VmHWM reset first (`5` to clear_refs).
echo 5 >"/proc/$SERVER_PID/clear_refs"
snap_start=$(date +%s.%N)
snapshot=$(curl -sf -X POST -H 'x-admin-key: bench-memory' "http://127.0.0.1:$PORT/v1/admin/snapshot")
snap_end=$(date +%s.%N)
snap_status=$(grep -E '^(VmRSS|VmHWM)' "/proc/$SERVER_PID/status" | tr -s ' \t' ' ')
# The co-occurrence gauges are set with the popular list, at most once a second.
sleep 2
metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^momentum_(cooccurrence_(pairs|bytes)|users) ' || true)
python3 - "$USERS" "$EVENTS" "$start" "$end" "$WORK/ingest.json" "$status" "$metrics" \
  "$snap_start" "$snap_end" "$snapshot" "$snap_status" "$settled" "${SETTLE:-5}" <<'PY'
import json, sys
users, events, start, end, report, status, metrics = sys.argv[1:8]
snap_start, snap_end, snapshot, snap_status, settled, settle = sys.argv[8:14]
ingest = json.load(open(report))["ingest"]
kb = dict(line.split(":")[0:2] for line in status.splitlines())
rss, hwm = (int(kb[k].split()[0]) for k in ("VmRSS", "VmHWM"))
m = dict(line.split() for line in metrics.splitlines())
secs = float(end) - float(start)
print(f"memory: {int(users):,} users x {events} events: {ingest['accepted']:,} accepted in {secs:.1f} s "
      f"({ingest['accepted'] / secs:,.0f} events/s)")
print(f"memory: VmRSS {rss:,} kB ({rss / 1024:.1f} MiB, {rss * 1024 / int(users):,.0f} bytes per user), "
      f"peak VmHWM {hwm:,} kB ({hwm / 1024:.1f} MiB)")
lkb = dict(line.split(":")[0:2] for line in settled.splitlines())
later, lhwm = (int(lkb[k].split()[0]) for k in ("VmRSS", "VmHWM"))
print(f"memory: VmRSS {settle} s after the ingest {later:,} kB ({later / 1024:.1f} MiB, "
      f"{later * 1024 / int(users):,.0f} bytes per user), peak VmHWM by then {lhwm:,} kB "
      f"({lhwm / 1024:.1f} MiB)")
snap = json.loads(snapshot)
skb = dict(line.split(":")[0:2] for line in snap_status.splitlines())
shwm = int(skb["VmHWM"].split()[0])
print(f"memory: snapshot of {snap['users']:,} users, {snap['bytes']:,} bytes, in "
      f"{float(snap_end) - float(snap_start):.1f} s; peak VmHWM {shwm:,} kB ({shwm / 1024:.1f} MiB) "
      f"({(shwm - later) / 1024:+,.1f} MiB over the resident memory before it)")
pairs = int(float(m.get("momentum_cooccurrence_pairs", 0)))
if pairs:
    cb = int(float(m["momentum_cooccurrence_bytes"]))
    print(f"memory: co-occurrence {pairs:,} item pairs in {cb:,} bytes ({cb / pairs:.1f} bytes per pair, both directions)")
if ingest["accepted"] != int(users) * int(events):
    sys.exit(f"bench-memory: {ingest['accepted']} of {int(users) * int(events)} events accepted")
PY
