"""Latent diffusion on the CPU: autoencoder encode / decode images/s, autoencoder and denoiser training
steps/s, DDIM sampling seconds per image, each with its peak memory.

The networks are the CPU recipe's (``model.init_args`` of ``configs/panoramic/autoencoder_cpu.yaml`` and
``configs/panoramic/ldm_cpu.yaml``, read from the files), at 128 x 256 (the recipe) and 256 x 512 (the
paper's resolution). Inputs are random images; weights are untrained (speed does not depend on them).
Each measurement runs in a fresh process, so its peak resident memory belongs to it alone.

    python benchmarks/ldm.py                              # both sizes
    python benchmarks/ldm.py --sizes 128x256 --ddim 25
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from commands.parsing import compose_configs
from xraydiff.diffusion.choices import DEFAULT_SAMPLER
from xraydiff.diffusion.latent import FIRST_STAGE_ARCHITECTURE, PosteriorCache
from xraydiff.precision import BF16, FP32, autocast

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "panoramic"


def _init_args(name: str) -> dict:
    return compose_configs([CONFIGS / name])["model"]["init_args"]


def _autoencoder(height: int, width: int):
    from lightning_modules.autoencoder import LatentAutoencoder

    torch.manual_seed(0)
    return LatentAutoencoder(**{**_init_args("autoencoder_cpu.yaml"), "image_size": (height, width)})


def _ldm(height: int, width: int):
    from lightning_modules.latent_diffusion import LatentDiffusion

    autoencoder = _autoencoder(height, width)
    args = {k: v for k, v in _init_args("ldm_cpu.yaml").items() if k != "autoencoder_ckpt"}
    architecture = {k: autoencoder.hparams[k] for k in FIRST_STAGE_ARCHITECTURE}
    torch.manual_seed(0)
    model = LatentDiffusion(**{**args, "image_size": (height, width)}, autoencoder=architecture)
    model.scale_factor.fill_(1.0)
    return model


def _timed(function, repeats: int, device: str = "cpu") -> float:
    function()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def codec_worker(height: int, width: int, batch: int, repeats: int, mode: str) -> dict:
    first_stage = _autoencoder(height, width).autoencoder.eval()
    images = torch.rand(batch, 1, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = first_stage.posterior(images)[0]
        function = (
            (lambda: first_stage.posterior(images)) if mode == "encode" else (lambda: first_stage.decode(latents))
        )
        seconds = _timed(function, repeats)
    return {"images_per_second": batch / seconds, "peak_rss_mb": _peak_mb()}


def train_worker(height: int, width: int, batch: int, repeats: int, model: str, device: str = "cpu") -> dict:
    images = (torch.rand(batch, 1, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    if model == "autoencoder":
        module = _autoencoder(height, width).to(device)
        optimizer = torch.optim.Adam(module.autoencoder.parameters(), lr=1e-4)

        def loss():
            reconstruction, z_mu, z_sigma = module.autoencoder(images)
            return module.generator_loss(images, reconstruction, z_mu, z_sigma)["loss"]
    else:
        module = _ldm(height, width).to(device)
        optimizer = torch.optim.AdamW(module.unet.parameters(), lr=1e-4)
        if model == "denoiser (cached latents)":  # cache_latents: true, the posteriors encoded once
            with torch.no_grad():
                module.posterior_cache = PosteriorCache(*module.first_stage.posterior(images))
            batch = {"index": torch.arange(batch, device=device)}

            def loss():
                return module.diffusion_loss(module._training_latents(batch))
        else:

            def loss():
                return module.diffusion_loss(module.encode(images))

    def step():
        optimizer.zero_grad()
        with autocast(device, BF16 if device == "cuda" else FP32):
            value = loss()
        value.backward()
        optimizer.step()

    return {"seconds_per_step": _timed(step, repeats, device), "peak_rss_mb": _peak_mb()}


def sample_worker(height: int, width: int, batch: int, steps: int, device: str = "cpu") -> dict:
    module = _ldm(height, width).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    with autocast(device, BF16 if device == "cuda" else FP32):
        module.generate(1, generator, DEFAULT_SAMPLER, 2)  # warm-up
        _sync(device)
        start = time.perf_counter()
        module.generate(batch, generator, DEFAULT_SAMPLER, steps)
        _sync(device)
    return {"seconds_per_image": (time.perf_counter() - start) / batch, "peak_rss_mb": _peak_mb()}


def in_subprocess(kind: str, module: str = "benchmarks.ldm", **kwargs) -> dict:
    """``<module>.<kind>_worker(**kwargs)`` in a fresh Python process (its own peak memory); its JSON result."""
    code = f"import json, {module} as b; print(json.dumps(b.{kind}_worker(**{kwargs!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["128x256", "256x512"], help="H x W")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (training, coding, sampling)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up")
    parser.add_argument("--ddim", type=int, default=50, help="DDIM steps of the sampling row")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: bf16-mixed, no codec rows")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"{where}, {torch.get_num_threads()} threads, {'bf16-mixed' if args.device == 'cuda' else '32-bit'}")
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        common = {"height": height, "width": width, "batch": args.batch}
        print(f"{height} x {width} (latents 4 x {height // 8} x {width // 8}), batch {args.batch}:")
        for mode in ("encode", "decode") if args.device == "cpu" else ():
            r = in_subprocess("codec", **common, repeats=args.repeats, mode=mode)
            print(
                f"  autoencoder {mode:<8} {r['images_per_second']:8.1f} images/s   peak RSS {r['peak_rss_mb']:.0f} MB"
            )
        for model in ("autoencoder", "denoiser", "denoiser (cached latents)"):
            r = in_subprocess("train", **common, repeats=args.repeats, model=model, device=args.device)
            print(
                f"  {model + ' training':<36} {1 / r['seconds_per_step']:8.3f} steps/s "
                f"({r['seconds_per_step']:.2f} s/step)   peak RSS {r['peak_rss_mb']:.0f} MB"
            )
        r = in_subprocess("sample", **common, steps=args.ddim, device=args.device)
        print(
            f"  DDIM {args.ddim} sampling      {r['seconds_per_image']:8.2f} s/image   "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
