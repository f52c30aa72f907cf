#!/usr/bin/env bash
# Regenerates the README's "Performance" section from fresh load-test reports:
#   1. builds release `momentum` and `momentum-load`;
#   2. starts the server on a free local port with a throw-away embedded store and waits for
#      /readyz (then PUTs the ml-100k item titles and genres, so the hybrid path runs);
#   3. runs ingest (the ml-100k ratings), builds the learned item model
#      (POST /v1/admin/item-model), then recommend (open loop, 30 s), mixed (open loop, 60 s),
#      overload --check and a short soak, writing every JSON report and SVG chart to docs/perf/;
#   4. stops that server (SIGTERM) and starts a second one with the list cache off
#      (recommend.cache_ttl_secs = 0) and durability async: PUTs the items, ingests the ratings
#      again, builds the item model, and measures uncached lists in a closed loop (4
#      connections, 20 s) and in an open loop (UNCACHED_RATE, 30 s);
#   5. stops it, writes docs/perf/README.md (the machine, then `momentum-load markdown` of the
#      reports of each server) and puts the same text between the lines
#      `<!-- perf:begin -->` and `<!-- perf:end -->` of README.md.
# A failed overload check does not stop the script: the README shows the verdicts, and the
# script exits with overload's status (3) at the very end.
#
# Usage, from anywhere, on a quiet machine: load-tests/perf-readme.sh
# Environment (defaults in brackets):
#   DATA           ml-100k directory (ratings.csv, items.csv) or a ratings CSV
#                  [${MOMENTUM_DATA:-../shared/data}/ml-100k]
#   REC_RATE       recommend open-loop rate, req/s, for 30 s [1000]
#   MIXED_RATE     mixed open-loop rate, req/s [600]
#   MIXED_DURATION mixed length [60s]
#   UNCACHED_RATE  open-loop rate of the uncached lists, req/s, for 30 s [3000]
#   SUSTAINABLE    overload --rate (warm-up, recovery); overload at twice that [600]
#   SOAK_RATE      soak rate, req/s [100]
#   SOAK_DURATION  soak length [2m]
#   DURABILITY     the first server's store.durability, sync or async [sync]
#   ITEMS          1: PUT the item metadata before measuring; 0: ratings only [1]
#   PORT           server port [a free one]
#   SKIP_BUILD     1: use the binaries already built [0]
#   CARGO_TARGET_DIR  where cargo puts the binaries [target]
# Needs bash, coreutils, curl and python3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=docs/perf
README=README.md
BEGIN_MARK='<!-- perf:begin -->'
END_MARK='<!-- perf:end -->'
SCENARIOS=(ingest recommend mixed overload soak)
UNCACHED=(ingest-async uncached-closed uncached-open)

