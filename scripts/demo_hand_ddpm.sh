#!/usr/bin/env bash
# Trains a phantom-hand DDPM of the demo study in its two stages and exports it for xraydiff/assets/:
#   full    -> demo_hand_ddpm.ckpt          (configs/demo/hand_ddpm_pretrain.yaml, the 2000 phantom hands)
#   reduced -> demo_hand_ddpm_reduced.ckpt  (configs/demo/hand_ddpm_pretrain_reduced.yaml, their 10 %)
# Stage 1: epsilon objective to step 5595; stage 2: v-prediction to step 11 250 (see PairedDDPM). Every
# stage resumes from the last checkpoint (one every 250 steps), so a killed run continues where it stopped.
# About 2.7 h on 2 CPU cores with native bf16, about 7 h at 32-bit (2.1 s per step on an AVX2 EPYC). Run from the project root:
#   bash scripts/demo_hand_ddpm.sh reduced
set -euo pipefail
SET=${1:-full}
XRAYDIFF=${XRAYDIFF:-xraydiff}
PYTHON=${PYTHON:-python}
STAGE1_STEPS=5595
case "$SET" in
  full) CONFIGS=(--config configs/demo/hand_ddpm_pretrain.yaml); ROOT=runs/pretrain_hand_ddpm; OUT=xraydiff/assets/demo_hand_ddpm.ckpt ;;
  reduced) ROOT=runs/pretrain_hand_ddpm_reduced; OUT=xraydiff/assets/demo_hand_ddpm_reduced.ckpt
           CONFIGS=(--config configs/demo/hand_ddpm_pretrain_reduced.yaml) ;;
  *) echo "usage: $0 full|reduced (got '$SET')" >&2; exit 2 ;;
esac
QUIET=(--trainer.enable_progress_bar false)

# the step of the newest "last" checkpoint (0 without one): stage 1 must not run again over stage 2's
step=$("$PYTHON" - "$ROOT/checkpoints" <<'PY'
import sys
from pathlib import Path
import torch
last = sorted(Path(sys.argv[1]).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
print(torch.load(last[-1], map_location="cpu", weights_only=False)["global_step"] if last else 0)
PY
)
if [ "$step" -lt "$STAGE1_STEPS" ]; then
  "$XRAYDIFF" fit "${CONFIGS[@]}" "${QUIET[@]}" --model.init_args.schedule.prediction_type epsilon \
      --trainer.max_steps "$STAGE1_STEPS" --ckpt_path last
fi
"$XRAYDIFF" fit "${CONFIGS[@]}" "${QUIET[@]}" --ckpt_path last
last=$(ls -t "$ROOT"/checkpoints/last*.ckpt | head -1)
"$PYTHON" scripts/export_demo_checkpoint.py --ckpt_path "$last" --out "$OUT"
echo "exported $OUT from $last"
