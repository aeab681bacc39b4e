"""The 'data' of a sampling run: which sample indices each rank generates, batch by batch."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from xraydiff.data.generation import batch_plan


class SampleIndexDataModule(L.LightningDataModule):
    """Splits ``num_samples`` into fixed batches of ``batch_size`` and deals them round-robin to ranks.

    The batches are ``xraydiff.data.generation.batch_plan``'s: every sample is reproducible from the seed and the batch
    size, whatever the device count.
    A rank without work receives one empty batch so that all ranks run the same hooks.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, sampler: str | None, steps: int | None):
        super().__init__()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.sampler, self.steps = sampler, steps

    def batches_for_rank(self, rank: int, world_size: int) -> list[dict]:
        batches = [
            {
                "batch": b,
                "indices": torch.tensor(list(indices), dtype=torch.long),
                "seed": self.seed,
                "sampler": self.sampler,
                "steps": self.steps,
            }
            for b, indices in batch_plan(self.num_samples, self.batch_size, rank, world_size)
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
