"""What every xraydiff DataModule shares: splits cached in memory, served by DataLoaders."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

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

    def make_loader(self, dataset: Dataset, shuffle: bool = False, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if split in ("train", "test") and len(dataset) == 0:
            raise DataError(self.empty_split_source(split), f"the {split} split is empty")
        return self.make_loader(dataset, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
