"""Landmark diffusion on the CPU: training speed, inference seconds per image by mode, peak memory.

The network is the CPU recipe's (``configs/ceph/landmark_diffusion_cpu.yaml``: DiffusionModelUNet
32-32-64-128-128, T = 200) at 320 x 256 and at the paper's 800 x 640. Training: AdamW steps on batches
of random images and landmarks (4 at 320 x 256, 1 at 800 x 640, as in the recipes). Inference: one
image through ``LandmarkDiffusion.infer`` in each mode (single, DDIM k, the full T-step chain) and an
ensemble of M members in one batch. Each measurement runs in a fresh process, so peak resident memory
belongs to it alone. Precision: 32-bit, or bf16 autocast with ``--precision bf16-mixed``.

    python benchmarks/landmark_diffusion.py                       # both sizes, all modes
    python benchmarks/landmark_diffusion.py --sizes 320x256 --multi-at 320x256
    python benchmarks/landmark_diffusion.py --sizes 160x128 --train-only --steps 10 --attention paper
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from xraydiff.diffusion.choices import DEFAULT_SAMPLER, FULL_CHAIN, SINGLE_CALL
from xraydiff.precision import autocast

CHANNELS = [32, 32, 64, 128, 128]
# 'low': attention at the two lowest levels (the project's default); 'paper': at downsample factors 4 and 8
ATTENTION = {"low": [False, False, False, True, True], "paper": [False, False, True, True, False]}


def _model(height: int, width: int, channels: list[int], attention: str):
    from lightning_modules.landmark_diffusion import LandmarkDiffusion

    torch.manual_seed(0)
    levels = ATTENTION[attention][-len(channels) :] if attention == "low" else ATTENTION[attention]
    network = {"channels": channels, "attention_levels": levels, "norm_num_groups": 8, "num_head_channels": 32}
    return LandmarkDiffusion(image_size=(height, width), network=network)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_worker(
    height: int, width: int, batch: int, steps: int, precision: str, channels: list[int], attention: str,
    device: str = "cpu",
) -> dict:  # fmt: skip
    model = _model(height, width, channels, attention).to(device)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    data = {
        "image": (torch.rand(batch, 1, height, width, generator=generator) * 2 - 1).to(device),
        "landmarks": (torch.rand(batch, 19, 2, generator=generator) * torch.tensor([width - 1, height - 1])).to(device),
    }

    def step():
        optimizer.zero_grad()
        with autocast(device, precision):
            loss = model.loss(data, model.unet)[0]
        loss.backward()
        optimizer.step()

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_step": elapsed / steps, "peak_rss_mb": peak}


def infer_worker(
    height: int, width: int, mode: str, steps: int | None, ensemble: int, precision: str, channels: list[int],
    attention: str, device: str = "cpu",
) -> dict:  # fmt: skip
    model = _model(height, width, channels, attention).to(device).eval()
    image = (torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    settings = {"mode": mode, "steps": steps, "ensemble": ensemble}
    index = torch.tensor([0], device=device)
    with torch.no_grad(), autocast(device, precision):
        model.infer(image, index, {"mode": SINGLE_CALL, "steps": None, "ensemble": 1})  # warm-up
        result = model.infer(image, index, settings)
    return {
        "seconds_per_image": result["seconds"],
        "network_calls": result["network_calls"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_subprocess(kind: str, **kwargs) -> dict:
    code = f"import json, benchmarks.landmark_diffusion as b; print(json.dumps(b.{kind}_worker(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["320x256", "800x640"], help="H x W")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--ddim", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--ensemble", type=int, default=5, help="M of the ensemble row (DDIM, first k)")
    parser.add_argument("--multi-at", nargs="*", default=["320x256"], help="sizes that also run the T-step chain")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--channels", type=int, nargs="+", default=CHANNELS, help="U-Net widths per level")
    parser.add_argument("--attention", choices=sorted(ATTENTION), default="low", help="attention levels")
    parser.add_argument("--train-only", action="store_true", help="time training steps only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    net = {"channels": args.channels, "attention": args.attention, "device": args.device}
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(
        f"{where}, {torch.get_num_threads()} threads, {args.precision}, "
        f"U-Net {args.channels}, attention {args.attention}"
    )
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        batch = 4 if height * width <= 320 * 256 else 1
        p = args.precision
        train = in_subprocess("train", height=height, width=width, batch=batch, steps=args.steps, precision=p, **net)
        print(
            f"{height} x {width}: training {1 / train['seconds_per_step']:.3f} steps/s "
            f"({train['seconds_per_step']:.2f} s/step, batch {batch}), peak RSS {train['peak_rss_mb']:.0f} MB"
        )
        if args.train_only:
            continue
        modes = [(SINGLE_CALL, None, 1)] + [(DEFAULT_SAMPLER, k, 1) for k in args.ddim]
        modes.append((DEFAULT_SAMPLER, args.ddim[0], args.ensemble))
        if size in args.multi_at:
            modes.append((FULL_CHAIN, None, 1))
        for mode, steps, members in modes:
            r = in_subprocess(
                "infer", height=height, width=width, mode=mode, steps=steps, ensemble=members, precision=p, **net
            )
            name = f"{mode}{steps or ''}" + (f" x M={members}" if members > 1 else "")
            print(
                f"  {name:<14} {r['seconds_per_image']:8.2f} s/image  {r['network_calls']:4d} network calls  "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
