"""``xraydiff acceptance fit|render|rate``: the check's statistics, its calibration set, the paper's rate protocol."""

from __future__ import annotations

from pathlib import Path

import torch

from commands.sampling import check_sampler_arguments
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.rate import file_digest, measure_acceptance_rate
from xraydiff.acceptance.run import render_ground_truth
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.errors import DataError
from xraydiff.precision import resolve_precision, uses_cuda


def fit_statistics(datamodule, split: str, config: AcceptanceConfig, out: Path) -> ShapeStatistics:
    """Fit the MRF-SSM shape statistics on the landmarks of ``split`` and save them to ``out`` (JSON)."""
    shapes, spacing, frame = datamodule.shape_table(split)
    stats = ShapeStatistics.fit(shapes, spacing, datamodule.image_size, datamodule.anatomy, config, frame)
    stats.save(out)
    print(
        f"{out}: {stats.num_shapes} shapes, {stats.num_landmarks} landmarks, {len(stats.edges)} MRF edges "
        f"({stats.config.topology}), {len(stats.ssm.eigenvalues)} SSM modes, mm per pixel "
        f"{stats.mm_per_px.round(4).tolist()} (x, y)"
    )
    return stats


def render_split(datamodule, split: str, heatmap_sigma: float, out: Path, overwrite: bool) -> None:
    """Write the ground-truth samples of ``split`` (the check's calibration set) to ``out``."""
    items = datamodule.items[split]
    if not items:
        raise DataError(datamodule.root, f"the {split} split is empty")
    source = {"data": datamodule.source, "split": split, "annotations_only": datamodule.annotations_only}
    render_ground_truth(items, datamodule.image_size, heatmap_sigma, out, source, overwrite=overwrite)
    print(f"wrote {len(items)} ground-truth samples of the {split} split to {out}/")


def acceptance_rate_of_checkpoint(
    ckpt_path: Path,
    stats: Path,
    out: Path,
    runs: int = 10,
    num_samples: int = 100,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    rule_set: str | None = None,
    accelerator: str = "auto",
    precision: str = "32-true",
    overwrite: bool = False,
    cache: Path | None = None,
) -> dict:
    """Load the generator in ``ckpt_path`` and measure its acceptance rate (``measure_acceptance_rate``)."""
    from lightning_modules.generative import PairedGenerativeModule, load_model

    model = load_model(ckpt_path, expected=PairedGenerativeModule)
    check_sampler_arguments(model, sampler, steps)
    device = torch.device("cuda" if uses_cuda(accelerator) else "cpu")
    model = model.to(device).eval()
    return measure_acceptance_rate(
        model,
        file_digest(Path(ckpt_path)),
        Path(stats),
        Path(out),
        runs,
        num_samples,
        sampler,
        steps,
        seed,
        batch_size,
        rule_set,
        overwrite,
        cache,
        precision=resolve_precision(precision, accelerator),
        description={"checkpoint": str(Path(ckpt_path).resolve())},
    )
