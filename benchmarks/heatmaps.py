"""Heatmap rendering cost versus one paired-DDPM training step (CPU).

Prints milliseconds per batch of 4 for rendering 37 landmarks at 256 x 256 (one combined channel
and 37 channels) and for one training step of the paper's U-Net at the same size.

    python benchmarks/heatmaps.py [--size 256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from xraydiff.landmarks.heatmaps import gaussian_heatmaps


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    size = (args.size, args.size)
    landmarks = torch.rand(args.batch, 37, 2) * (args.size - 1)
    combined = timed(lambda: gaussian_heatmaps(landmarks, size, 1.0, combine=True, normalize=True), args.repeats)
    separate = timed(lambda: gaussian_heatmaps(landmarks, size, 1.0), args.repeats)

    from lightning_modules.paired_ddpm import PairedDDPM

    model = PairedDDPM(image_size=size)  # the paper's U-Net and T = 800
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=1e-3)
    batch = {"image": torch.rand(args.batch, 1, *size) * 2 - 1, "landmarks": landmarks}

    def step():
        optimizer.zero_grad()
        model.diffusion_loss(model.to_pairs(batch)).backward()
        optimizer.step()

    train_step = timed(step, max(2, args.repeats // 10))
    print(f"batch {args.batch}, 37 landmarks, {args.size} x {args.size}, {torch.get_num_threads()} threads")
    print(f"  combined heatmap (DDPM input)   {combined:8.2f} ms")
    print(f"  37-channel heatmaps (localizer) {separate:8.2f} ms")
    print(f"  paired-DDPM training step       {train_step:8.1f} ms")
    print(f"  rendering share of a step       {combined / train_step:8.2%}")


if __name__ == "__main__":
    main()
