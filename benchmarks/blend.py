"""Latent blending and segmentation on the CPU: latent-SSIM ranking seconds per labelled image against pools
of growing size, blending seconds per synthetic image (DDIM from strength x T, the LDM of the CPU recipe,
untrained), SegFormer training seconds per step and inference images/s, each with its peak memory.

Each measurement runs in a fresh process (``benchmarks.ldm``'s workers' convention), so its peak resident
memory belongs to it alone. Run from the project root:

    python -m benchmarks.blend                          # 128 x 256, pools of 100 / 1000 / 10000 latents
    python -m benchmarks.blend --size 256x512 --k 10
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from benchmarks.ldm import _init_args, _ldm, _peak_mb, _timed
from benchmarks.ldm import in_subprocess as ldm_in_subprocess


def ranking_worker(height: int, width: int, pool: int, repeats: int) -> dict:
    from xraydiff.diffusion.blending import top_k_partners

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(pool, 4, height // 8, width // 8, generator=generator)
    z_a = torch.randn(4, height // 8, width // 8, generator=generator)
    data_range = float(latents.max() - latents.min())
    seconds = _timed(lambda: top_k_partners(z_a, latents, min(50, pool), data_range), repeats)
    return {"seconds_per_guide": seconds, "peak_rss_mb": _peak_mb()}


def blend_worker(height: int, width: int, k: int, steps: int, strength: float) -> dict:
    model = _ldm(height, width).eval()
    generator = torch.Generator().manual_seed(0)
    z_init = torch.randn(k, 4, height // 8, width // 8, generator=generator)
    model.blend(z_init[:1], 2, strength, generator)  # warm-up
    start = time.perf_counter()
    model.blend(z_init, steps, strength, generator)
    return {"seconds_per_image": (time.perf_counter() - start) / k, "peak_rss_mb": _peak_mb()}


def segmenter_worker(height: int, width: int, batch: int, repeats: int, mode: str) -> dict:
    from lightning_modules.segmenter import Segmenter

    torch.manual_seed(0)
    model = Segmenter(network="segformer", encoder="mit_b0", image_size=(height, width))
    images = torch.rand(batch, 1, height, width) * 2 - 1
    masks = (torch.rand(batch, 1, height, width) > 0.95).float()
    if mode == "train":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad()
            model.loss(model(images), masks).backward()
            optimizer.step()

        return {"seconds_per_step": _timed(step, repeats), "peak_rss_mb": _peak_mb()}
    model.eval()
    with torch.no_grad():
        seconds = _timed(lambda: model.predict_masks(images), repeats)
    return {"images_per_second": batch / seconds, "peak_rss_mb": _peak_mb()}


def in_subprocess(kind: str, **kwargs) -> dict:
    return ldm_in_subprocess(kind, module="benchmarks.blend", **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="128x256", help="H x W")
    parser.add_argument("--pools", nargs="+", type=int, default=[100, 1000, 10000], help="unlabelled latents")
    parser.add_argument("--k", type=int, default=10, help="partners blended together (one LDM batch)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the blend")
    parser.add_argument("--strength", type=float, default=0.5, help="t_start / T")
    parser.add_argument("--batch", type=int, default=8, help="segmenter batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    _init_args("ldm_cpu.yaml")  # fail early outside the project root
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, 32-bit")
    print(f"{height} x {width} (latents 4 x {height // 8} x {width // 8}):")
    for pool in args.pools:
        r = in_subprocess("ranking", height=height, width=width, pool=pool, repeats=args.repeats)
        print(f"  SSIM top-k ranking, pool {pool:>6}   {r['seconds_per_guide']:8.3f} s/guide   "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    r = in_subprocess("blend", height=height, width=width, k=args.k, steps=args.steps, strength=args.strength)
    print(f"  blend, {args.steps} DDIM steps, k = {args.k:<4} {r['seconds_per_image']:8.3f} s/image   "
          f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    common = {"height": height, "width": width, "batch": args.batch, "repeats": args.repeats}
    r = in_subprocess("segmenter", **common, mode="train")
    print(f"  SegFormer mit_b0 training  {r['seconds_per_step']:8.3f} s/step (batch {args.batch})   "
          f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    r = in_subprocess("segmenter", **common, mode="predict")
    print(f"  SegFormer mit_b0 inference {r['images_per_second']:8.1f} images/s   peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
