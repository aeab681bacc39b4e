"""Shared base of the generators: the paired DDPM and VAE of (image, heatmap) pairs, and the latent diffusion model."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from xraydiff.checkpoints import CHECKPOINT_KEY, checkpoint_model_class, class_path, read_checkpoint
from xraydiff.data.generation import generate_batch
from xraydiff.errors import DataError
from xraydiff.landmarks.heatmaps import gaussian_heatmaps


def model_class(path: str | Path, expected: type | None = None, checkpoint: dict | None = None) -> type:
    """The LightningModule class recorded in the checkpoint ``path`` (its content ``checkpoint``, when read
    already), checked against ``expected``."""
    name = checkpoint_model_class(path) if checkpoint is None else checkpoint[CHECKPOINT_KEY]["model_class"]
    module_name, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if expected is not None and not issubclass(cls, expected):
        raise DataError(path, f"checkpoint holds a {cls_name}, expected a {expected.__name__}")
    return cls


def load_model(path: str | Path, expected: type | None = None) -> L.LightningModule:
    """Load the LightningModule saved in ``path`` on the CPU, checking its class against ``expected``; a
    checkpoint saved before the model's option groups loads with its options grouped (``upgrade_hparams``)."""
    checkpoint = read_checkpoint(path)
    cls = model_class(path, expected, checkpoint)
    upgrade = getattr(cls, "upgrade_hparams", None)
    given = {}
    if upgrade is not None:
        saved = upgrade(checkpoint.get("hyper_parameters", {}))
        given = {name: saved[name] for name in cls.GROUPS if name in saved}
    return cls.load_from_checkpoint(path, map_location="cpu", **given)


class TaggedCheckpointMixin:
    """Records the model class in every checkpoint, so commands can refuse a foreign checkpoint, and the training
    set it was trained on (``train_data``: anatomy, split, images; None for a model not loaded from a checkpoint)."""

    train_data: dict | None = None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.train_data = checkpoint.get(CHECKPOINT_KEY, {}).get("train_data")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        meta = {"model_class": class_path(self), "format": 1}
        trainer = getattr(self, "_trainer", None)
        describe = getattr(getattr(trainer, "datamodule", None), "training_set_description", None)
        if describe is not None:
            meta["train_data"] = describe()
        for logger in trainer.loggers if trainer is not None else []:
            if isinstance(logger, WandbLogger):  # a resumed run continues the same W&B run
                meta["wandb_run_id"] = logger.version
        checkpoint[CHECKPOINT_KEY] = meta


def warmup_ema(decay: float):
    """``AveragedModel``'s multi_avg_fn for an EMA whose decay warms up: after n averaged updates the
    next one is ema <- d ema + (1 - d) theta with d = min(decay, (1 + n) / (10 + n))."""

    def update(ema_params: list[Tensor], current_params: list[Tensor], num_averaged: Tensor) -> None:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, current_params, 1.0 - d)

    return update


class WeightAverageMixin:
    """An exponential moving average of a network's weights, ``self.ema`` (None when disabled),
    updated after every optimizer step.

    The update sits inside ``optimizer_step`` rather than at batch end: a checkpoint written at the
    batch's end then already holds it (exact resume), and gradient accumulation updates it once per
    optimizer step, not per micro-batch.
    """

    def init_weight_average(self, network: str, decay: float | None, warmup: bool = False) -> None:
        """Average the weights of the submodule named ``network`` with ``decay`` (None: no average).

        ``warmup``: the n-th update uses min(decay, (1 + n) / (10 + n)) (the warm-up of diffusers'
        ``EMAModel``), so a short run's average is not dominated by its first, untrained weights: with a
        fixed 0.999, 500 steps leave 61 % of the weight on the initial copy."""
        self.ema_source = network
        self.ema = None
        if decay is None:
            return
        if not 0.0 <= decay < 1.0:
            raise DataError(None, f"ema_decay must be in [0, 1), got {decay}")
        average = warmup_ema(decay) if warmup else get_ema_multi_avg_fn(decay)
        self.ema = AveragedModel(getattr(self, network), multi_avg_fn=average, use_buffers=True)
        self.ema.requires_grad_(False)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(getattr(self, self.ema_source))


class GenerativeModule(TaggedCheckpointMixin, L.LightningModule):
    """Base of every model that ``xraydiff sample`` draws from.

    Subclasses set ``image_size`` and ``sample_channels`` (the names of the channels of a sample, written
    as arrays of these names by ``xraydiff sample``) and implement
    ``generate(num, generator, sampler, steps, progress) -> (num, len(sample_channels), H, W)`` in [-1, 1].
    """

    image_size: tuple[int, int]
    sample_channels: tuple[str, ...] = ("image",)

    def generate(
        self,
        num: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        raise NotImplementedError

    def _images(self, batch: dict) -> Tensor:
        """The batch's images (B, 1, H, W) as float32; DataError when their size is not the model's."""
        images = batch["image"]
        if tuple(images.shape[-2:]) != self.image_size:
            raise DataError(
                None, f"data image size {tuple(images.shape[-2:])} differs from the model's {self.image_size}"
            )
        return images.float()

    def gallery(
        self, num: int, generator: torch.Generator, sampler: str | None, steps: int | None, reference: Tensor | None
    ) -> Tensor:
        """Panels (num, C, H, W) for the sample gallery: ``num`` samples (``reference``, real validation
        images, serves models that reconstruct rather than generate)."""
        return self.generate(num, generator, sampler, steps)

    def sampling_description(self, sampler: str | None, steps: int | None) -> tuple[str, int | None]:
        """The (sampler, steps) that ``generate`` uses for these arguments, for manifests."""
        return "prior", None

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Generate one batch of a sampling run (see ``datamodules.sampling``)."""
        if "indices" not in batch:
            raise DataError(
                None,
                f"{type(self).__name__} generates samples with `xraydiff sample --ckpt_path ...`; "
                "`xraydiff predict` has no predictions for it",
            )
        indices = batch["indices"].tolist()
        if not indices:
            return {"ids": [], "samples": torch.empty(0, len(self.sample_channels), *self.image_size)}
        # One progress bar: Lightning's over the batches, not a second one over each batch's steps.
        ids, samples = generate_batch(
            self, int(batch["seed"]), int(batch["batch"]), indices, batch.get("sampler"), batch.get("steps")
        )
        return {"ids": ids, "samples": samples}


class PairedGenerativeModule(GenerativeModule):
    """Base for models generating 2-channel samples: image and one heatmap of all landmarks.

    Batches of a landmark DataModule (``image`` (B, 1, H, W), ``landmarks`` (B, N, 2)) become
    training samples x0 (B, 2, H, W) in [-1, 1] by ``to_pairs``.
    """

    sample_channels = ("image", "heatmap")

    def __init__(self, image_size: tuple[int, int], heatmap_sigma: float):
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.heatmap_sigma = heatmap_sigma

    def to_pairs(self, batch: dict) -> Tensor:
        """x0 = [image, heatmap] (B, 2, H, W), the heatmap rendered on the batch's device."""
        image = batch["image"]
        if tuple(image.shape[-2:]) != self.image_size:
            raise DataError(
                None, f"data image size {tuple(image.shape[-2:])} differs from the model's {self.image_size}"
            )
        heatmap = gaussian_heatmaps(
            batch["landmarks"], self.image_size, self.heatmap_sigma, combine=True, normalize=True
        )
        return torch.cat([image.float(), heatmap], dim=1)

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> Tensor:
        """The model's training objective on a validation/test batch, logged as ``<stage>/loss``."""
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._evaluate(batch, batch_idx, "test")
