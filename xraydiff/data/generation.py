"""The one generation loop: how a run of ``num_samples`` samples is cut into batches, seeded and named, for every
consumer of a generator's samples (``xraydiff sample``'s predict step, the acceptance rate, the acceptance check
during training). Batch b holds the samples b * batch_size .. (b + 1) * batch_size - 1, draws its noise from
``batch_seed(seed, b)`` and names sample i ``sample_id(seed, i)``: the same samples whichever loop, process or
device draws them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from xraydiff.data.samples import batch_seed, sample_id


class Generator(Protocol):
    """What the loop needs of a generative model (``lightning_modules.generative.GenerativeModule``)."""

    device: torch.device
    image_size: tuple[int, int]

    def generate(
        self,
        num: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """(num, C, H, W) samples in [-1, 1]."""

    def sampling_description(self, sampler: str | None, steps: int | None) -> tuple[str, int | None]:
        """(sampler, network calls per sample) the model runs for these arguments (None: its defaults)."""


def batch_plan(num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, range]]:
    """(b, the sample indices of batch b) of the batches process ``rank`` of ``world_size`` draws: b = rank,
    rank + world_size, ... (round-robin)."""
    count = -(-num_samples // batch_size)
    return [(b, range(b * batch_size, min((b + 1) * batch_size, num_samples))) for b in range(rank, count, world_size)]


def generate_batch(
    model: Generator, seed: int, batch: int, indices: Sequence[int], sampler: str | None, steps: int | None
) -> tuple[list[str], Tensor]:
    """(ids, samples (len(indices), C, H, W) float32 on the CPU) of batch ``batch`` of the run seeded ``seed``."""
    generator = torch.Generator(device=model.device).manual_seed(batch_seed(seed, batch))
    samples = model.generate(len(indices), generator, sampler, steps)
    return [sample_id(seed, int(i)) for i in indices], samples.float().cpu()


def generate_batches(
    model: Generator,
    seed: int,
    num_samples: int,
    batch_size: int,
    sampler: str | None,
    steps: int | None,
    rank: int = 0,
    world_size: int = 1,
    autocast: torch.dtype | None = None,
) -> Iterator[tuple[list[str], Tensor]]:
    """``generate_batch`` over this process's share of ``batch_plan``, under autocast to ``autocast`` if given."""
    for b, indices in batch_plan(num_samples, batch_size, rank, world_size):
        with torch.autocast(model.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            yield generate_batch(model, seed, b, indices, sampler, steps)
