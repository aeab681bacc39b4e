"""How few network calls keep the quality: acceptance rate, seconds per sample and network calls per accepted
pair, by sampler and step count.

From one paired-DDPM checkpoint, every sampler draws the same ``--num-samples`` seeds (batch b seeded as
``xraydiff sample`` seeds it); the pairs are checked with shape statistics fitted to the training set of
``--data-config`` at the checkpoint's size. Each row prints the acceptance rate (strict rules) with its
Wilson 95 % interval, the paper's two rules, seconds per sample and network calls per accepted pair
(steps / rate). The full DDPM chain (T calls) runs on ``--ddpm-samples`` only, marked so.

Resumable by batch: every checked batch is stored under ``--cache`` (verdicts and seconds), so a killed run
continues where it stopped; the projected time of what is left is printed before anything runs.

    python benchmarks/sampler_acceptance.py xraydiff/assets/demo_hand_ddpm.ckpt --cache runs/sampler_parity

The rule of docs/hands.md: the default sampler is the cheapest (fewest calls per accepted pair) whose interval
overlaps DDIM 100's at the model's configured eta (printed for eta 0 and 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import torch

from commands.parsing import data_parser
from lightning_modules.generative import load_model
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.rate import generate_heatmaps
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.data.samples import batch_seed
from xraydiff.diffusion import choices
from xraydiff.diffusion.choices import DEFAULT_SAMPLER, FULL_CHAIN, STEP_SAMPLERS
from xraydiff.metrics import wilson_interval
from xraydiff.precision import autocast, autocast_dtype, describe_hardware, resolve_precision

# the posterior rule at eta 0 and 1, every solver of the registry, and the full chain
SAMPLERS = [
    *(f"{DEFAULT_SAMPLER}{k}-eta{eta}" for k in (10, 20, 50, 100) for eta in (0, 1)),
    *(f"{name}{k}" for name in STEP_SAMPLERS if choices.spec(name).rule == "solver" for k in (10, 15, 20)),
    FULL_CHAIN,
]


def parse_sampler(name: str) -> tuple[str, int | None, float]:
    """'ddim50-eta1' -> ('ddim', 50, 1.0); 'unipc10' -> ('unipc', 10, 0.0); 'ddpm' -> ('ddpm', None, 1.0)."""
    if name == FULL_CHAIN:
        return FULL_CHAIN, None, 1.0
    body, _, eta = name.partition("-eta")
    sampler = body.rstrip("0123456789")
    return sampler, int(body[len(sampler) :]), float(eta or 0)


def annotations(data_config: Path, image_size):
    """The DataModule of ``data_config`` at ``image_size``, annotations only (its ``shape_table`` per split)."""
    parser = data_parser("benchmark", "")
    cfg = parser.parse_args(
        ["--config", str(data_config), "--data.init_args.annotations_only", "true",
         "--data.init_args.image_size", json.dumps(list(image_size))]
    )  # fmt: skip
    return parser.instantiate_classes(cfg).data


def statistics(data_config: Path, image_size) -> ShapeStatistics:
    datamodule = annotations(data_config, image_size)
    shapes, spacing, frame = datamodule.shape_table("train")
    return ShapeStatistics.fit(shapes, spacing, image_size, datamodule.anatomy, AcceptanceConfig(), frame)


def run_batch(model, checker, name: str, b: int, count: int, seed: int, precision: str) -> dict:
    """Draw and check batch ``b`` (its own seed, as ``xraydiff sample`` seeds it) of one sampler."""
    sampler, steps, eta = parse_sampler(name)
    model.sampling = dataclasses.replace(model.sampling, ddim_eta=eta if choices.uses_eta(sampler) else 0.0)
    start = time.perf_counter()
    # generate_heatmaps seeds its batch 0 with batch_seed(seed, 0): give this batch's seed as a one-batch run
    _, heatmaps = generate_heatmaps(model, count, batch_seed(seed, b), count, sampler, steps, autocast_dtype(precision))
    seconds = time.perf_counter() - start
    verdicts = checker.check(heatmaps)
    return {
        "n": count,
        "accepted": sum(v.accepted for v in verdicts),
        "paper": sum(v.accepted_by_rule_set["paper"] for v in verdicts),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--data-config", type=Path, default=Path("configs/demo/hand_ddpm_pretrain.yaml"))
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--ddpm-samples", type=int, default=24, help="samples of the full T-step chain")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS, help=f"subset of {SAMPLERS}")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, required=True, help="folder of checked batches (resumes from it)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    model = load_model(args.ckpt).eval()
    T = int(model.schedule.num_train_timesteps)
    precision = resolve_precision(args.precision, "cpu")
    key = hashlib.sha256(args.ckpt.read_bytes()).hexdigest()[:12] + f"-seed{args.seed}-b{args.batch_size}-{precision}"
    cache = args.cache / key
    cache.mkdir(parents=True, exist_ok=True)

    plan = []  # (sampler, batch index, count, network calls per sample)
    for name in args.samplers:
        total = args.ddpm_samples if name == FULL_CHAIN else args.num_samples
        calls = parse_sampler(name)[1] or T
        for b, start in enumerate(range(0, total, args.batch_size)):
            plan.append((name, b, min(args.batch_size, total - start), calls))
    todo = [p for p in plan if not (cache / f"{p[0]}-{p[1]}.json").is_file()]
    # the projected time: one network call at this batch size, timed now, times the calls left
    probe = torch.randn((args.batch_size, 2, *model.image_size))
    with torch.no_grad(), autocast("cpu", precision):
        model.ema(probe, timesteps=torch.zeros(args.batch_size, dtype=torch.long))  # warm-up
        start = time.perf_counter()
        model.ema(probe, timesteps=torch.zeros(args.batch_size, dtype=torch.long))
        per_call = time.perf_counter() - start
    left = sum(calls * count / args.batch_size for _, _, count, calls in todo) * per_call
    print(f"# {args.ckpt}, {model.image_size[0]} x {model.image_size[1]}, T = {T}, {args.num_samples} samples per "
          f"sampler ({args.ddpm_samples} for ddpm)")  # fmt: skip
    print(f"# {platform.processor() or platform.machine()}, {describe_hardware('cpu')}, {precision}, "
          f"{torch.get_num_threads()} threads; cache {cache}")  # fmt: skip
    print(f"# {len(plan) - len(todo)} of {len(plan)} batches cached; projected {left / 60:.1f} min for the rest "
          f"({per_call:.3f} s per network call at batch {args.batch_size}, plus the checks)", flush=True)  # fmt: skip
    checker = AcceptanceChecker(statistics(args.data_config, model.image_size))

    header = f"{'sampler':<16} {'n':>3} {'accepted':>8} {'rate':>6} {'95% interval':>15} {'paper':>6}"
    print(header + f" {'s/sample':>9} {'calls/accepted':>14}")
    rows = []
    for name in args.samplers:
        records = []
        for sampler_name, b, count, _ in plan:
            if sampler_name != name:
                continue
            path = cache / f"{name}-{b}.json"
            if not path.is_file():
                record = run_batch(model, checker, name, b, count, args.seed, precision)
                atomic_write_bytes(path, json.dumps(record).encode())
            records.append(json.loads(path.read_text()))
        n, accepted = sum(r["n"] for r in records), sum(r["accepted"] for r in records)
        paper, seconds = sum(r["paper"] for r in records), sum(r["seconds"] for r in records) / n
        low, high = wilson_interval(accepted, n)
        calls = parse_sampler(name)[1] or T
        per_accepted = calls / (accepted / n) if accepted else math.inf
        rows.append(
            {"sampler": name, "n": n, "accepted": accepted, "rate": accepted / n, "interval": [low, high],
             "paper_rules_rate": paper / n, "seconds_per_sample": seconds, "calls": calls,
             "calls_per_accepted": per_accepted}
        )  # fmt: skip
        print(f"{name + (' *' if name == FULL_CHAIN else ''):<16} {n:>3} {accepted:>8} {accepted / n:>6.1%} "
              f"{f'[{low:.1%}, {high:.1%}]':>15} {paper / n:>6.1%} {seconds:>9.2f} {per_accepted:>14.0f}",
              flush=True)  # fmt: skip
    for reference in (r for r in rows if r["sampler"].startswith("ddim100")):
        low, high = reference["interval"]
        overlapping = [r for r in rows if r["interval"][1] >= low and r["interval"][0] <= high and r["accepted"]]
        best = min(overlapping, key=lambda r: r["calls_per_accepted"])
        print(f"# cheapest sampler whose interval overlaps {reference['sampler']}'s: {best['sampler']} "
              f"({best['calls_per_accepted']:.0f} calls per accepted pair)")  # fmt: skip
    print("# * the full chain on fewer samples")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
