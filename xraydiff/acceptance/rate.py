"""The paper's protocol (Hadzic et al., Table 1): acceptance rate over independent sampling runs.

Run r draws ``num_samples`` pairs with seed ``seed + r`` (the same samples as
``xraydiff sample --seed seed+r`` with the same batch size), checks them and counts the accepted.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import RULE_SETS
from xraydiff.acceptance.run import summarize
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.data.generation import Generator, generate_batches
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.errors import DataError
from xraydiff.precision import AUTO, PRECISIONS, autocast_dtype, resolve_precision


def file_digest(path: Path) -> str:
    """Short SHA-1 of a file's content."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def sample_cache_key(
    model_key: str, sampler: str, steps: int | None, num_samples: int, batch_size: int, seed: int, precision: str
) -> str:
    """A file-name key holding everything generated samples depend on: the model's content, the sampler
    and its steps, how many samples in which batches, the seed and the numerical precision."""
    return f"{model_key}-{sampler}{steps or ''}-n{num_samples}-b{batch_size}-seed{seed}-{precision}"


def generate_heatmaps(
    model: Generator,
    num_samples: int,
    seed: int,
    batch_size: int,
    sampler: str | None,
    steps: int | None,
    autocast: torch.dtype | None = None,
) -> tuple[list[str], np.ndarray]:
    """(ids, heatmaps (num_samples, H, W)) drawn from a generative model batch by batch (batch b seeded by
    ``batch_seed(seed, b)``, as ``xraydiff sample`` does), optionally under autocast to ``autocast``."""
    ids, heatmaps = [], []
    for batch_ids, pairs in generate_batches(model, seed, num_samples, batch_size, sampler, steps, autocast=autocast):
        ids += batch_ids
        heatmaps.append(pairs[:, 1].numpy())
    return ids, np.concatenate(heatmaps)


def rate_statistics(rates: np.ndarray) -> tuple[float, float]:
    """(mean, SD) of per-run acceptance rates; the SD with Bessel's correction (0 for one run)."""
    rates = np.asarray(rates, dtype=np.float64)
    return float(rates.mean()), float(rates.std(ddof=1)) if len(rates) > 1 else 0.0


def measure_acceptance_rate(
    model: Generator,
    model_key: str,
    stats_path: Path,
    out: Path,
    runs: int = 10,
    num_samples: int = 100,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    rule_set: str | None = None,
    overwrite: bool = False,
    cache: Path | None = None,
    precision: str = AUTO,
    description: dict | None = None,
) -> dict:
    """Mean and SD of the acceptance rate over ``runs`` runs of a generative ``model``; writes
    ``out/acceptance.json``.

    ``model_key`` identifies the model's weights (e.g. the checkpoint's digest). With ``cache``, each
    run's heatmaps are kept in (and reused from) that folder under ``sample_cache_key``: the same
    generator judged by other statistics does not sample again. ``precision``: one of ``PRECISIONS`` ('auto'
    resolved for the model's device).
    """
    if precision not in PRECISIONS:
        raise DataError(None, f"precision must be one of {PRECISIONS}, got {precision!r}")
    precision = resolve_precision(precision, model.device.type)
    if runs < 1 or num_samples < 1 or batch_size < 1:
        raise DataError(None, "--runs, --num_samples and --batch_size must be at least 1")
    out = Path(out)
    if (out / "acceptance.json").exists() and not overwrite:
        raise DataError(out / "acceptance.json", "exists (pass --overwrite to replace it)")
    stats = ShapeStatistics.load(stats_path)
    if tuple(model.image_size) != tuple(stats.image_size):
        raise DataError(
            stats_path,
            f"statistics are for {tuple(stats.image_size)} (H, W), the model samples {tuple(model.image_size)}: "
            f"fit statistics at the model's size (xraydiff acceptance fit ... "
            f"--data.init_args.image_size '{list(model.image_size)}')",
        )
    checker = AcceptanceChecker(stats, rule_set)
    sampler_name, sampler_steps = model.sampling_description(sampler, steps)
    autocast = autocast_dtype(precision)
    rows = []
    for r in range(runs):
        key = sample_cache_key(model_key, sampler_name, sampler_steps, num_samples, batch_size, seed + r, precision)
        cached = None if cache is None else Path(cache) / f"heatmaps-{key}.npz"
        if cached is not None and cached.is_file():
            with np.load(cached) as data:
                ids, heatmaps = list(data["ids"]), data["heatmaps"]
        else:
            ids, heatmaps = generate_heatmaps(model, num_samples, seed + r, batch_size, sampler, steps, autocast)
            if cached is not None:
                buffer = io.BytesIO()
                np.savez(buffer, ids=np.array(ids), heatmaps=heatmaps)
                atomic_write_bytes(cached, buffer.getvalue())
        summary = summarize(checker.check(heatmaps, ids), checker.rule_set)
        rows.append({"run": r, "seed": seed + r, **summary})
    mean, sd = rate_statistics([row["acceptance_rate"] for row in rows])
    result = {
        **(description or {}),
        "stats": str(stats_path),
        "sampler": sampler_name,
        "steps": sampler_steps,
        "precision": precision,
        "runs": runs,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "rule_set": checker.rule_set,
        "mean": mean,
        "sd": sd,
        "by_rule_set": {
            name: dict(
                zip(
                    ("mean", "sd"),
                    rate_statistics([row["acceptance_rate_by_rule_set"][name] for row in rows]),
                    strict=True,
                )
            )
            for name in RULE_SETS
        },
        "per_run": rows,
    }
    lines = [f"{'run':>4} {'seed':>6} {'n':>5} {'accepted':>9} {'rate':>7} {'paper':>7} {'strict':>7}"]
    for row in rows:
        by = row["acceptance_rate_by_rule_set"]
        lines.append(
            f"{row['run']:>4} {row['seed']:>6} {row['n']:>5} {row['accepted']:>9} "
            f"{row['acceptance_rate']:>7.1%} {by['paper']:>7.1%} {by['strict']:>7.1%}"
        )
    lines.append(
        f"acceptance rate ({checker.rule_set}): {result['mean']:.1%} (+-{result['sd']:.1%} SD) over {runs} "
        f"runs of {num_samples} ({sampler_name}{'' if sampler_steps is None else f'-{sampler_steps}'})"
    )
    result["table"] = "\n".join(lines)
    atomic_write_bytes(out / "acceptance.json", json.dumps(result, indent=1).encode())
    return result
