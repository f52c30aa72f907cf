#!/usr/bin/env bash
# Cluster mode against a single node, on one machine (README "Performance", "Cluster mode"):
#
#   single    a node on the embedded store (the default mode): ingest the ml-100k ratings
#             (momentum-load ingest, closed loop, 4 connections, batches of 1000), then uncached
#             recommendations (cache_ttl_secs = 0) in a closed loop for $DURATION;
#   cluster1  one cluster node owning every partition, one Nisshi broker over a fresh
#             PostgreSQL database: the same two runs. Ingest is reported twice: acknowledged
#             (the broker confirmed every event) and applied (the owner applied every event);
#   cluster2  a second node joins: how long the moved partitions took from assignment to
#             served (momentum_cluster_handover_seconds); uncached recommendations asked of the
#             first node for the users it owns (local) and for the users the other owns
#             (forwarded one hop); then a second pass of the ratings (fresh event ids) through
#             both nodes while the item-statistics staleness histogram of both is read;
#   handover  HANDOVER_USERS synthetic users × HANDOVER_EVENTS events in 4 partitions (about
#             HANDOVER_USERS / 4 users each) on one node, a partition snapshot written, then a
#             second node joins and takes two partitions: the hand-over time per partition from
#             a snapshot, and again with snapshots off (replay of the whole partition log).
#
# Every figure is printed and written, with the reports, into $OUT (a Markdown summary in
# $OUT/cluster.md). Needs the release binaries, the broker (tools/broker.sh), PostgreSQL at
# DATABASE_URL, curl and python3.
#
# Usage, from anywhere, on a quiet machine:
#   cargo build --release -p momentum -p momentum-load && load-tests/bench-cluster.sh
# Environment (defaults in brackets):
#   DATA             ml-100k directory [${MOMENTUM_DATA:-../shared/data}/ml-100k]
#   DURATION         each recommendation run [15s]
#   PARTITIONS       partitions of the ml-100k cluster runs [12]
#   HANDOVER_USERS   users of the hand-over run [40000]
#   HANDOVER_EVENTS  events per user of the hand-over run [5]
#   DATABASE_URL     PostgreSQL server for the brokers and snapshots
#                    [postgres://postgres@127.0.0.1:5432/test]
#   MOMENTUM_BROKER_BIN  the broker [what tools/broker.sh prints]
#   OUT              where reports go [target/bench-cluster]
#   CARGO_TARGET_DIR where the release binaries are [target]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA=${DATA:-${MOMENTUM_DATA:-../shared/data}/ml-100k}
DURATION=${DURATION:-15s}
PARTITIONS=${PARTITIONS:-12}
HANDOVER_USERS=${HANDOVER_USERS:-40000}
HANDOVER_EVENTS=${HANDOVER_EVENTS:-5}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT=${OUT:-target/bench-cluster}
BIN=${CARGO_TARGET_DIR:-target}/release
BROKER=${MOMENTUM_BROKER_BIN:-$(tools/broker.sh)}

log() { echo "bench-cluster: $*" >&2; }
die() {
	log "$*"
	exit 1
}

for f in "$BIN/momentum" "$BIN/momentum-load"; do
	[ -x "$f" ] || die "$f is missing: cargo build --release -p momentum -p momentum-load"
done
[ -x "$BROKER" ] || die "no broker at $BROKER: run tools/broker.sh"
[ -f "$DATA/ratings.csv" ] || die "no $DATA/ratings.csv (set DATA)"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/momentum-bench-cluster.XXXXXX)
PIDS=()
DBS=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# `sql STATEMENT`: on the server of DATABASE_URL (its `postgres` database).
sql() {
	python3 - "$DATABASE_URL" "$1" <<'PY'
import subprocess, sys, urllib.parse
url, statement = sys.argv[1:3]
u = urllib.parse.urlparse(url)
subprocess.run(["psql", "-q", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
                "-U", u.username or "postgres", "-d", "postgres", "-c", statement], check=True)
PY
}

db_url() {
	python3 - "$DATABASE_URL" "$1" <<'PY'
import sys, urllib.parse
url, db = sys.argv[1:3]
u = urllib.parse.urlparse(url)
print(urllib.parse.urlunparse(u._replace(path="/" + db, query="sslmode=disable")))
PY
}

cleanup() {
	for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for db in "${DBS[@]}"; do sql "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
	for _ in $(seq 1 600); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on port $1"
}

