"""``xraydiff acceptance fit|render|run|rate``: the check's statistics, its calibration set, checking sample
folders, the paper's rate protocol."""

from __future__ import annotations

from pathlib import Path

import torch

from commands.progress import network_calls, step_progress
from commands.sampling import check_sampler_arguments
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.rate import file_digest, measure_acceptance_rate
from xraydiff.acceptance.run import render_ground_truth, run_acceptance
from xraydiff.acceptance.statistics import ShapeStatistics, check_statistics_output
from xraydiff.data.imageio import check_output_folder
from xraydiff.errors import DataError
from xraydiff.precision import resolve_precision, uses_cuda


def landmark_data(datamodule, annotations_only: bool):
    """``datamodule`` set up (landmarks only with ``annotations_only``); DataError unless it has landmarks."""
    if not hasattr(datamodule, "shape_table"):
        raise DataError(None, f"{type(datamodule).__name__} has no landmarks; acceptance needs a landmark DataModule")
    if annotations_only:
        datamodule.annotations_only = True
    datamodule.setup()
    return datamodule


def fit_statistics(
    datamodule, split: str, config: AcceptanceConfig, out: Path, overwrite: bool, annotations_only: bool
) -> ShapeStatistics:
    """Fit the MRF-SSM shape statistics on the landmarks of ``split`` and save them to ``out`` (JSON)."""
    check_statistics_output(out, overwrite)
    shapes, spacing, frame = landmark_data(datamodule, annotations_only).shape_table(split)
    stats = ShapeStatistics.fit(shapes, spacing, datamodule.image_size, datamodule.anatomy, config, frame)
    stats.save(out)
    print(
        f"{out}: {stats.num_shapes} shapes, {stats.num_landmarks} landmarks, {len(stats.edges)} MRF edges "
        f"({stats.config.topology}), {len(stats.ssm.eigenvalues)} SSM modes, mm per pixel "
        f"{stats.mm_per_px.round(4).tolist()} (x, y)"
    )
    return stats


def render_split(
    datamodule, split: str, heatmap_sigma: float, out: Path, overwrite: bool, annotations_only: bool
) -> None:
    """Write the ground-truth samples of ``split`` (the check's calibration set) to ``out``."""
    check_output_folder(out, overwrite, "acceptance render")
    datamodule = landmark_data(datamodule, annotations_only)
    items = datamodule.items[split]
    if not items:
        raise DataError(datamodule.root, f"the {split} split is empty")
    source = {"data": datamodule.source, "split": split, "annotations_only": datamodule.annotations_only}
    render_ground_truth(items, datamodule.image_size, heatmap_sigma, out, source, overwrite=overwrite)
    print(f"wrote {len(items)} ground-truth samples of the {split} split to {out}/")


def check_samples(samples: Path, stats: Path, out: Path, rule_set: str | None, overwrite: bool, batch_size: int):
    """``run_acceptance`` on a sample folder, with a one-line summary of the verdicts."""
    report = run_acceptance(samples, stats, out, rule_set, overwrite, batch_size)
    by_set = ", ".join(f"{k} {v:.1%}" for k, v in report["acceptance_rate_by_rule_set"].items())
    print(
        f"{report['accepted']} of {report['n']} accepted: {report['acceptance_rate']:.1%} "
        f"({report['rule_set']} rules; {by_set}); failed rules {report['failed_rule_counts']}"
    )
    print(f"wrote {out}/report.json, {out}/accepted/, {out}/gallery.png")
    return report


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
    sampler_name, sampler_steps = check_sampler_arguments(model, sampler, steps)
    device = torch.device("cuda" if uses_cuda(accelerator) else "cpu")
    model = model.to(device).eval()
    with step_progress(runs * network_calls(num_samples, batch_size, sampler_steps), f"rate {sampler_name}"):
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
