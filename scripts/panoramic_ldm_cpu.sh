#!/usr/bin/env bash
# The latent diffusion CPU recipe on the real UFBA-425 radiographs (docs/panoramic.md): the
# autoencoder (35 min), its test PSNR / SSIM, the LDM on top of it (25 min) and 16 DDIM samples.
# Prints the figures docs/panoramic.md quotes. Run from the project root with ../shared/data beside it.
set -euo pipefail
XRAYDIFF=${XRAYDIFF:-xraydiff}
$XRAYDIFF fit --config configs/data/panoramic.yaml --config configs/panoramic/autoencoder_cpu.yaml
$XRAYDIFF test --config configs/data/panoramic.yaml --config configs/panoramic/autoencoder_cpu.yaml --ckpt_path last
$XRAYDIFF fit --config configs/data/panoramic.yaml --config configs/panoramic/ldm_cpu.yaml
$XRAYDIFF sample --ckpt_path runs/panoramic_ldm_cpu/checkpoints/last.ckpt --num_samples 16 --batch_size 8 \
    --out runs/panoramic_ldm_cpu/samples --overwrite
python - <<'PY'
import glob, json, torch
for name in ("panoramic_autoencoder_cpu", "panoramic_ldm_cpu"):
    checkpoint = torch.load(f"runs/{name}/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    extra = f", scale factor {float(checkpoint['state_dict']['scale_factor']):.4f}" if "ldm" in name else ""
    print(f"{name}: {checkpoint['global_step']} optimizer steps, {checkpoint['epoch']} epochs, "
          f"{checkpoint['xraydiff']['train_data']['train_images']} training images{extra}")
PY
