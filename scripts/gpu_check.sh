#!/usr/bin/env bash
# The GPU path in one run (<= 5 minutes on one GPU): CUDA latency LUT built, calibrated and validated on
# held-out architectures (resnet20 and mobilenetv2, batch 1 and 256), a short --budget-latency search
# with --device cuda --gpus-per-trial 0.25, a retrain of its best, and the retrained model's speed-up
# over the dense one (dense and pruned timed interleaved, median of 5 rounds, at batch 1 and 256), and
# the measured effect of rounding widths to multiples of 8 and 16 (scripts/benchmark_round_to.py).
#
#   bash scripts/gpu_check.sh   # writes results/gpu/{lut,lut_samples,speedup,round_to}.csv, prints a table
#   GPU_CHECK_OUT=/tmp/g bash scripts/gpu_check.sh     # elsewhere
#   PYTHON=.venv/bin/python bash scripts/gpu_check.sh  # another interpreter (default: python)
#
# Without CUDA it says so and runs a CPU dry mode instead (a one-model LUT check at batch 1 and the
# search's --dry-run with the same flags on the CPU), then exits 0; CI runs that mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-results/gpu}
mkdir -p "$OUT"

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda
  echo "CUDA: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
else
  DEVICE=cpu
  echo "No CUDA device here: running the CPU dry mode (nothing below is a GPU measurement)."
fi

start=$SECONDS
if [ "$DEVICE" = cuda ]; then
  "$PY" scripts/benchmark_lut.py --device cuda --models resnet20 mobilenetv2 --batch 1 256 \
    --samples 6 --fit-samples 6 --rounds 2 --cache-dir "$OUT/lut" --output "$OUT/lut.csv"
  "$PY" -m nas_prune.search --model resnet20 --dataset synthetic --subset 2048 --budget-latency 0.6 \
    --device cuda --gpus-per-trial 0.25 --trials 8 --pretrain-epochs 1 --gate-epochs 0 --round-to 8 \
    --lut-dir "$OUT/lut" --lut-samples 4 --output "$OUT/search"
  "$PY" -m nas_prune.retrain "$OUT/search" --epochs 1 --device cuda --latency-batch-large 256 --no-export
  "$PY" scripts/benchmark_round_to.py --device cuda --models resnet20 mobilenetv2 --batch 1 256 \
    --output "$OUT/round_to.csv"
else
  "$PY" scripts/benchmark_lut.py --device cpu --models convnet --batch 1 --samples 2 --fit-samples 2 \
    --rounds 1 --threads 1 --cache-dir "$OUT/lut" --output "$OUT/lut.csv"
  "$PY" -m nas_prune.search --model resnet20 --dataset synthetic --budget-latency 0.6 --device cpu \
    --gpus-per-trial 0 --trials 8 --pretrain-epochs 1 --gate-epochs 0 --round-to 8 \
    --lut-dir "$OUT/lut" --output "$OUT/search" --dry-run > "$OUT/search_dry_run.txt"
  echo "search --dry-run: $(grep -c . "$OUT/search_dry_run.txt") lines in $OUT/search_dry_run.txt"
  "$PY" scripts/benchmark_round_to.py --device cpu --models convnet --batch 1 --round-to 8 --rounds 1 \
    --threads 1 --output "$OUT/round_to.csv"
fi

"$PY" - "$OUT" "$DEVICE" "$((SECONDS - start))" <<'EOF'
"""Collect the run's numbers into speedup.csv and print one table."""
import json
import sys
from pathlib import Path

import pandas as pd

out, device, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lut = pd.read_csv(out / "lut.csv")
print(f"\n| check | model | batch | result | device: {device} |")
print("|---|---|---|---|---|")
for _, r in lut.iterrows():
    print(
        f"| LUT held-out error | {r['model']} | {r['batch']} | median {r['median_error']:.1%}, worst "
        f"{r['worst_error']:.1%}, Spearman {r['spearman']:.2f}, {r['predictions_per_s']:.0f} predictions/s | |"
    )
rows = []
for path in sorted((out / "search" / "retrain").glob("*/metrics.json")):
    m = json.loads(path.read_text())
    for b, key in ((m["latency_batch"], "speedup"), (m["latency_large_batch"], "speedup_large")):
        rows.append(
            {
                "name": path.parent.name,
                "batch": b,
                "speedup": m[key],
                "speedup_low": m[f"{key}_low"],
                "speedup_high": m[f"{key}_high"],
                "flops_ratio": m["flops_ratio"],
                "test_accuracy": m["test_accuracy"],
                "device": m["latency_device"],
            }
        )
        print(
            f"| retrained best vs dense | {m['model']} ({path.parent.name}) | {b} | {m[key]:.2f}x "
            f"({m[f'{key}_low']:.2f}-{m[f'{key}_high']:.2f}) at {m['flops_ratio']:.0%} FLOPs | |"
        )
pd.DataFrame(rows).to_csv(out / "speedup.csv", index=False)
for _, r in pd.read_csv(out / "round_to.csv").iterrows():
    print(
        f"| uniform widths vs dense | {r['model']} ({r['variant']}) | {r['batch']} | {r['speedup']:.2f}x "
        f"({r['speedup_low']:.2f}-{r['speedup_high']:.2f}) at {r['flops_ratio']:.0%} FLOPs | |"
    )
print(f"\n{seconds} s; wrote {out}/lut.csv, lut_samples.csv, speedup.csv and round_to.csv")
EOF
