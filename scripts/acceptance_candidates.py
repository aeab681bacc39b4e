"""The acceptance rate with L and 2L heatmap maxima as the MRF's candidates (the documentation's table).

The paper takes exactly L local maxima of a generated heatmap as candidates (L = the number of landmarks),
so one spurious blob stronger than a true landmark pushes that landmark out of the candidate set and the
pair fails rule (i). This script measures how much that rule choice decides the rate: for each row it
checks the same heatmaps with ``candidate_count`` L and 2L, under the paper's two rules and the strict four:

* the shipped demo DDPM, DDIM 10 at eta 1 (the demo's default) and at eta 0, ``--num-samples`` each;
* the true annotations of the phantom test split, rendered, with one spurious blob at a random position
  (heatmap level 1, as strong as the true blobs), and without it (the check's own ceiling).

Shape statistics are fitted to the training set of ``--data-config`` at the checkpoint's size, as
``benchmarks/sampler_acceptance.py`` fits them.

    python -m scripts.acceptance_candidates                         # prints the Markdown table
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from pathlib import Path

import numpy as np
import torch

from benchmarks.sampler_acceptance import annotations, statistics
from lightning_modules.generative import load_model
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.corruptions import render
from xraydiff.acceptance.rate import generate_heatmaps
from xraydiff.diffusion.choices import DEFAULT_SAMPLER
from xraydiff.precision import autocast_dtype, describe_hardware, resolve_precision


def rates(stats, heatmaps: np.ndarray, counts: dict[str, int]) -> dict:
    """{label: {rule set: accepted share}} of the heatmaps checked with each candidate count."""
    result = {}
    for label, count in counts.items():
        checker = AcceptanceChecker(
            dataclasses.replace(stats, config=dataclasses.replace(stats.config, candidate_count=count))
        )
        verdicts = checker.check(heatmaps)
        result[label] = {
            rule: float(np.mean([v.accepted_by_rule_set[rule] for v in verdicts])) for rule in ("paper", "strict")
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=Path("xraydiff/assets/demo_hand_ddpm.ckpt"))
    parser.add_argument("--data-config", type=Path, default=Path("configs/demo/hand_ddpm_pretrain.yaml"))
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_model(args.ckpt).eval()
    precision = resolve_precision(args.precision, "cpu")
    stats = statistics(args.data_config, model.image_size)
    landmarks = stats.num_landmarks
    counts = {f"L = {landmarks}": landmarks, f"2L = {2 * landmarks}": 2 * landmarks}
    rows = {}
    for eta in (1.0, 0.0):
        model.sampling = dataclasses.replace(model.sampling, ddim_eta=eta)
        _, heatmaps = generate_heatmaps(
            model, args.num_samples, args.seed, args.batch_size, DEFAULT_SAMPLER, 10, autocast_dtype(precision)
        )
        rows[f"demo DDPM, {DEFAULT_SAMPLER} 10, eta {eta:g} ({args.num_samples} samples)"] = rates(
            stats, heatmaps, counts
        )
    shapes = annotations(args.data_config, model.image_size).shape_table("test")[0][: args.num_samples]
    rng = np.random.default_rng(args.seed)
    height, width = model.image_size
    blobs = [rng.uniform([4, 4], [width - 5, height - 5])[None] for _ in shapes]
    rows[f"test annotations ({len(shapes)})"] = rates(stats, render(list(shapes), model.image_size), counts)
    rows[f"test annotations + one spurious blob ({len(shapes)})"] = rates(
        stats, render(list(shapes), model.image_size, extras=blobs), counts
    )
    print(f"# {args.ckpt}, {height} x {width}; statistics of {args.data_config}'s training set; "
          f"{platform.processor() or platform.machine()}, {describe_hardware('cpu')}, {precision}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    head = [f"{label}, {rule}" for label in counts for rule in ("paper rules", "strict rules")]
    print("| heatmaps | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for name, result in rows.items():
        cells = [f"{result[label][rule]:.0%}" for label in counts for rule in ("paper", "strict")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
