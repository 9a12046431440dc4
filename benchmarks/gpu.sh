#!/usr/bin/env bash
# GPU runbook: on a machine with a CUDA GPU, one command reproduces paper Table 11 (parameters, ms/sample,
# ms/batch, peak memory for the bare encoder, teacher, student and CLIP) and times a full paper-recipe distillation
# (2 + 40 epochs, 7,000 samples, cached features, fp32 and bf16), then writes one Markdown report.
#
#   bash benchmarks/gpu.sh [OUT_DIR]              # default OUT_DIR: benchmarks/gpu-results
#   DRY_RUN=1 bash benchmarks/gpu.sh /tmp/dry     # CPU, tiny shapes: checks the script end to end in ~2 min
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh  # an interpreter other than the `python` on PATH
#
# Needs no Hub access (paper-size models with random weights: timing and memory do not depend on the weights).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/gpu-results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
PYTHON=${PYTHON:-python}
if [ "${DRY_RUN:-0}" = "1" ]; then
    DEVICE=cpu; TINY=(--tiny); EFFICIENCY=(--in-process --repeats 2); PRECISIONS=(fp32)
else
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA GPU visible (DRY_RUN=1 for the CPU dry run)')"
    DEVICE=cuda; TINY=(); EFFICIENCY=(--repeats 20); PRECISIONS=(fp32 bf16)
fi

"$PYTHON" -m trainers.cli bench-efficiency --device "$DEVICE" --models vision_encoder teacher student clip \
    --batch-size 32 "${EFFICIENCY[@]}" "${TINY[@]}" --out "$OUT/table11.json" > "$OUT/table11.md"
for precision in "${PRECISIONS[@]}"; do
    flags=(); [ "$precision" = "bf16" ] && flags=(--bf16)
    "$PYTHON" benchmarks/paper_recipe.py --device "$DEVICE" "${TINY[@]}" "${flags[@]}" \
        --out "$OUT/paper_recipe_$precision.json" > "$OUT/paper_recipe_$precision.log" 2>&1 \
        || { echo "gpu.sh: paper_recipe.py ($precision) failed; end of $OUT/paper_recipe_$precision.log:" >&2
             tail -n 20 "$OUT/paper_recipe_$precision.log" >&2; exit 1; }
done

"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
table11 = (out / "table11.md").read_text().strip()
runs = [json.loads(p.read_text()) for p in sorted(out.glob("paper_recipe_*.json"))]
keys = list(runs[0])
recipe = "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                   + ["| " + " | ".join(str(run[k]) for k in keys) + " |" for run in runs])
report = f"""# GPU runbook results (`benchmarks/gpu.sh`)

## Paper Table 11: efficiency

{table11}

Paper (Table 11, its GPU): teacher 22.81 ms/sample, student 1.51 ms/sample.

## Paper-recipe distillation on cached features (2 + 40 epochs, 7,000 samples, batch 32)

{recipe}
"""
(out / "gpu.md").write_text(report)
print(report)
PY
