#!/usr/bin/env bash
# Trains a phantom-hand VAE baseline of the demo study on the shipped DDPM's budget (batch 8, 11 250 steps at
# 128 x 128; configs/demo/hand_vae_pretrain.yaml) and exports it for xraydiff/assets/:
#   full    -> demo_hand_vae.ckpt          (the 2000 phantom hands)
#   reduced -> demo_hand_vae_reduced.ckpt  (configs/demo/hand_vae_pretrain_reduced.yaml, their 10 %)
# Resumes from the last checkpoint (one every 250 steps), so a killed run continues where it stopped.
# 25 min 33 s (full) and 23 min 6 s (reduced) on a 2-core Xeon with AMX (bf16). Run from the project root:
#   bash scripts/demo_hand_vae.sh full
set -euo pipefail
SET=${1:-full}
XRAYDIFF=${XRAYDIFF:-xraydiff}
PYTHON=${PYTHON:-python}
case "$SET" in
  full) CONFIGS=(--config configs/demo/hand_vae_pretrain.yaml); ROOT=runs/pretrain_hand_vae; OUT=xraydiff/assets/demo_hand_vae.ckpt ;;
  reduced) ROOT=runs/pretrain_hand_vae_reduced; OUT=xraydiff/assets/demo_hand_vae_reduced.ckpt
           CONFIGS=(--config configs/demo/hand_vae_pretrain_reduced.yaml) ;;
  *) echo "usage: $0 full|reduced (got '$SET')" >&2; exit 2 ;;
esac
"$XRAYDIFF" fit "${CONFIGS[@]}" --trainer.enable_progress_bar false --ckpt_path last
last=$(ls -t "$ROOT"/checkpoints/last*.ckpt | head -1)
"$PYTHON" scripts/export_demo_checkpoint.py --ckpt_path "$last" --out "$OUT"
echo "exported $OUT from $last"
