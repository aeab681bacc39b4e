"""Binary segmentation of a thin structure on panoramic radiographs (Lim et al.'s downstream task)."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from lightning_modules.generative import TaggedCheckpointMixin
from lightning_modules.optim import adamw_with_schedule, check_lr_schedule
from xraydiff.errors import DataError
from xraydiff.metrics import segmentation_scores
from xraydiff.networks import heatmap_unet

# Mix Transformer sizes of Xie et al. (Table 6): hidden sizes, depths and the all-MLP decoder's width.
MIT_VARIANTS = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
    "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768),
    "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}


class SegFormer(nn.Module):
    """SegFormer (Xie et al. 2021) from Hugging Face ``transformers``: (B, 1, H, W) images to (B, 1, H, W)
    logits, the decoder's 1/4-resolution logits upsampled bilinearly to the input (as in the paper).

    ``pretrained``: a Hub model id such as 'nvidia/mit-b0' (3-channel ImageNet weights, the grey channel
    is repeated), None for random initialisation (Lim et al. do not say; no download needed).
    """

    def __init__(self, encoder: str = "mit_b0", pretrained: str | None = None):
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        if encoder not in MIT_VARIANTS:
            raise DataError(None, f"SegFormer encoder must be one of {sorted(MIT_VARIANTS)}, got {encoder!r}")
        hidden_sizes, depths, decoder = MIT_VARIANTS[encoder]
        self.in_channels = 1 if pretrained is None else 3
        if pretrained is None:
            config = SegformerConfig(
                num_channels=1, num_labels=1, hidden_sizes=hidden_sizes, depths=depths, decoder_hidden_size=decoder
            )
            self.model = SegformerForSemanticSegmentation(config)
            return
        try:
            self.model = SegformerForSemanticSegmentation.from_pretrained(
                pretrained, num_labels=1, ignore_mismatched_sizes=True
            )
        except Exception as err:  # no such model, or a download that cannot happen (offline machine)
            raise DataError(
                None,
                f"SegFormer weights {pretrained!r} could not be loaded ({type(err).__name__}: {err}); "
                "use encoder_weights: null (random initialisation, the default) on a machine without them",
            ) from None

    def forward(self, image: Tensor) -> Tensor:
        pixels = image.expand(-1, self.in_channels, -1, -1)
        logits = self.model(pixel_values=pixels).logits
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


class Segmenter(TaggedCheckpointMixin, L.LightningModule):
    """Predicts a binary mask (B, 1, H, W) from an image (B, 1, H, W).

    Loss: Dice (MONAI ``DiceLoss`` on sigmoid probabilities, per batch) + binary cross-entropy on the
    logits, weighted by ``dice_weight`` and ``bce_weight``, in float32. Validation and test steps return
    each image's precision, recall and DSC of the thresholded prediction (``xraydiff.metrics.
    segmentation_scores``) with its dataset index for ``callbacks.segmentation_eval.SegmentationEvaluation``.

    Args:
        network: 'segformer' (Lim et al.'s choice; ``SegFormer``) or 'unet' (MONAI residual U-Net,
            ``xraydiff.networks.heatmap_unet``).
        encoder, encoder_weights: SegFormer's Mix Transformer size ('mit_b0' .. 'mit_b5') and its
            pretrained weights (None: random initialisation; a Hub id such as 'nvidia/mit-b0' downloads).
        channels, strides, num_res_units: the U-Net.
        image_size: (H, W) of the input (the U-Net needs sides divisible by the product of its strides).
        dice_weight, bce_weight: loss weights.
        threshold: probability above which a pixel is structure.
        learning_rate, weight_decay: AdamW.
        lr_schedule, warmup_fraction: 'cosine' (a linear warm-up over the first ``warmup_fraction`` of
            the run's optimizer steps, then a cosine decay, stepped per step) or 'constant'.
    """

    def __init__(
        self,
        network: Literal["segformer", "unet"] = "segformer",
        encoder: str = "mit_b0",
        encoder_weights: str | None = None,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        strides: tuple[int, ...] | None = None,
        num_res_units: int = 2,
        image_size: tuple[int, int] = (256, 512),
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        threshold: float = 0.5,
        learning_rate: float = 6e-4,
        weight_decay: float = 1e-2,
        lr_schedule: str = "cosine",
        warmup_fraction: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_lr_schedule(lr_schedule, warmup_fraction)
        if not 0.0 < threshold < 1.0:
            raise DataError(None, f"threshold must be in (0, 1), got {threshold}")
        if min(dice_weight, bce_weight) < 0 or dice_weight + bce_weight == 0:
            raise DataError(None, f"need dice_weight, bce_weight >= 0, not both 0; got {dice_weight}, {bce_weight}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if network == "segformer":
            self.net = SegFormer(encoder, encoder_weights)
        elif network == "unet":
            self.net = heatmap_unet(1, 1, channels, strides, num_res_units)
        else:
            raise DataError(None, f"network must be 'segformer' or 'unet', got {network!r}")
        self.dice = DiceLoss(sigmoid=True, batch=True)

    def forward(self, image: Tensor) -> Tensor:
        """Logits (B, 1, H, W)."""
        return self.net(image)

    def loss(self, logits: Tensor, mask: Tensor) -> Tensor:
        logits, mask = logits.float(), mask.float()
        hp = self.hparams
        return hp.dice_weight * self.dice(logits, mask) + hp.bce_weight * F.binary_cross_entropy_with_logits(
            logits, mask
        )

    def _mask(self, batch: dict) -> Tensor:
        if "mask" not in batch:
            raise DataError(None, "segmentation needs masks: this batch has images only (an unlabelled split?)")
        return batch["mask"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.loss(self(batch["image"]), self._mask(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def predict_masks(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, binary prediction) for images (B, 1, H, W)."""
        logits = self(image)
        return logits, (torch.sigmoid(logits.float()) > self.hparams.threshold)

    def _evaluate(self, batch: dict, stage: str) -> dict:
        mask = self._mask(batch)
        logits, predicted = self.predict_masks(batch["image"])
        loss = self.loss(logits, mask)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=mask.shape[0])
        return {"scores": segmentation_scores(predicted, mask > 0.5), "predicted": predicted}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        _, predicted = self.predict_masks(batch["image"])
        return {"ids": list(batch["id"]), "masks": predicted.cpu()}

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_schedule(
            self.net.parameters(), hp.learning_rate, hp.weight_decay, hp.lr_schedule, self.trainer, hp.warmup_fraction
        )