# `start_broker DB`: a Nisshi broker over a fresh database DB; prints its address.
start_broker() {
	local db=$1 port
	sql "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
	sql "CREATE DATABASE $db" >/dev/null
	DBS+=("$db")
	port=$(free_port)
	RUST_LOG=warn "$BROKER" broker --cluster-id "$db" --listener-url "tcp://127.0.0.1:$port" \
		--advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$(db_url "$db")" \
		--group-initial-rebalance-delay 1s >"$WORK/broker-$db.log" 2>&1 &
	PIDS+=($!)
	wait_port "$port"
	echo "127.0.0.1:$port"
}

# `start_node NAME PORT [VAR=VALUE…]`: a release node with uncached lists; extra settings as
# environment assignments. Sets NODE_PID.
start_node() {
	local name=$1 port=$2
	shift 2
	env MOMENTUM__SERVER__BIND="127.0.0.1:$port" MOMENTUM__STORE__PATH="$WORK/$name-store" \
		MOMENTUM__RECOMMEND__CACHE_TTL_SECS=0 MOMENTUM__LOGGING__LEVEL=warn \
		MOMENTUM__TRAINER__INTERVAL_SECS=0 MOMENTUM__CHURN__INTERVAL_SECS=0 \
		"$@" "$BIN/momentum" >"$WORK/$name.log" 2>&1 &
	NODE_PID=$!
	PIDS+=("$NODE_PID")
	wait_port "$port"
}

# `cluster_env NAME PORT BROKER DB PARTITIONS [SNAPSHOT_SECS]`: the settings of a cluster node.
cluster_env() {
	echo MOMENTUM__CLUSTER__ENABLED=true MOMENTUM__CLUSTER__BROKERS="$3" \
		MOMENTUM__CLUSTER__PARTITIONS="$5" MOMENTUM__CLUSTER__NODE_ID="$1" \
		MOMENTUM__CLUSTER__ADVERTISED_ADDRESS="127.0.0.1:$2" \
		MOMENTUM__CLUSTER__SNAPSHOT_URL="$(db_url "$4")" \
		MOMENTUM__CLUSTER__SNAPSHOT_INTERVAL_SECS="${6:-60}" MOMENTUM__CLUSTER__SESSION_TIMEOUT_MS=6000
}

# `cluster_summary PORT`: partitions ready and restoring on the node, and the records its ready
# partitions applied.
cluster_summary() {
	curl -sf "http://127.0.0.1:$1/v1/cluster" | python3 -c '
import json, sys
s = json.load(sys.stdin)
parts = s["partitions"]
ready = [p for p in parts if p["state"] == "ready"]
restoring = [p for p in parts if p["state"] == "restoring"]
print(len(ready), len(restoring), sum(p.get("next_offset", 0) for p in ready))'
}

# `wait_applied EVENTS PORT…`: until every node serves at least one partition, the ready
# partitions of the nodes cover every partition and their owners applied EVENTS records in
# all; prints the seconds waited.
wait_applied() {
	local want=$1 start
	shift
	start=$(date +%s.%N)
	while true; do
		local ready=0 restoring=0 applied=0 idle=0 r
		for port in "$@"; do
			r=$(cluster_summary "$port" || echo "0 1 0")
			read -r a b c <<<"$r"
			[ "$a" -eq 0 ] && idle=1
			ready=$((ready + a))
			restoring=$((restoring + b))
			applied=$((applied + c))
		done
		if [ "$idle" -eq 0 ] && [ "$ready" -eq "$PARTS_NOW" ] && [ "$restoring" -eq 0 ] && [ "$applied" -ge "$want" ]; then
			break
		fi
		sleep 0.05
	done
	python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$(date +%s.%N)"
}

# `put_items PORT`: the ml-100k titles and genres, eight PUTs at a time (in cluster mode each
# waits for the items topic, so they go to one node and reach the others from there).
put_items() {
	tail -n +2 "$DATA/items.csv" | python3 -c '
import csv, json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
port = sys.argv[1]
def put(row):
    body = json.dumps({"title": row[1], "tags": [g for g in row[3].split("|") if g]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/items/{row[0]}", data=body,
                                 method="PUT", headers={"content-type": "application/json"})
    urllib.request.urlopen(req).read()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(put, list(csv.reader(sys.stdin))))' "$1"
}