DATA=${DATA:-${MOMENTUM_DATA:-../shared/data}/ml-100k}
REC_RATE=${REC_RATE:-1000}
MIXED_RATE=${MIXED_RATE:-600}
MIXED_DURATION=${MIXED_DURATION:-60s}
UNCACHED_RATE=${UNCACHED_RATE:-3000}
SUSTAINABLE=${SUSTAINABLE:-600}
SOAK_RATE=${SOAK_RATE:-100}
SOAK_DURATION=${SOAK_DURATION:-2m}
DURABILITY=${DURABILITY:-sync}
ITEMS=${ITEMS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
BIN=${CARGO_TARGET_DIR:-target}/release
SERVER_BIN=$BIN/momentum
LOAD_BIN=$BIN/momentum-load

log() { echo "perf-readme: $*" >&2; }
die() {
	log "$*"
	exit 1
}

# `check README.md`: the marker lines are there, once each, in order.
# `write README.md FRAGMENT`: replaces what is between them with the fragment.
splice() {
	python3 - "$BEGIN_MARK" "$END_MARK" "$@" <<'PY'
import os, sys

begin, end, mode, readme = sys.argv[1:5]
try:
    with open(readme, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
except OSError as e:
    sys.exit(f"perf-readme: cannot read {readme}: {e.strerror}")
begins = [i for i, line in enumerate(lines) if line.strip() == begin]
ends = [i for i, line in enumerate(lines) if line.strip() == end]
if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
    sys.exit(
        f"perf-readme: {readme} needs one line '{begin}' and, after it, one line '{end}' "
        f"(found {len(begins)} and {len(ends)}): add them where the Performance section goes; "
        "everything between them is replaced"
    )
if mode == "write":
    with open(sys.argv[5], encoding="utf-8") as f:
        fragment = f.read().strip("\n") + "\n"
    b, e = begins[0], ends[0]
    text = "".join(lines[: b + 1]) + "\n" + fragment + "\n" + "".join(lines[e:])
    tmp = readme + ".perf-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, readme)
PY
}

# Fail before a long run, not after it.
splice check "$README"

if [[ -d $DATA ]]; then
	RATINGS=$DATA/ratings.csv
	ITEMS_CSV=$DATA/items.csv
else
	RATINGS=$DATA
	ITEMS_CSV=$(dirname "$DATA")/items.csv
fi
[[ -r $RATINGS ]] || die "no ratings CSV at $RATINGS (set DATA to the ml-100k directory or a ratings CSV)"
[[ $DURABILITY == sync || $DURABILITY == async ]] || die "DURABILITY must be sync or async"
command -v curl >/dev/null || die "curl is needed"
command -v python3 >/dev/null || die "python3 is needed"

# Commit of the measured code: changes outside the generated files make it "dirty".
COMMIT=unknown
if command -v git >/dev/null && COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null); then
	if [[ -n $(git status --porcelain --untracked-files=no -- . ":!$OUT" ":!$README" 2>/dev/null) ]]; then
		COMMIT="$COMMIT (with uncommitted changes)"
	fi
else
	COMMIT=unknown
fi

if [[ $SKIP_BUILD != 1 ]]; then
	log "building release momentum and momentum-load"
	cargo build --release -p momentum -p momentum-load
fi
[[ -x $SERVER_BIN && -x $LOAD_BIN ]] || die "no $SERVER_BIN or $LOAD_BIN (build them, or set CARGO_TARGET_DIR)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/momentum-perf.XXXXXX")
SERVER_PID=
stop_server() {
	if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
		log "stopping the server (SIGTERM)"
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		local status=0
		wait "$SERVER_PID" || status=$?
		if ((status != 0)); then
			log "the server exited with status $status; the end of its log:"
			tail -n 20 "$TMP/server.log" >&2 || true
		fi
	fi
	SERVER_PID=
}
cleanup() {
	stop_server
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

load_average() {
	local one five fifteen _
	read -r one five fifteen _ </proc/loadavg
	echo "$one $five $fifteen"
}

PORT=${PORT:-$(free_port)}
TARGET=http://127.0.0.1:$PORT
LOAD_START=$(load_average)
ADMIN_KEY=$(hex 16)

# start_server DURABILITY [NAME=VALUE...]: a server on $PORT with a fresh store under $TMP,
# scheduled training and churn scoring off (so that they cannot land in the middle of a
# measurement), everything else config/default.toml but the settings given; waits for /readyz.
start_server() {
	local durability=$1
	shift
	rm -rf "$TMP/store"
	log "starting $SERVER_BIN on 127.0.0.1:$PORT (store in $TMP/store, durability $durability${*:+, $*})"
	env -u RUST_LOG \
		MOMENTUM__SERVER__BIND="127.0.0.1:$PORT" \
		MOMENTUM__STORE__KIND=embedded \
		MOMENTUM__STORE__PATH="$TMP/store" \
		MOMENTUM__STORE__DURABILITY="$durability" \
		MOMENTUM__SECURITY__ADMIN_KEY="$ADMIN_KEY" \
		MOMENTUM__SECURITY__MODEL_KEY="$(hex 32)" \
		MOMENTUM__TRAINER__INTERVAL_SECS=0 \
		MOMENTUM__CHURN__INTERVAL_SECS=0 \
		MOMENTUM__LOGGING__LEVEL=warn \
		"$@" \
		"$SERVER_BIN" >"$TMP/server.log" 2>&1 &
	SERVER_PID=$!
	local deadline=$((SECONDS + 120))
	until curl -fsS -o /dev/null --max-time 2 "$TARGET/readyz" 2>/dev/null; do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			tail -n 20 "$TMP/server.log" >&2
			SERVER_PID=
			die "the server exited during start-up (log above)"
		fi
		((SECONDS < deadline)) || die "the server was not ready after 120 s"
		sleep 0.2
	done
	log "server ready"
}

# put_items: PUTs the titles and genres of $ITEMS_CSV (when ITEMS=1 and it is there), so the
# hybrid path runs; prints how many.
put_items() {
	[[ $ITEMS == 1 && -r $ITEMS_CSV ]] || return 0
	python3 - "$PORT" "$ITEMS_CSV" <<'PY'
import csv, http.client, json, sys

port, path = int(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
count = 0
with open(path, newline="", encoding="utf-8") as f:
    rows = csv.reader(f)
    next(rows, None)  # item_id,title,release_year,genres
    for row in rows:
        if len(row) < 2:
            continue
        tags = [g for g in (row[3] if len(row) > 3 else "").split("|") if g]
        body = json.dumps({"title": row[1], "tags": tags})
        conn.request("PUT", f"/v1/items/{row[0]}", body, {"content-type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        if answer.status >= 300:
            sys.exit(f"PUT /v1/items/{row[0]} answered {answer.status}")
        count += 1
print(count)
PY
}

# build_item_model: POST /v1/admin/item-model, as an operator does after a bulk import; prints
# the answer (version, items, seconds).
build_item_model() {
	local answer
	answer=$(curl -fsS --max-time 300 -X POST -H "X-Admin-Key: $ADMIN_KEY" "$TARGET/v1/admin/item-model") ||
		die "POST /v1/admin/item-model failed"
	log "item model built: $answer"
}

start_server "$DURABILITY"
DATA_NOTE="the ratings of \`$RATINGS\`"
count=$(put_items)
if [[ -n $count ]]; then
	log "$count items PUT from $ITEMS_CSV"
	DATA_NOTE="$DATA_NOTE, after PUTting the titles and genres of $count items (\`$ITEMS_CSV\`)"
elif [[ $ITEMS == 1 ]]; then
	log "no $ITEMS_CSV: measuring without item metadata"
fi

mkdir -p "$OUT"
for name in "${SCENARIOS[@]}" "${UNCACHED[@]}"; do
	rm -f "$OUT/$name.json" "$OUT/$name.svg"
done

# run NAME SUBCOMMAND ARGS...: one momentum-load run reporting to $OUT/NAME.json (+ .svg);
# prints its summary line; returns momentum-load's exit status.
run() {
	local name=$1
	shift
	log "$name: momentum-load $*"
	local status=0
	"$LOAD_BIN" "$@" --target "$TARGET" --report "$OUT/$name.json" >"$TMP/$name.out" || status=$?
	head -n 1 "$TMP/$name.out"
	return "$status"
}

run ingest ingest --ratings "$RATINGS" --batch 1000 --connections 4
build_item_model
run recommend recommend --users "$RATINGS" --rate "$REC_RATE" --duration 30s
run mixed mixed --ratings "$RATINGS" --rate "$MIXED_RATE" --duration "$MIXED_DURATION"
OVERLOAD_STATUS=0
run overload overload --ratings "$RATINGS" --rate "$SUSTAINABLE" --factor 2 --check ||
	OVERLOAD_STATUS=$?
run soak soak --ratings "$RATINGS" --rate "$SOAK_RATE" --duration "$SOAK_DURATION"
stop_server

# The live path: every list computed, none served from the cache.
start_server async MOMENTUM__RECOMMEND__CACHE_TTL_SECS=0
put_items >/dev/null
run ingest-async ingest --ratings "$RATINGS" --batch 1000 --connections 4
build_item_model
run uncached-closed recommend --users "$RATINGS" --connections 4 --duration 20s
run uncached-open recommend --users "$RATINGS" --rate "$UNCACHED_RATE" --duration 30s
stop_server
LOAD_END=$(load_average)

cpu_model=
while IFS=: read -r key value; do
	if [[ $key == "model name"* ]]; then
		cpu_model=${value# }
		break
	fi
done </proc/cpuinfo
mem_kib=0
while read -r key value _; do
	if [[ $key == MemTotal: ]]; then
		mem_kib=$value
		break
	fi
done </proc/meminfo
mem_tenths=$(((mem_kib * 10 + 524288) / 1048576))
rustc_version=$(rustc --version 2>/dev/null || echo "rustc unknown")

MACHINE="- Machine: $(nproc) CPUs${cpu_model:+ ($cpu_model)}, $((mem_tenths / 10)).$((mem_tenths % 10)) GiB RAM, $(uname -sr); load average $LOAD_START before the runs, $LOAD_END after them.
- Code: commit \`$COMMIT\`, release build, $rustc_version.
- Server: \`momentum\` on 127.0.0.1 with an embedded store (durability \`$DURABILITY\`) in a fresh temporary directory, scheduled training and churn scoring off, otherwise \`config/default.toml\`; the load generator runs on the same machine. The learned item model is built (\`POST /v1/admin/item-model\`) after the ingest; the prediction routes of \`mixed\` answer \`503 model_not_ready\`, as no success or churn model is trained.
- Data: $DATA_NOTE.
- Regenerate: \`REC_RATE=$REC_RATE MIXED_RATE=$MIXED_RATE MIXED_DURATION=$MIXED_DURATION UNCACHED_RATE=$UNCACHED_RATE SUSTAINABLE=$SUSTAINABLE SOAK_RATE=$SOAK_RATE SOAK_DURATION=$SOAK_DURATION DURABILITY=$DURABILITY load-tests/perf-readme.sh\`; each run's own command is under its heading."
LIVE="#### The live path: lists computed on every request

A second server, started after the first one stopped, with the list cache off (\`MOMENTUM__RECOMMEND__CACHE_TTL_SECS=0\`) and durability \`async\`, otherwise as above: the items PUT, the ratings ingested (\`ingest-async\`), the item model built, then lists in a closed loop over 4 connections and in an open loop at $UNCACHED_RATE req/s. Every answer is computed from the live state."

# existing REPORT.json... : the ones of the names given that were written.
existing() {
	local name
	for name in "$@"; do
		if [[ -f $OUT/$name.json ]]; then
			echo "$OUT/$name.json"
		else
			log "no $OUT/$name.json: left out of the README"
		fi
	done
}
mapfile -t reports < <(existing "${SCENARIOS[@]}")
mapfile -t live < <(existing "${UNCACHED[@]}")

# fragment CHART_DIR: the Markdown of both servers' reports, charts linked from CHART_DIR.
fragment() {
	"$LOAD_BIN" markdown "${reports[@]}" --machine "$MACHINE" --chart-dir "$1"
	if ((${#live[@]} > 0)); then
		echo
		echo
		# The second render's own "generated" comment is the first line: the first one's holds.
		"$LOAD_BIN" markdown "${live[@]}" --machine "$LIVE" --chart-dir "$1" | tail -n +2
	fi
}
fragment . >"$TMP/local.md"
fragment "$OUT" >"$TMP/root.md"
{
	echo "# Performance"
	echo
	echo "Load-test reports of Momentum written by \`load-tests/perf-readme.sh\`: the JSON reports and"
	echo "SVG charts are beside this file, and the same text is the Performance section of the"
	echo "top-level README."
	echo
	cat "$TMP/local.md"
} >"$OUT/README.md"
splice write "$README" "$TMP/root.md"
log "wrote $OUT/README.md and the Performance section of $README"

if ((OVERLOAD_STATUS != 0)); then
	if ((OVERLOAD_STATUS == 3)); then
		log "overload: a check failed (verdicts in $OUT/README.md)"
	else
		log "overload: the run failed (status $OVERLOAD_STATUS)"
	fi
	exit "$OVERLOAD_STATUS"
fi
