"""``xraydiff acceptance fit|render|run|rate``: the check's statistics, its calibration set, checking sample
folders, the paper's rate protocol."""

from __future__ import annotations

from pathlib import Path

import torch

from commands.options import (
    AcceptanceFitOptions,
    AcceptanceRateOptions,
    AcceptanceRenderOptions,
    AcceptanceRunOptions,
)
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


def fit_statistics(datamodule, config: AcceptanceConfig, options: AcceptanceFitOptions) -> ShapeStatistics:
    """Fit the MRF-SSM shape statistics on the landmarks of ``options.split``; save them to ``options.out`` (JSON)."""
    check_statistics_output(options.out, options.overwrite)
    shapes, spacing, frame = landmark_data(datamodule, options.annotations_only).shape_table(options.split)
    stats = ShapeStatistics.fit(shapes, spacing, datamodule.image_size, datamodule.anatomy, config, frame)
    stats.save(options.out)
    print(
        f"{options.out}: {stats.num_shapes} shapes, {stats.num_landmarks} landmarks, {len(stats.edges)} MRF edges "
        f"({stats.config.topology}), {len(stats.ssm.eigenvalues)} SSM modes, mm per pixel "
        f"{stats.mm_per_px.round(4).tolist()} (x, y)"
    )
    return stats


def render_split(datamodule, heatmap_sigma: float, options: AcceptanceRenderOptions) -> None:
    """Write the ground-truth samples of ``options.split`` (the check's calibration set) to ``options.out``."""
    check_output_folder(options.out, options.overwrite, "acceptance render")
    datamodule = landmark_data(datamodule, options.annotations_only)
    items = datamodule.items[options.split]
    if not items:
        raise DataError(datamodule.root, f"the {options.split} split is empty")
    source = {
        "anatomy": datamodule.anatomy,
        "data": datamodule.source,
        "split": options.split,
        "annotations_only": datamodule.annotations_only,
    }
    render_ground_truth(items, datamodule.image_size, heatmap_sigma, options.out, source, options.overwrite)
    print(f"wrote {len(items)} ground-truth samples of the {options.split} split to {options.out}/")


def check_samples(options: AcceptanceRunOptions) -> dict:
    """``run_acceptance`` on a sample folder, with a one-line summary of the verdicts."""
    o = options
    report = run_acceptance(o.samples, o.stats, o.out, o.rule_set, o.overwrite, o.batch_size, novelty=o.novelty)
    by_set = ", ".join(f"{k} {v:.1%}" for k, v in report["acceptance_rate_by_rule_set"].items())
    print(
        f"{report['accepted']} of {report['n']} accepted: {report['acceptance_rate']:.1%} "
        f"({report['rule_set']} rules; {by_set}); failed rules {report['failed_rule_counts']}"
    )
    if o.novelty is not None:
        print(
            f"{report['accepted_near_copies']} of the {report['accepted']} accepted samples are near copies "
            f"({o.novelty})"
        )
    print(f"wrote {o.out}/report.json, {o.out}/accepted/, {o.out}/gallery.png")
    return report


def acceptance_rate_of_checkpoint(options: AcceptanceRateOptions, cache: Path | None = None) -> dict:
    """Load the generator in ``options.ckpt_path`` and measure its acceptance rate (``measure_acceptance_rate``);
    ``cache``: a folder of earlier runs' verdicts to reuse (the studies')."""
    from lightning_modules.generative import PairedGenerativeModule, load_model

    o = options
    model = load_model(o.ckpt_path, expected=PairedGenerativeModule)
    sampler_name, sampler_steps = check_sampler_arguments(model, o.sampler, o.steps)
    device = torch.device("cuda" if uses_cuda(o.accelerator) else "cpu")
    model = model.to(device).eval()
    with step_progress(o.runs * network_calls(o.num_samples, o.batch_size, sampler_steps), f"rate {sampler_name}"):
        return measure_acceptance_rate(
            model,
            file_digest(Path(o.ckpt_path)),
            Path(o.stats),
            Path(o.out),
            o.runs,
            o.num_samples,
            o.sampler,
            o.steps,
            o.seed,
            o.batch_size,
            o.rule_set,
            o.overwrite,
            cache,
            precision=resolve_precision(o.precision, o.accelerator),
            description={"checkpoint": str(Path(o.ckpt_path).resolve())},
        )
