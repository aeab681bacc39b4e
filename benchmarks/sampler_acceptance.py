"""How few sampling steps keep the quality: acceptance rate and seconds per sample by sampler.

From one paired-DDPM checkpoint, draws ``--num-samples`` pairs with the full DDPM chain and with
DDIM at k = 10, 20, 50, 100 steps (eta 0 and 1), checks them with shape statistics fitted to the
training set of ``--data-config`` at the checkpoint's size, and prints the acceptance rate with its
Wilson 95 % interval and the seconds per sample. Every sampler draws the same seeds.

    python benchmarks/sampler_acceptance.py xraydiff/assets/demo_hand_ddpm.ckpt \\
        --data-config configs/demo/hand_ddpm_pretrain.yaml [--num-samples 200] [--samplers ddpm ddim50-eta1]

The cheapest sampler whose acceptance lies within the interval of the full chain is the study's default.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from commands.lightning_cli import data_parser
from lightning_modules.generative import load_model
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.rate import generate_heatmaps
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.precision import autocast_dtype, describe_hardware, resolve_precision

SAMPLERS = ["ddpm"] + [f"ddim{k}-eta{eta}" for k in (10, 20, 50, 100) for eta in (0, 1)]


def wilson_interval(accepted: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for the default z)."""
    if n == 0:
        return 0.0, 1.0
    p = accepted / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def statistics(data_config: Path, image_size) -> ShapeStatistics:
    parser = data_parser("benchmark", "")
    cfg = parser.parse_args(
        ["--config", str(data_config), "--data.init_args.annotations_only", "true",
         "--data.init_args.image_size", json.dumps(list(image_size))]
    )  # fmt: skip
    datamodule = parser.instantiate_classes(cfg).data
    shapes, spacing, frame = datamodule.shape_table("train")
    return ShapeStatistics.fit(shapes, spacing, image_size, datamodule.anatomy, AcceptanceConfig(), frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--data-config", type=Path, default=Path("configs/demo/hand_ddpm_pretrain.yaml"))
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS, help=f"subset of {SAMPLERS}")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    model = load_model(args.ckpt).eval()
    precision = resolve_precision(args.precision, "cpu")
    checker = AcceptanceChecker(statistics(args.data_config, model.image_size))
    print(f"# {args.ckpt}, {model.image_size[0]} x {model.image_size[1]}, {args.num_samples} samples per sampler")
    print(f"# {platform.processor() or platform.machine()}, {describe_hardware('cpu')}, {precision}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'sampler':<14} {'accepted':>8} {'rate':>6} {'95% interval':>15} {'paper rules':>11} {'s/sample':>9}")
    rows = []
    for name in args.samplers:
        sampler, _, eta = name.partition("-eta")
        steps = None if sampler == "ddpm" else int(sampler[4:])
        model.hparams.ddim_eta = float(eta or 0)
        start = time.perf_counter()
        ids, heatmaps = generate_heatmaps(
            model, args.num_samples, args.seed, args.batch_size, sampler[:4], steps, autocast_dtype(precision)
        )
        seconds = (time.perf_counter() - start) / args.num_samples
        verdicts = checker.check(heatmaps, ids)
        accepted = sum(v.accepted for v in verdicts)
        paper = sum(v.accepted_by_rule_set["paper"] for v in verdicts)
        low, high = wilson_interval(accepted, len(verdicts))
        n = len(verdicts)
        rows.append(
            {"sampler": name, "accepted": accepted, "n": n, "rate": accepted / n, "interval": [low, high],
             "paper_rules_rate": paper / n, "seconds_per_sample": seconds}
        )  # fmt: skip
        print(f"{name:<14} {accepted:>8} {accepted / len(verdicts):>6.1%} {f'[{low:.1%}, {high:.1%}]':>15} "
              f"{paper / len(verdicts):>11.1%} {seconds:>9.2f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
