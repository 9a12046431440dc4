#!/usr/bin/env bash
# The at-size figures in one run on one tree: concurrent LLM annotation, streamed build at 1k/10k/100k records,
# the bytes of a lean training run and predict vs eval per image on that run's teacher. Writes OUT/at_size.md
# (commit, date, load) and each benchmark's own output beside it.
#
#   bash benchmarks/at_size.sh [OUT_DIR]            # default OUT_DIR: /tmp/stepcot-at-size; about 20 min on 2 cores
#   SIZES="1000 10000" bash benchmarks/at_size.sh   # fewer build sizes
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/stepcot-at-size}
SIZES=${SIZES:-1000 10000 100000}
REPORTS=${REPORTS:-2000}
SLOW_REPORTS=${SLOW_REPORTS:-200}
PYTHON=${PYTHON:-python}
STEPCOT=${STEPCOT:-stepcot}
rm -rf "$OUT" && mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
report="$OUT/at_size.md"
{
    echo "# At size, $(date -u +%F), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
    echo; echo "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores."
} > "$report"

"$PYTHON" benchmarks/annotation_concurrency.py --reports "$REPORTS" --concurrency 16 --slow-reports "$SLOW_REPORTS" \
    --identity-reports "$SLOW_REPORTS" --json "$OUT/annotation.json" > "$OUT/annotation.log" 2>&1
{ echo; echo "## Concurrent annotation"; echo; echo '```'; tail -n 12 "$OUT/annotation.log"; echo '```'; } >> "$report"

{ echo; echo "## Streamed build"; echo; echo "| records | build s | records/s | peak RSS MB |"; echo "|---|---|---|---|"; } >> "$report"
for n in $SIZES; do
    "$STEPCOT" data demo --output-dir "$OUT/release-$n" --n "$n" --image-size 32 --workers 2 > /dev/null
    /usr/bin/time -f "%e %M" -o "$OUT/build-$n.time" "$STEPCOT" data build --source "$OUT/release-$n" \
        --output-dir "$OUT/built-$n" --lenient > "$OUT/build-$n.log" 2>&1
    read -r seconds kilobytes < "$OUT/build-$n.time"
    awk -v n="$n" -v s="$seconds" -v k="$kilobytes" \
        'BEGIN { printf "| %d | %.1f | %.0f | %.0f |\n", n, s, n / s, k / 1024 }' >> "$report"
    rm -rf "$OUT/release-$n" "$OUT/built-$n"
done

"$PYTHON" benchmarks/checkpoint_bytes.py --label final --json "$OUT/bytes.json" -- --output_dir "$OUT/run" \
    --demo_size 120 --demo_image_size 64 --num_train_epochs 4 --num_bootstrap 0 > "$OUT/bytes.log" 2>&1
{ echo; echo "## Lean run"; echo; echo '```'; tail -n 15 "$OUT/bytes.log"; echo '```'; } >> "$report"

"$PYTHON" benchmarks/inference.py --predict-vs-eval "$OUT/run/teacher" --dataset "$OUT/run/dataset" --repeats 3 \
    --out "$OUT/predict_vs_eval.json" > "$OUT/predict_vs_eval.log" 2>&1
{ echo; echo "## Predict vs eval"; echo; echo '```'; tail -n 12 "$OUT/predict_vs_eval.log"; echo '```'; } >> "$report"
echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)." >> "$report"
cat "$report"
