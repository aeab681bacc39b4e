"""Paired DDPM: training speed and peak memory by image size, sampling cost by sampler, on the CPU or a GPU;
and what torch.compile (inductor) and channels-last buy for one denoising step of the shipped models.

Each measurement runs in a fresh process so that peak resident memory belongs to it alone.
The model is the paper's configuration (U-Net 32-64-128, 3 residual blocks per level, T = 800,
batch 4); the sampling comparison runs the full DDPM chain (800 steps) and DDIM (50 steps).

    python benchmarks/ddpm.py                    # train at 64, 128, 256; sample at 64
    python benchmarks/ddpm.py --sizes 64 --sample-size 128
    python benchmarks/ddpm.py --device cuda --precision bf16-mixed --sizes 256 --sample-size 256
    python benchmarks/ddpm.py --compile-step --batch 12   # eager / channels-last / compiled denoising step
    python benchmarks/ddpm.py --sample-command           # `xraydiff sample` of the demo DDPM, both memory formats

``--compile-step`` times one network call of the EMA U-Net of the shipped demo DDPM and LDM at ``--batch``:
the first call (which compiles) and the mean of the next ones, and prints after how many calls compiling
pays for itself. ``--sample-command`` times the whole sampling command the demo's hand study runs (24 samples of
the shipped DDPM, DDIM 10, batch 12, loading included) with the U-Net in each memory format.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from xraydiff.diffusion import choices
from xraydiff.diffusion.choices import DEFAULT_SAMPLER, FULL_CHAIN
from xraydiff.precision import autocast


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_worker(size: int, steps: int, batch: int, device: str = "cpu", precision: str = "32-true") -> dict:
    from lightning_modules.paired_ddpm import PairedDDPM

    torch.manual_seed(0)
    model = PairedDDPM(image_size=(size, size)).to(device)
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=1e-3)
    data = {
        "image": torch.rand(batch, 1, size, size, device=device) * 2 - 1,
        "landmarks": torch.rand(batch, 37, 2, device=device) * (size - 1),
    }

    def step():
        optimizer.zero_grad()
        with autocast(device, precision):
            loss = model.diffusion_loss(model.to_pairs(data))
        loss.backward()
        optimizer.step()
        model.ema.update_parameters(model.unet)

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return {
        "size": size,
        "batch": batch,
        "steps_per_second": steps / elapsed,
        "seconds_per_step": elapsed / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def sample_worker(size: int, sampler: str, steps: int, device: str = "cpu", precision: str = "32-true") -> dict:
    from lightning_modules.paired_ddpm import PairedDDPM

    model = PairedDDPM(image_size=(size, size)).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    with autocast(device, precision):
        model.generate(1, generator, DEFAULT_SAMPLER, 2)  # warm-up
        _sync(device)
        start = time.perf_counter()
        model.generate(1, generator, sampler, steps)
        _sync(device)
    elapsed = time.perf_counter() - start
    return {
        "size": size,
        "sampler": sampler,
        "steps": steps if choices.spec(sampler).grid else model.schedule.num_train_timesteps,
        "seconds_per_image": elapsed,
    }


def step_worker(checkpoint: str, batch: int, mode: str, repeats: int, precision: str) -> dict:
    """One EMA denoising call of a shipped model at ``batch``: 'eager', 'channels_last', 'compile' or
    'compile+channels_last'; the first call (compiling, where it does) and the mean of ``repeats`` more."""
    from lightning_modules.generative import load_model

    model = load_model(checkpoint).eval()
    shape = getattr(model, "latent_shape", None) or (len(model.sample_channels), *model.image_size)
    network = model.ema.module
    x = torch.randn(batch, *shape)
    t = torch.full((batch,), 400, dtype=torch.long)
    if "channels_last" in mode:
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if mode.startswith("compile"):
        network = torch.compile(network)
    with torch.no_grad(), autocast("cpu", precision):
        start = time.perf_counter()
        network(x, timesteps=t)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            network(x, timesteps=t)
        per_call = (time.perf_counter() - start) / repeats
    return {"mode": mode, "first_call": first, "per_call": per_call}


def command_worker(memory_format: str, precision: str, num_samples: int, steps: int) -> dict:
    """``generate_samples`` of the shipped demo DDPM (what ``xraydiff sample`` runs) with the U-Net sampling in
    ``memory_format``; seconds from loading the checkpoint to the last sample written."""
    import tempfile
    from pathlib import Path

    from commands.options import SampleOptions
    from commands.sampling import generate_samples
    from lightning_modules.paired_ddpm import PairedDDPM

    PairedDDPM.sampling_memory_format = getattr(torch, memory_format)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        generate_samples(
            SampleOptions(
                ckpt_path=Path("xraydiff/assets/demo_hand_ddpm.ckpt"), num_samples=num_samples,
                out=Path(folder) / "samples", sampler=DEFAULT_SAMPLER, steps=steps, batch_size=12, accelerator="cpu",
                precision=precision,
            )
        )  # fmt: skip
        return {"memory_format": memory_format, "seconds": time.perf_counter() - start}


def in_subprocess(kind: str, **kwargs) -> dict:
    code = f"import json, benchmarks.ddpm as b; print(json.dumps(b.{kind}_worker(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: by size)")
    parser.add_argument("--sample-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--compile-step", action="store_true", help="time eager / channels-last / compiled steps")
    parser.add_argument("--batch", type=int, default=12, help="batch of --compile-step")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of --compile-step after the first")
    parser.add_argument("--sample-command", action="store_true", help="time the demo's sampling in both formats")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.compile_step:
        compile_step(args)
        return
    if args.sample_command:
        print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}, {args.precision}")
        for fmt in ("contiguous_format", "channels_last"):
            r = in_subprocess("command", memory_format=fmt, precision=args.precision, num_samples=24, steps=10)
            print(f"  24 samples, DDIM 10, {fmt:<18} {r['seconds']:6.1f} s", flush=True)
        return
    device, precision = args.device, args.precision
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU threads: {torch.get_num_threads()}"
    print(f"{where}, {precision}, torch {torch.__version__}")
    print("training (batch 4, paper U-Net):")
    for size in args.sizes:
        steps = args.steps or ({64: 10, 128: 4}.get(size, 2) if device == "cpu" else 20)
        r = in_subprocess("train", size=size, steps=steps, batch=4, device=device, precision=precision)
        print(
            f"  {size:4d} px  {r['steps_per_second']:7.3f} steps/s  ({r['seconds_per_step']:6.2f} s/step)  "
            f"peak RSS {r['peak_rss_mb']:7.0f} MB"
        )
    print(f"sampling one {args.sample_size} x {args.sample_size} pair (EMA U-Net):")
    common = {"size": args.sample_size, "device": device, "precision": precision}
    ddim = in_subprocess("sample", sampler=DEFAULT_SAMPLER, steps=50, **common)
    ddpm = in_subprocess("sample", sampler=FULL_CHAIN, steps=800, **common)
    for r in (ddpm, ddim):
        print(f"  {r['sampler'].upper()}-{r['steps']:<4d} {r['seconds_per_image']:8.2f} s/image")
    print(f"  DDIM acceleration factor: {ddpm['seconds_per_image'] / ddim['seconds_per_image']:.1f}x")


def compile_step(args) -> None:
    """Eager, channels-last and torch.compile (inductor) for one denoising call of each shipped model."""
    print(f"CPU threads: {torch.get_num_threads()}, torch {torch.__version__}, {args.precision}, batch {args.batch}")
    for name in ("demo_hand_ddpm", "demo_panoramic_ldm"):
        checkpoint = f"xraydiff/assets/{name}.ckpt"
        rows = {}
        for mode in ("eager", "channels_last", "compile", "compile+channels_last"):
            r = in_subprocess("step", checkpoint=checkpoint, batch=args.batch, mode=mode, repeats=args.repeats,
                              precision=args.precision)  # fmt: skip
            rows[mode] = r
            eager = rows["eager"]["per_call"]
            gain = eager - r["per_call"]
            extra = r["first_call"] - r["per_call"] - (rows["eager"]["first_call"] - eager)
            pays = f"pays off after {extra / gain:.0f} calls" if gain > 0 and mode.startswith("compile") else ""
            print(f"  {name:<20} {mode:<22} first call {r['first_call']:7.2f} s, then {r['per_call']:.3f} s/call "
                  f"({eager / r['per_call']:.2f}x eager) {pays}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
