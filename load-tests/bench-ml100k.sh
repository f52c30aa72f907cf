#!/usr/bin/env bash
# The ml-100k benchmark: starts a release server, PUTs the 1,682 items, ingests the 100k
# ratings over HTTP (momentum-load ingest), then runs two 30 s open-loop recommendation passes
# (the first fills the per-user cache, the second is steady state) and saves the server-side
# latency histogram of each pass next to the JSON reports in $OUT (default: .).
# Usage: cargo build --release -p momentum -p momentum-load && load-tests/bench-ml100k.sh
# Environment: RATE (default 1000 req/s), PORT, EXTRA_ENV (e.g. MOMENTUM__RECOMMEND__CACHE_CAPACITY=0).
set -eu
T=${T:-target/release}
D=${MOMENTUM_DATA:-../shared/data}/ml-100k
PORT=${PORT:-18080}
EXTRA_ENV=${EXTRA_ENV:-}
env $EXTRA_ENV MOMENTUM__LOGGING__LEVEL=warn $T/momentum --bind 127.0.0.1:$PORT > /tmp/bench-server.log 2>&1 &
SRV=$!
trap 'kill $SRV' EXIT
sleep 1
# Items (titles and genres) so the hybrid path runs.
tail -n +2 $D/items.csv | python3 -c '
import csv,sys,json,urllib.request
for row in csv.reader(sys.stdin):
    body=json.dumps({"title":row[1],"tags":[g for g in row[3].split("|") if g]}).encode()
    req=urllib.request.Request(f"http://127.0.0.1:'$PORT'/v1/items/{row[0]}",data=body,method="PUT",headers={"content-type":"application/json"})
    urllib.request.urlopen(req).read()
'
$T/momentum-load ingest --target http://127.0.0.1:$PORT --ratings $D/ratings.csv --batch 1000 --connections 4 --report ${OUT:-.}/ingest.json 2>/dev/null | head -1
for pass in 1 2; do
$T/momentum-load recommend --target http://127.0.0.1:$PORT --users $D/ratings.csv --rate ${RATE:-1000} --connections 4 --duration 30s --report ${OUT:-.}/recommend-$pass.json 2>/dev/null | head -1
curl -s localhost:$PORT/metrics | grep -E 'duration_seconds_(bucket|count)\{method="GET",route="/v1/users/\{id\}/recommendations",status="200"' > ${OUT:-.}/server-hist-$pass.txt
done
curl -s localhost:$PORT/metrics | grep -E 'cache_requests_total\{'
