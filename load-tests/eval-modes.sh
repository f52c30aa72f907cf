#!/usr/bin/env bash
# Offline quality of every recommendation mode on the MovieLens 100k split, as a Markdown table
# (P@10, NDCG@10, coverage, wall time per list). Each single-signal mode (item cosine,
# user-based, EASE) runs with content and the diversity re-rank on and off; then the default
# hybrid, cf and content modes.
#
#   load-tests/eval-modes.sh [DATA_DIR]     # default ../shared/data/ml-100k
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/ml-100k}"
cargo build --release -q -p momentum
bin=target/release/momentum
out=$(mktemp)
trap 'rm -f "$out"' EXIT
row() {
  local label="$1"
  shift
  "$bin" eval recommend --train "$data/split/train.csv" --test "$data/split/test.csv" \
    --items "$data/items.csv" --k 10 --out "$out" "$@" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("| %s | %.4f | %.4f | %.3f | %.3f |" % (sys.argv[1], d["precision_at_k"], d["ndcg_at_k"], d["coverage"], d["ms_per_list"]))' "$label"
}
echo "| mode | P@10 | NDCG@10 | coverage | ms per list |"
echo "|---|--:|--:|--:|--:|"
for mode in item user ease; do
  row "$mode" --mode "$mode" --no-diversity
  row "$mode + diversity" --mode "$mode"
  row "$mode + content" --mode "$mode" --with-content --no-diversity
  row "$mode + content + diversity" --mode "$mode" --with-content
done
row "hybrid (default)" --mode hybrid
row "cf (default, no content)" --mode cf
row "content only" --mode content
