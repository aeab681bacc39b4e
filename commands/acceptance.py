"""``xraydiff acceptance rate``: the paper's acceptance-rate protocol on a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from commands.sampling import check_sampler_arguments
from xraydiff.acceptance_rate import file_digest, measure_acceptance_rate
from xraydiff.precision import resolve_precision, uses_cuda


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
