"""Paired DDPM on the CPU: training speed and peak memory by image size, sampling cost by sampler.

Each measurement runs in a fresh process so that peak resident memory belongs to it alone.
The model is the paper's configuration (U-Net 32-64-128, 3 residual blocks per level, T = 800,
batch 4); the sampling comparison runs the full DDPM chain (800 steps) and DDIM (50 steps).

    python benchmarks/ddpm.py                    # train at 64, 128, 256; sample at 64
    python benchmarks/ddpm.py --sizes 64 --sample-size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def train_worker(size: int, steps: int, batch: int) -> dict:
    from lightning_modules.paired_ddpm import PairedDDPM

    torch.manual_seed(0)
    model = PairedDDPM(image_size=(size, size))
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=1e-3)
    data = {"image": torch.rand(batch, 1, size, size) * 2 - 1, "landmarks": torch.rand(batch, 37, 2) * (size - 1)}

    def step():
        optimizer.zero_grad()
        model.diffusion_loss(model.to_pairs(data)).backward()
        optimizer.step()
        model.ema.update_parameters(model.unet)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return {
        "size": size,
        "batch": batch,
        "steps_per_second": steps / elapsed,
        "seconds_per_step": elapsed / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def sample_worker(size: int, sampler: str, steps: int) -> dict:
    from lightning_modules.paired_ddpm import PairedDDPM

    model = PairedDDPM(image_size=(size, size)).eval()
    generator = torch.Generator().manual_seed(0)
    model.generate(1, generator, "ddim", 2)  # warm-up
    start = time.perf_counter()
    model.generate(1, generator, sampler, steps)
    elapsed = time.perf_counter() - start
    return {
        "size": size,
        "sampler": sampler,
        "steps": steps if sampler == "ddim" else model.hparams.num_train_timesteps,
        "seconds_per_image": elapsed,
    }


def in_subprocess(kind: str, **kwargs) -> dict:
    code = f"import json, benchmarks.ddpm as b; print(json.dumps(b.{kind}_worker(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: by size)")
    parser.add_argument("--sample-size", type=int, default=64)
    args = parser.parse_args()
    print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print("training (batch 4, paper U-Net):")
    for size in args.sizes:
        steps = args.steps or {64: 10, 128: 4}.get(size, 2)
        r = in_subprocess("train", size=size, steps=steps, batch=4)
        print(
            f"  {size:4d} px  {r['steps_per_second']:7.3f} steps/s  ({r['seconds_per_step']:6.2f} s/step)  "
            f"peak RSS {r['peak_rss_mb']:7.0f} MB"
        )
    print(f"sampling one {args.sample_size} x {args.sample_size} pair (EMA U-Net):")
    ddim = in_subprocess("sample", size=args.sample_size, sampler="ddim", steps=50)
    ddpm = in_subprocess("sample", size=args.sample_size, sampler="ddpm", steps=800)
    for r in (ddpm, ddim):
        print(f"  {r['sampler'].upper()}-{r['steps']:<4d} {r['seconds_per_image']:8.2f} s/image")
    print(f"  DDIM acceleration factor: {ddpm['seconds_per_image'] / ddim['seconds_per_image']:.1f}x")


if __name__ == "__main__":
    main()
