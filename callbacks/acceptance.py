"""MRF-SSM acceptance of the generator's own samples during training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.run import summarize
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.data.generation import generate_batches
from xraydiff.data.preview import acceptance_grid
from xraydiff.diffusion.choices import DEFAULT_SAMPLER
from xraydiff.errors import DataError


class AcceptanceCallback(Callback):
    """Every ``every_n_epochs`` epochs, sample ``num_samples`` pairs (EMA weights), check them and log
    ``acceptance/rate`` (plus the rate of each rule set and the failures per rule) and a gallery.

    The samples are those of ``xraydiff sample --seed SEED --batch_size BATCH_SIZE`` (``xraydiff.data.generation``);
    under DDP each rank draws its share of the batches and the rate is computed over all of them. The gallery
    of rank 0's samples goes to ``<default_root_dir>/acceptance/epoch=NNNN.png`` and to W&B when a WandbLogger
    is active.

    Args:
        stats: statistics file (``xraydiff acceptance fit``); None fits them from the training
            split of the DataModule when training starts and saves them as
            ``<default_root_dir>/acceptance/shape_stats.json``.
        every_n_epochs: check interval.
        num_samples: samples per check, over all ranks.
        sampler, steps: passed to the model's ``generate`` (DDIM with 50 steps by default).
        seed: seed of the samples (the same noise at every check, so epochs are comparable).
        rule_set: 'strict' or 'paper'; default: the statistics'.
        batch_size: samples generated at once.
    """

    def __init__(
        self,
        stats: str | None = None,
        every_n_epochs: int = 10,
        num_samples: int = 32,
        sampler: str | None = DEFAULT_SAMPLER,
        steps: int | None = 50,
        seed: int = 0,
        rule_set: str | None = None,
        batch_size: int = 16,
    ):
        self.stats_path = stats
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.sampler, self.steps, self.seed = sampler, steps, seed
        self.rule_set = rule_set
        self.batch_size = batch_size
        self.checker: AcceptanceChecker | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.checker is not None:
            return
        if self.stats_path is not None:
            stats = ShapeStatistics.load(Path(self.stats_path))
        else:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "shape_table"):
                raise DataError(None, "AcceptanceCallback without a stats file needs a landmark DataModule")
            shapes, spacing, frame = datamodule.shape_table("train")
            stats = ShapeStatistics.fit(
                shapes, spacing, datamodule.image_size, datamodule.anatomy, AcceptanceConfig(), frame
            )
            if trainer.is_global_zero:
                stats.save(Path(trainer.default_root_dir) / "acceptance" / "shape_stats.json")
        if tuple(stats.image_size) != tuple(pl_module.image_size):
            raise DataError(
                self.stats_path, f"statistics are for {stats.image_size}, the model samples {pl_module.image_size}"
            )
        self.checker = AcceptanceChecker(stats, self.rule_set, seed=self.seed)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        was_training = pl_module.training
        pl_module.eval()
        ids, images, heatmaps = [], [], []
        run = (self.seed, self.num_samples, self.batch_size, self.sampler, self.steps)
        for batch_ids, pairs in generate_batches(pl_module, *run, trainer.global_rank, trainer.world_size):
            ids += batch_ids
            images.append(pairs[:, 0].numpy())
            heatmaps.append(pairs[:, 1].numpy())
        pl_module.train(was_training)
        verdicts = self.checker.check(np.concatenate(heatmaps), ids) if ids else []
        summary = summarize(verdicts, self.checker.rule_set)
        counts = torch.tensor(
            [
                summary["n"],
                summary["accepted"],
                *(sum(v.accepted_by_rule_set[name] for v in verdicts) for name in ("paper", "strict")),
                *summary["failed_rule_counts"].values(),
            ],
            dtype=torch.float64,
            device=pl_module.device,
        )
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        total = max(float(counts[0]), 1.0)
        metrics = {
            "acceptance/n": float(counts[0]),
            "acceptance/rate": float(counts[1]) / total,
            "acceptance/rate_paper": float(counts[2]) / total,
            "acceptance/rate_strict": float(counts[3]) / total,
        }
        metrics.update(
            {
                f"acceptance/failed_{rule}": float(c)
                for rule, c in zip(summary["failed_rule_counts"], counts[4:].tolist(), strict=True)
            }
        )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        pl_module.log("acceptance_rate", metrics["acceptance/rate"], rank_zero_only=True)
        if trainer.is_global_zero and verdicts:
            path = Path(trainer.default_root_dir) / "acceptance" / f"epoch={trainer.current_epoch:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            acceptance_grid(
                path,
                np.concatenate(images),
                np.concatenate(heatmaps),
                verdicts,
                title=f"epoch {trainer.current_epoch}: {metrics['acceptance/rate']:.0%} accepted",
            )
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image("acceptance/gallery", images=[str(path)], step=trainer.global_step)
