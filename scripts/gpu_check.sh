#!/usr/bin/env bash
# The GPU check (docs/training.md, "The GPU check"): on one GPU, from a fresh clone, in at most 8 minutes: set up, run every
# model on the GPU (tests/test_gpu.py: training steps under bf16-mixed, a checkpoint saved and loaded,
# sampling with DDIM and a solver) and print each model's paper-scale training steps/s and sampling seconds
# per sample (benchmarks/*.py --device cuda). Without a GPU it says so and exits 0.
#   bash scripts/gpu_check.sh            # PYTHON=/path/to/python to use an environment that has torch already
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no GPU on this machine (nvidia-smi finds none): nothing to check"
    exit 0
fi
nvidia-smi -L
start=$SECONDS
if [ -z "${PYTHON:-}" ]; then
    make setup
    PYTHON=.venv/bin/python
fi
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else f'gpu_check: torch {torch.__version__} sees no CUDA device')"
echo "== set up in $((SECONDS - start)) s; every model on the GPU"
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py
echo "== paired DDPM (paper: 256 x 256, batch 4, T = 800)"
timeout 60 "$PYTHON" -m benchmarks.ddpm --device cuda --precision bf16-mixed --sizes 256 --sample-size 256
echo "== latent diffusion (paper: 256 x 512)"
timeout 60 "$PYTHON" -m benchmarks.ldm --device cuda --sizes 256x512 --batch 8 --ddim 50
echo "== landmark diffusion (paper: 800 x 640)"
timeout 60 "$PYTHON" -m benchmarks.landmark_diffusion --device cuda --precision bf16-mixed --sizes 800x640 --ddim 10 --multi-at
echo "gpu_check: done in $((SECONDS - start)) s"
