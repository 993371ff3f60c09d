#!/usr/bin/env bash
# The full-mode quality benchmarks behind figures/RESULTS.md, in one go on one GPU:
#   1. train the deeper DiT baseline (DiT-FM-M at depth 16, the shipped DiT's recipe)   } at the same
#   2. train the ablation models (S-JFB / JFB / full backprop, depths, ranges; 2 seeds)  } time, in the
#   3. the quality landscape of the shipped FPDM (selection seed set)                      } background
#   4. the headline comparison (report seed set), with the depth-16 DiT from step 1
#   5. convergence of the shipped FPDM's fixed-point map
# Usage: bash scripts/full_benchmark.sh OUT [--quick|--tiny]
#   DEVICE (default cuda), JOBS (ablation workers, default 10), DEEP_STEPS (default 1950: the steps a
#   depth-16 DiT affords in the shipped DiT-8's compute: 3895 steps x FLOPs(DiT-8) / FLOPs(DiT-16) per step).
# Results: OUT/fig/bench/*.json and OUT/fig/*.png (copy them into figures/ and run
# `python -m fpdm_core.bench report`), OUT/dit16-fm-m.safetensors, logs in OUT/*.log.
set -uo pipefail
OUT=${1:?usage: bash scripts/full_benchmark.sh OUT [--quick|--tiny]}
MODE=${2:-}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-10}
DEEP_STEPS=${DEEP_STEPS:-1950}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/fig"
stamp() { echo "[full_benchmark $(date +%T)] $*"; }

stamp "train DiT-16 for $DEEP_STEPS steps; ablations with $JOBS workers; landscape"
python3 -m fpdm_core.train --run-dir "$OUT/runs/dit16" --model DiT-FM-M --model-override depth=16 \
  --batch-size 128 --lr 7e-4 --warmup-steps 200 --ema-decay 0.999 --max-steps "$DEEP_STEPS" --device "$DEVICE" \
  --seed 0 --log-every 25 --sample-every 0 --save-every 500 --no-progress >"$OUT/dit16.log" 2>&1 &
train_pid=$!
python3 -m fpdm_core.bench ablations $MODE --device "$DEVICE" --jobs "$JOBS" --out "$OUT/fig" >"$OUT/ablations.log" 2>&1 &
abl_pid=$!
python3 -m fpdm_core.bench landscape $MODE --device "$DEVICE" --out "$OUT/fig" >"$OUT/landscape.log" 2>&1
stamp "landscape exit $?"

wait $train_pid
stamp "DiT-16 training exit $?"
python3 -m fpdm_core.checkpoints "$OUT/runs/dit16/checkpoint.safetensors" "$OUT/dit16-fm-m.safetensors" --force
cp "$OUT/runs/dit16/metrics.jsonl" "$OUT/dit16-fm-m.metrics.jsonl"
python3 -m fpdm_core.bench headline $MODE --device "$DEVICE" --dit-deep "$OUT/dit16-fm-m.safetensors" \
  --out "$OUT/fig" >"$OUT/headline.log" 2>&1
stamp "headline exit $?"
python3 -m fpdm_core.bench convergence $MODE --device "$DEVICE" --out "$OUT/fig" >"$OUT/convergence.log" 2>&1
stamp "convergence exit $?"
wait $abl_pid
stamp "ablations exit $?"