ingest() { # PORT REPORT [flags…]
	local port=$1 report=$2
	shift 2
	"$BIN/momentum-load" ingest --target "http://127.0.0.1:$port" --ratings "$DATA/ratings.csv" \
		--batch 1000 --connections 4 --report "$OUT/$report.json" "$@" >/dev/null
}

recommend() { # PORT REPORT USERS
	"$BIN/momentum-load" recommend --target "http://127.0.0.1:$1" --users "$3" --connections 4 \
		--duration "$DURATION" --report "$OUT/$2.json" >/dev/null
}

# `figures REPORT`: events/s or req/s, p50, p99 of a report.
figures() {
	python3 - "$OUT/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
route = next(iter(r["routes"].values()))["latency_us"]
rate = r["throughput"].get("events_per_s") or r["throughput"]["ok_requests_per_s"]
errors = sum(v for k, v in r["status_counts"].items() if not k.startswith("2"))
print(f"{rate:,.0f} {route['p50'] / 1000:.2f} {route['p99'] / 1000:.2f} {errors}")
PY
}

# `histogram PORT NAME [SINCE]`: count, mean and the bucket bounds holding p50 and p99 of a
# histogram of the node at PORT; with SINCE (a file `histogram_dump` wrote), of what it
# observed since.
histogram() {
	curl -sf "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
name, since = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
def read(lines):
    buckets, total, count = {}, 0.0, 0.0
    for line in lines:
        if line.startswith(name + "_bucket"):
            le = line.split("le=\"")[1].split("\"")[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
        elif line.startswith(name + "_sum"):
            total = float(line.split()[-1])
        elif line.startswith(name + "_count"):
            count = float(line.split()[-1])
    return buckets, total, count
buckets, total, count = read(sys.stdin)
if since:
    b0, t0, c0 = read(open(since))
    buckets = {le: c - b0.get(le, 0.0) for le, c in buckets.items()}
    total, count = total - t0, count - c0
def quantile(q):
    for le in sorted(buckets):
        if count and buckets[le] >= q * count:
            return le
    return float("nan")
mean = total / count if count else float("nan")
print(f"{count:.0f} {mean:.3f} {quantile(0.5)} {quantile(0.99)}")' "$2" ${3:+"$3"}
}

# `histogram_dump PORT FILE`: the node's metrics now, for `histogram … SINCE`.
histogram_dump() { curl -sf "http://127.0.0.1:$1/metrics" >"$2"; }

# Users of the ratings owned by the node at PORT, as a ratings CSV (momentum-load --users).
owned_users() { # PORT PARTITIONS OUTFILE
	curl -sf "http://127.0.0.1:$1/v1/cluster" | python3 -c '
import csv, hashlib, json, sys
parts, ratings, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
status = json.load(sys.stdin)
mine = {p["partition"] for p in status["partitions"] if p["state"] == "ready"}
def partition(user):
    return int.from_bytes(hashlib.md5(user.encode()).digest()[:8], "big") % parts
with open(ratings) as f, open(out, "w") as o:
    rows = csv.reader(f)
    w = csv.writer(o)
    w.writerow(next(rows))
    for row in rows:
        if partition(row[0]) in mine:
            w.writerow(row)' "$2" "$DATA/ratings.csv" "$3"
}

SUMMARY="$OUT/cluster.md"
{
	echo "- Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; commit \`$(git rev-parse --short=12 HEAD)\`, release build."
	echo "- Data: \`$DATA/ratings.csv\` (100k ratings, 943 users) after PUTting the 1,682 items (in the cluster through the first node); lists uncached (\`recommend.cache_ttl_secs = 0\`), closed loop, 4 connections, $DURATION per run; ingest closed loop, 4 connections, batches of 1000."
	echo "- Cluster: one Nisshi 0.8.1 broker over PostgreSQL 15 on the same machine, $PARTITIONS partitions, \`acks=all\`, idempotent producer; the load generator on the same machine too."
	echo
} >"$SUMMARY"

# --- single node ---
log "single node"
PORT=$(free_port)
start_node single "$PORT"
put_items "$PORT"
ingest "$PORT" single-ingest
recommend "$PORT" single-recommend "$DATA/ratings.csv"
read -r S_IN S_IN50 S_IN99 _ <<<"$(figures single-ingest)"
read -r S_REC S_REC50 S_REC99 S_ERR <<<"$(figures single-recommend)"
kill "$NODE_PID"
log "single: ingest $S_IN ev/s, recommend $S_REC req/s p99 $S_REC99 ms"

# --- one cluster node ---
log "one cluster node"
DB=momentum_bench_cluster_$$
BROKER_ADDR=$(start_broker "$DB")
PA=$(free_port)
# shellcheck disable=SC2046
start_node a "$PA" $(cluster_env a "$PA" "$BROKER_ADDR" "$DB" "$PARTITIONS")
A_PID=$NODE_PID
PARTS_NOW=$PARTITIONS
wait_applied 0 "$PA" >/dev/null
put_items "$PA"
T0=$(date +%s.%N)
ingest "$PA" cluster1-ingest
WAITED=$(wait_applied 100000 "$PA")
C_APPLIED=$(python3 -c "import sys; print(f'{100000 / (float(sys.argv[2]) - float(sys.argv[1])):,.0f}')" "$T0" "$(date +%s.%N)")
recommend "$PA" cluster1-recommend "$DATA/ratings.csv"
read -r C_IN C_IN50 C_IN99 _ <<<"$(figures cluster1-ingest)"
read -r C_REC C_REC50 C_REC99 C_ERR <<<"$(figures cluster1-recommend)"
log "cluster1: ingest $C_IN ev/s acknowledged, $C_APPLIED applied (+$WAITED s), recommend $C_REC req/s p99 $C_REC99 ms"

# --- a second node joins ---
log "a second node joins"
PB=$(free_port)
# shellcheck disable=SC2046
start_node b "$PB" $(cluster_env b "$PB" "$BROKER_ADDR" "$DB" "$PARTITIONS")
wait_applied 100000 "$PA" "$PB" >/dev/null
read -r J_N J_MEAN J_P50 J_P99 <<<"$(histogram "$PB" momentum_cluster_handover_seconds)"
owned_users "$PA" "$PARTITIONS" "$WORK/users-a.csv"
owned_users "$PB" "$PARTITIONS" "$WORK/users-b.csv"
recommend "$PA" cluster2-local "$WORK/users-a.csv"
recommend "$PA" cluster2-forwarded "$WORK/users-b.csv"
read -r L_REC L_REC50 L_REC99 L_ERR <<<"$(figures cluster2-local)"
read -r F_REC F_REC50 F_REC99 F_ERR <<<"$(figures cluster2-forwarded)"
log "cluster2: local $L_REC req/s p99 $L_REC99 ms, forwarded $F_REC req/s p99 $F_REC99 ms"

# Staleness: the ratings again (fresh ids) through both nodes at once, full speed.
histogram_dump "$PA" "$WORK/metrics-a"
histogram_dump "$PB" "$WORK/metrics-b"
ingest "$PA" cluster2-ingest-a --id-prefix stale-a --limit 50000 &
ING_A=$!
ingest "$PB" cluster2-ingest-b --id-prefix stale-b --limit 50000
wait "$ING_A"
wait_applied 200000 "$PA" "$PB" >/dev/null
read -r G_AN G_AMEAN G_A50 G_A99 <<<"$(histogram "$PA" momentum_cluster_item_staleness_seconds "$WORK/metrics-a")"
read -r G_BN G_BMEAN G_B50 G_B99 <<<"$(histogram "$PB" momentum_cluster_item_staleness_seconds "$WORK/metrics-b")"
read -r SA_IN _ _ _ <<<"$(figures cluster2-ingest-a)"
read -r SB_IN _ _ _ <<<"$(figures cluster2-ingest-b)"
log "staleness under load (two ingests of 50k events): mean $G_AMEAN / $G_BMEAN s, p50 ≤ $G_A50 / $G_B50 s, p99 ≤ $G_A99 / $G_B99 s ($G_AN / $G_BN records)"
kill "$A_PID" "$NODE_PID"

# --- hand-over of a large partition ---
handover_run() { # SNAPSHOT_SECS LABEL → "partitions mean p50 p99"
	local secs=$1 label=$2 db broker pa pb a_pid
	db=momentum_bench_handover_${label}_$$
	broker=$(start_broker "$db")
	pa=$(free_port)
	# shellcheck disable=SC2046
	start_node "h$label-a" "$pa" $(cluster_env "h$label-a" "$pa" "$broker" "$db" 4 "$secs")
	a_pid=$NODE_PID
	PARTS_NOW=4
	wait_applied 0 "$pa" >/dev/null
	"$BIN/momentum-load" ingest --target "http://127.0.0.1:$pa" --ratings "$WORK/handover.csv" \
		--batch 1000 --connections 4 --id-prefix "h$label" >/dev/null
	wait_applied "$((HANDOVER_USERS * HANDOVER_EVENTS))" "$pa" >/dev/null
	if [ "$secs" -gt 0 ]; then
		# Until a snapshot of every partition covers the end of its log.
		local covered=0
		for _ in $(seq 1 600); do
			covered=$(psql -tAq "$(db_url "$db")" -c \
				"SELECT coalesce(sum(log_offset + 1), 0) FROM momentum_partition_snapshots" 2>/dev/null || echo 0)
			[ "$covered" -ge "$((HANDOVER_USERS * HANDOVER_EVENTS))" ] && break
			sleep 0.25
		done
	fi
	pb=$(free_port)
	# shellcheck disable=SC2046
	start_node "h$label-b" "$pb" $(cluster_env "h$label-b" "$pb" "$broker" "$db" 4 "$secs")
	wait_applied "$((HANDOVER_USERS * HANDOVER_EVENTS))" "$pa" "$pb" >/dev/null
	histogram "$pb" momentum_cluster_handover_seconds
	kill "$a_pid" "$NODE_PID"
}
log "hand-over: $HANDOVER_USERS users × $HANDOVER_EVENTS events in 4 partitions"
python3 - "$HANDOVER_USERS" "$HANDOVER_EVENTS" "$WORK/handover.csv" <<'PY'
import random, sys
users, per, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
with open(out, "w") as f:
    f.write("user_id,item_id,rating,timestamp\n")
    for u in range(users):
        for k in range(per):
            item = int(1682 * rng.random() ** 2) + 1
            f.write(f"h{u},{item},{rng.randint(1, 5)},{1700000000 + u * per + k}\n")
PY
read -r H_N H_MEAN H_P50 H_P99 <<<"$(handover_run 2 snap)"
read -r R_N R_MEAN R_P50 R_P99 <<<"$(handover_run 0 log)"
log "hand-over from a snapshot: $H_N partitions, mean $H_MEAN s; from the log: $R_N partitions, mean $R_MEAN s"

{
	echo "| measure | single node | cluster |"
	echo "|---|--:|--:|"
	echo "| ingest, events/s acknowledged (p99 per batch of 1000) | $S_IN ($S_IN99 ms) | $C_IN ($C_IN99 ms) |"
	echo "| ingest, events/s applied by the owner | $S_IN | $C_APPLIED |"
	echo "| uncached lists/s, one node (p50 / p99) | $S_REC ($S_REC50 / $S_REC99 ms) | $C_REC ($C_REC50 / $C_REC99 ms) |"
	echo "| uncached lists/s of its own users, one of two nodes (p50 / p99) | | $L_REC ($L_REC50 / $L_REC99 ms) |"
	echo "| uncached lists/s forwarded one hop to the other node (p50 / p99) | | $F_REC ($F_REC50 / $F_REC99 ms) |"
	echo "| errors in the list runs | $S_ERR | $C_ERR / $L_ERR / $F_ERR |"
	echo
	echo "| hand-over | partitions | mean | p50 ≤ | p99 ≤ |"
	echo "|---|--:|--:|--:|--:|"
	echo "| ml-100k, $PARTITIONS partitions, second node joins (snapshot at most 60 s old + replay) | $J_N | $J_MEAN s | $J_P50 s | $J_P99 s |"
	echo "| $((HANDOVER_USERS / 4)) users × $HANDOVER_EVENTS events per partition, from a snapshot | $H_N | $H_MEAN s | $H_P50 s | $H_P99 s |"
	echo "| the same, no snapshot (replay of the partition's whole log) | $R_N | $R_MEAN s | $R_P50 s | $R_P99 s |"
	echo
	echo "Item-statistics staleness (seconds from the broker logging an event to its item side in the other node's catalogue, \`momentum_cluster_item_staleness_seconds\`) while both nodes ingest 50k events each at full speed ($SA_IN and $SB_IN events/s acknowledged): mean $G_AMEAN s / $G_BMEAN s, p50 ≤ $G_A50 s / $G_B50 s, p99 ≤ $G_A99 s / $G_B99 s (nodes a / b, over $G_AN / $G_BN item-deltas records; quantiles are histogram bucket bounds)."
} >>"$SUMMARY"
cat "$SUMMARY"
