"""Heatmap-regression landmark localizer (a U-Net, spatial-softmax NLL, sub-pixel decoding)."""

from __future__ import annotations

import lightning as L
from torch import Tensor

from lightning_modules.generative import TaggedCheckpointMixin, WeightAverageMixin
from lightning_modules.optim import adamw_with_schedule, check_lr_schedule
from xraydiff.data.geometry import to_original_pixels
from xraydiff.errors import DataError
from xraydiff.landmarks.localization import decode_landmarks, heatmap_mse, spatial_softmax_nll, target_distributions
from xraydiff.landmarks.metrics import radial_errors_mm
from xraydiff.networks import heatmap_unet


class LandmarkLocalizer(WeightAverageMixin, TaggedCheckpointMixin, L.LightningModule):
    """Predicts N landmark heatmaps from an image and decodes them to positions.

    Loss: the spatial-softmax NLL against Gaussian target distributions (sigma ``heatmap_sigma``
    pixels), plus ``mse_weight`` times the MSE of the scaled distributions. Decoding: arg-max
    refined by a soft-argmax in a ``refine_window`` window, mapped to original pixels and mm with
    each sample's scale and spacing. Validation and test steps return predictions and radial
    errors for ``callbacks.landmark_eval.LandmarkEvaluation``.

    Args:
        num_landmarks: N output channels.
        image_size: (H, W), divisible by the product of ``strides``.
        channels, strides, num_res_units, dropout: the MONAI residual U-Net (``xraydiff.networks``).
        heatmap_sigma: target sigma in pixels.
        mse_weight: weight of the optional MSE term.
        learning_rate, weight_decay: AdamW.
        lr_schedule, warmup_fraction: 'cosine' (a linear warm-up over the first ``warmup_fraction`` of
            the run's optimizer steps, then a cosine decay, stepped per step) or 'constant'.
        ema_decay: exponential moving average of the weights used for evaluation; None disables.
        refine_window: soft-argmax window in pixels.
    """

    def __init__(
        self,
        num_landmarks: int = 37,
        image_size: tuple[int, int] = (256, 256),
        channels: tuple[int, ...] = (32, 64, 128, 256, 256),
        strides: tuple[int, ...] | None = None,
        num_res_units: int = 2,
        dropout: float = 0.0,
        heatmap_sigma: float = 2.0,
        mse_weight: float = 0.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_schedule: str = "cosine",
        warmup_fraction: float = 0.0,
        ema_decay: float | None = None,
        refine_window: int = 5,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_lr_schedule(lr_schedule, warmup_fraction)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.net = heatmap_unet(1, num_landmarks, channels, strides, num_res_units, dropout=dropout)
        self.init_weight_average("net", ema_decay)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 1, H, W) images -> (B, N, H, W) heatmap logits."""
        return self.net(image)

    def _check(self, batch: dict) -> None:
        if tuple(batch["image"].shape[-2:]) != self.image_size:
            raise DataError(
                None,
                f"data image size {tuple(batch['image'].shape[-2:])} differs from the localizer's {self.image_size}",
            )
        if batch["landmarks"].shape[1] != self.hparams.num_landmarks:
            raise DataError(
                None, f"data has {batch['landmarks'].shape[1]} landmarks, the localizer {self.hparams.num_landmarks}"
            )

    def loss(self, logits: Tensor, batch: dict) -> Tensor:
        target = target_distributions(batch["landmarks"], self.image_size, self.hparams.heatmap_sigma)
        mask = batch.get("visible")
        loss = spatial_softmax_nll(logits, target, mask)
        if self.hparams.mse_weight:
            loss = loss + self.hparams.mse_weight * heatmap_mse(logits, target, self.hparams.heatmap_sigma, mask)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._check(batch)
        loss = self.loss(self(batch["image"]), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def predict_landmarks(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, positions (B, N, 2) in model pixels) with the evaluation weights."""
        network = self.ema.module if self.ema is not None else self.net
        logits = network(image)
        return logits, decode_landmarks(logits, self.hparams.refine_window)

    def _evaluate(self, batch: dict, stage: str) -> dict:
        self._check(batch)
        logits, predicted = self.predict_landmarks(batch["image"])
        loss = self.loss(logits, batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))
        scale = batch["scale"][:, None, :]
        predicted_original = to_original_pixels(predicted, scale)
        target_original = to_original_pixels(batch["landmarks"].float(), scale)
        errors = radial_errors_mm(predicted_original, target_original, batch["mm_per_px"])
        return {"predicted": predicted, "predicted_original": predicted_original, "errors_mm": errors, "loss": loss}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        _, predicted = self.predict_landmarks(batch["image"])
        original = to_original_pixels(predicted, batch["scale"][:, None, :])
        return {
            "id": batch["id"],
            "predicted": predicted.cpu(),
            "landmarks": original.cpu(),
            "mm_per_px": batch["mm_per_px"].cpu(),
        }

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_schedule(
            self.net.parameters(), hp.learning_rate, hp.weight_decay, hp.lr_schedule, self.trainer, hp.warmup_fraction
        )
