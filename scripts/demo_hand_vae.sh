#!/usr/bin/env bash
# Trains the phantom-hand VAE baseline of the demo study on the shipped DDPM's budget (the same 2000 phantom
# hands, batch 8, 11 250 steps; configs/demo/hand_vae_pretrain.yaml) and exports it as
# xraydiff/assets/demo_hand_vae.ckpt. Resumes from the last checkpoint (one every 250 steps), so a killed run
# continues where it stopped. About 17 min on 2 CPU cores with native bf16. Run from the project root:
#   bash scripts/demo_hand_vae.sh
set -euo pipefail
XRAYDIFF=${XRAYDIFF:-xraydiff}
PYTHON=${PYTHON:-python}
ROOT=runs/pretrain_hand_vae
OUT=${OUT:-xraydiff/assets/demo_hand_vae.ckpt}
"$XRAYDIFF" fit --config configs/demo/hand_vae_pretrain.yaml --trainer.enable_progress_bar false --ckpt_path last
last=$(ls -t "$ROOT"/checkpoints/last*.ckpt | head -1)
"$PYTHON" scripts/export_demo_checkpoint.py --ckpt_path "$last" --out "$OUT"
echo "exported $OUT from $last"
