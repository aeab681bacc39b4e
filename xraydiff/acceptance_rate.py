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

from xraydiff.acceptance import RULE_SETS, AcceptanceChecker, ShapeStatistics
from xraydiff.acceptance_run import summarize
from xraydiff.errors import DataError
from xraydiff.imageio import atomic_write_bytes
from xraydiff.samples import batch_seed, sample_id


def file_digest(path: Path) -> str:
    """Short SHA-1 of a file's content."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def generate_heatmaps(
    model, num_samples: int, seed: int, batch_size: int, sampler: str | None, steps: int | None, bf16: bool = False
) -> tuple[list[str], np.ndarray]:
    """(ids, heatmaps (num_samples, H, W)) drawn from a generative module, batch by batch,
    optionally under bf16 autocast."""
    ids, heatmaps = [], []
    for b, start in enumerate(range(0, num_samples, batch_size)):
        count = min(batch_size, num_samples - start)
        generator = torch.Generator(device=model.device).manual_seed(batch_seed(seed, b))
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            pairs = model.generate(count, generator, sampler, steps)
        heatmaps.append(pairs[:, 1].float().cpu().numpy())
        ids += [sample_id(seed, start + k) for k in range(count)]
    return ids, np.concatenate(heatmaps)


def measure_acceptance_rate(
    ckpt: Path,
    stats_path: Path,
    out: Path,
    runs: int = 10,
    num_samples: int = 100,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    rule_set: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    cache: Path | None = None,
    precision: str = "32-true",
) -> dict:
    """Mean and SD of the acceptance rate over ``runs`` runs; writes ``out/acceptance.json``.

    With ``cache``, each run's heatmaps are kept in (and reused from) that folder, keyed by the
    checkpoint's content and the sampling settings: the same generator judged by other statistics
    does not sample again. ``precision`` 'bf16-mixed' samples under bf16 autocast.
    """
    if precision not in ("32-true", "bf16-mixed"):
        raise DataError(None, f"precision must be '32-true' or 'bf16-mixed', got {precision!r}")
    from lightning_modules.generative import PairedGenerativeModule, load_model

    if runs < 1 or num_samples < 1 or batch_size < 1:
        raise DataError(None, "--runs, --num-samples and --batch-size must be at least 1")
    out = Path(out)
    if (out / "acceptance.json").exists() and not overwrite:
        raise DataError(out / "acceptance.json", "exists (pass --overwrite to replace it)")
    stats = ShapeStatistics.load(stats_path)
    model = load_model(ckpt, expected=PairedGenerativeModule)
    if tuple(model.image_size) != tuple(stats.image_size):
        raise DataError(stats_path, f"statistics are for {stats.image_size}, the model samples {model.image_size}")
    checker = AcceptanceChecker(stats, rule_set)
    model = model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))).eval()
    sampler_name, sampler_steps = model.sampling_description(sampler, steps)
    rows = []
    key = f"{file_digest(ckpt)}-{sampler_name}{sampler_steps}-n{num_samples}-b{batch_size}-{precision}"
    for r in range(runs):
        cached = None if cache is None else Path(cache) / f"{key}-seed{seed + r}.npz"
        if cached is not None and cached.is_file():
            with np.load(cached) as data:
                ids, heatmaps = list(data["ids"]), data["heatmaps"]
        else:
            ids, heatmaps = generate_heatmaps(
                model, num_samples, seed + r, batch_size, sampler, steps, bf16=precision == "bf16-mixed"
            )
            if cached is not None:
                buffer = io.BytesIO()
                np.savez(buffer, ids=np.array(ids), heatmaps=heatmaps)
                atomic_write_bytes(cached, buffer.getvalue())
        summary = summarize(checker.check(heatmaps, ids), checker.rule_set)
        rows.append({"run": r, "seed": seed + r, **summary})
    rates = np.array([row["acceptance_rate"] for row in rows])
    result = {
        "checkpoint": str(Path(ckpt).resolve()),
        "stats": str(stats_path),
        "sampler": sampler_name,
        "steps": sampler_steps,
        "runs": runs,
        "num_samples": num_samples,
        "rule_set": checker.rule_set,
        "mean": float(rates.mean()),
        "sd": float(rates.std(ddof=1)) if runs > 1 else 0.0,
        "by_rule_set": {
            name: {
                "mean": float(np.mean([row["acceptance_rate_by_rule_set"][name] for row in rows])),
                "sd": float(np.std([row["acceptance_rate_by_rule_set"][name] for row in rows], ddof=1))
                if runs > 1
                else 0.0,
            }
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
