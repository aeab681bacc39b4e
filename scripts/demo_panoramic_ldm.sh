#!/usr/bin/env bash
# Trains the phantom-jaw autoencoder and LDM shipped as xraydiff/assets/demo_panoramic_ldm.ckpt (the generator
# of the demo's blend study, configs/demo/panoramic_blend.yaml), and exports it (float16 EMA weights, the frozen
# autoencoder inside). About 35 minutes on 2 otherwise idle CPU cores. Run from the project root.
set -euo pipefail
XRAYDIFF=${XRAYDIFF:-xraydiff}
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/pretrain_panoramic}
QUIET=(--trainer.enable_progress_bar false --trainer.logger lightning.pytorch.loggers.CSVLogger)
$XRAYDIFF fit --config configs/demo/panoramic_autoencoder.yaml --trainer.max_epochs 100 \
    --trainer.check_val_every_n_epoch 25 --trainer.default_root_dir "$OUT/autoencoder" \
    "${QUIET[@]}" --trainer.logger.save_dir "$OUT/autoencoder" --ckpt_path last
$XRAYDIFF test --config configs/demo/panoramic_autoencoder.yaml --trainer.default_root_dir "$OUT/autoencoder" \
    "${QUIET[@]}" --trainer.logger.save_dir "$OUT/autoencoder" --ckpt_path "$OUT/autoencoder/checkpoints/last.ckpt"
$XRAYDIFF fit --config configs/demo/panoramic_ldm.yaml --trainer.max_epochs 200 \
    --trainer.check_val_every_n_epoch 100 --trainer.default_root_dir "$OUT/ldm" \
    --model.init_args.autoencoder_ckpt "$OUT/autoencoder/checkpoints/last.ckpt" \
    "${QUIET[@]}" --trainer.logger.save_dir "$OUT/ldm" --ckpt_path last
$PYTHON scripts/export_demo_checkpoint.py --ckpt_path "$OUT/ldm/checkpoints/last.ckpt" \
    --out xraydiff/assets/demo_panoramic_ldm.ckpt
$XRAYDIFF sample --ckpt_path xraydiff/assets/demo_panoramic_ldm.ckpt --num_samples 16 --batch_size 16 \
    --out "$OUT/samples" --overwrite
