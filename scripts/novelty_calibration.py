"""How well each way of setting the near-copy threshold keeps its 1 % level (the documentation's table).

Phantom hands at 64 x 64: 64 training images, a pool of 256 validation images and 256 test images (new real
images, none a copy). For n held-out images drawn from the pool (8 draws each), the threshold is set from their
nearest-training-image distances by each method; the share of the 256 test images below it is what a new real
patient risks being called a copy (the level: 1 %). Also: how far a training image moved by 2 px is from the
training set without and with the shift-tolerant search.

    python -m scripts.novelty_calibration                  # prints the Markdown table
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, stats

from datamodules import HandDataModule
from xraydiff.data.novelty import LEVEL, calibrate, nearest, reduced

FITS = {
    "calibrate (xraydiff)": lambda d: calibrate(d).value,
    "gamma fit": lambda d: float(stats.gamma.ppf(LEVEL, *stats.gamma.fit(d, floc=0))),
    "empirical quantile": lambda d: float(np.quantile(d, LEVEL)),
    "log-normal fit": lambda d: float(np.exp(np.log(d).mean() + stats.norm.ppf(LEVEL) * np.log(d).std(ddof=1))),
    "Weibull fit": lambda d: float(stats.weibull_min.ppf(LEVEL, *stats.weibull_min.fit(d, floc=0))),
}


def images(data: HandDataModule, split: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([item.image for item in data.items[split]]))[:, None]


def main() -> None:
    data = HandDataModule(image_size=(64, 64), phantom_counts={"train": 64, "val": 256, "test": 256})
    data.setup()
    train, pool, test = (reduced(images(data, split), 32) for split in ("train", "val", "test"))
    pool_d = nearest(pool, train)[0].numpy()
    test_d = nearest(test, train)[0].numpy()
    rng = np.random.default_rng(0)
    originals = images(data, "train").numpy()[:, 0]
    moved = np.stack([ndimage.shift(image, rng.choice([-2, 2], 2), order=0, mode="nearest") for image in originals])
    moved = torch.from_numpy(moved)[:, None]
    plain = float(np.median(nearest(reduced(moved, 32), train, max_shift=0)[0].numpy()))
    shifted = float(np.median(nearest(reduced(moved, 32), train)[0].numpy()))
    unrelated = float(np.median(nearest(test, train, max_shift=0)[0].numpy()))
    print(
        f"32 px: a training image moved by 2 px lies at {plain:.3f} (median) without shifts, {shifted:.4f} with "
        f"shifts up to 2 px; a new hand's nearest training hand at {unrelated:.3f} without shifts, "
        f"{np.median(test_d):.3f} with (min {test_d.min():.3f})"
    )
    print("\n| held-out images n | " + " | ".join(FITS) + " |\n|---|" + "---|" * len(FITS))
    for n in (16, 32, 64, 128, 256):
        shares = {name: [] for name in FITS}
        for _ in range(8):
            held_out = rng.choice(pool_d, n, replace=False) if n < len(pool_d) else pool_d
            for name, fit in FITS.items():
                shares[name].append(float(np.mean(test_d < fit(np.maximum(held_out, 1e-9)))))
            if n == len(pool_d):
                break
        cells = [f"{np.mean(v):.1%} ({min(v):.1%}-{max(v):.1%})" for v in shares.values()]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
