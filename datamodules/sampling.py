"""The 'data' of a sampling run: which sample indices each rank generates, batch by batch."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch.utils.data import DataLoader


class SampleIndexDataModule(L.LightningDataModule):
    """Splits ``num_samples`` into fixed batches of ``batch_size`` and deals them round-robin to ranks.

    Batch b always holds indices [b * batch_size, (b + 1) * batch_size) and is seeded by (seed, b),
    so every sample is reproducible from the seed and the batch size, whatever the device count.
    A rank without work receives one empty batch so that all ranks run the same hooks.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, sampler: str | None, steps: int | None):
        super().__init__()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.sampler, self.steps = sampler, steps

    def batches_for_rank(self, rank: int, world_size: int) -> list[dict]:
        count = math.ceil(self.num_samples / self.batch_size)
        batches = [
            {
                "batch": b,
                "indices": torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)),
                "seed": self.seed,
                "sampler": self.sampler,
                "steps": self.steps,
            }
            for b in range(rank, count, world_size)
        ]
        empty = {
            "batch": -1,
            "indices": torch.arange(0),
            "seed": self.seed,
            "sampler": self.sampler,
            "steps": self.steps,
        }
        return batches or [empty]

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        batches = self.batches_for_rank(trainer.global_rank, trainer.world_size)
        return DataLoader(batches, batch_size=None, collate_fn=lambda item: item)
