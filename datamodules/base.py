"""What every xraydiff DataModule shares: splits cached in memory, served by DataLoaders."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from xraydiff.data.datasets import EpochSampler
from xraydiff.errors import DataError


class CachedSplitsDataModule(L.LightningDataModule):
    """Base of the anatomy DataModules: ``dataset(split)`` over items loaded once in ``setup``.

    Subclasses set ``root``, ``batch_size``, ``num_workers`` and implement ``setup`` and
    ``dataset``. An empty training or test split is an error naming where its data would be.
    """

    root: Path | None
    batch_size: int
    num_workers: int

    @property
    def source(self) -> str:
        return "phantom" if self.root is None else str(self.root)

    def dataset(self, split: str, augment: bool | None = None) -> Dataset:
        raise NotImplementedError

    def empty_split_source(self, split: str):
        """Where the data of an empty split would have come from, for the error message."""
        return self.root

    def make_loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        # The loader's own generator: creating an iterator never draws from the global random state,
        # which the training noise and exact resumption depend on.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(0),
        )

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        if split in ("train", "test") and len(dataset) == 0:
            raise DataError(self.empty_split_source(split), f"the {split} split is empty")
        return self.make_loader(dataset)

    def epoch_sampler(self, n_real: int, n_synthetic: int = 0, share: float | None = None) -> EpochSampler:
        """The training sampler: this rank's share of the epoch's order; after a resume from a checkpoint
        taken k batches into an epoch, it starts with the (k + 1)-th batch of that epoch."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(n_real, n_synthetic, share, self.seed, True, world, rank)
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
            done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
            if trainer.fit_loop.restarting and 0 < done * self.batch_size < len(sampler):
                sampler.resume_at(done * self.batch_size)
        return sampler

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        if len(dataset) == 0:
            raise DataError(self.empty_split_source("train"), "the train split is empty")
        return self.make_loader(dataset, sampler=self.epoch_sampler(len(dataset)))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
