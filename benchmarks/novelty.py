"""Speed of the near-copy search (``xraydiff.data.novelty.nearest``): samples per second against a training set.

Smooth random 64 x 64 images (the search's cost does not depend on their content) stand for 200 samples and
2000 training images; the search runs as ``xraydiff novelty`` runs it (reduced to --size, shifts up to
--max-shift, chunks of 64 samples). Prints samples/s (median of 3) per setting, the default first.

    python benchmarks/novelty.py [--samples 200] [--train 2000] [--image 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from xraydiff.data.novelty import nearest, reduced


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    noise = torch.randn(count, 1, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--image", type=int, default=64)
    args = parser.parse_args()
    samples, train = smooth_images(args.samples, args.image, 0), smooth_images(args.train, args.image, 1)
    print(f"{args.samples} samples against {args.train} training images of {args.image} x {args.image}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for size, shift in ((32, 2), (64, 2), (32, 0), (64, 0)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with torch.no_grad():
                nearest(reduced(samples, size), reduced(train, size), shift)
            times.append(time.perf_counter() - start)
        rate = args.samples / statistics.median(times)
        default = " (the default)" if (size, shift) == (32, 2) else ""
        print(f"size {size:>3}, max_shift {shift}: {rate:8.0f} samples/s{default}")


if __name__ == "__main__":
    main()
