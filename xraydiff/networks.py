"""The heatmap U-Net shared by the landmark localizer and the segmenter (MONAI building blocks); the
denoisers build MONAI's ``DiffusionModelUNet`` in their LightningModules."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import nn


def heatmap_unet(
    in_channels: int,
    out_channels: int,
    channels: Sequence[int] = (32, 64, 128, 256, 256),
    strides: Sequence[int] | None = None,
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
) -> nn.Module:
    """A MONAI residual U-Net mapping (B, in, H, W) to (B, out, H, W) heatmap logits.

    ``strides`` defaults to 2 between consecutive levels; H and W must be divisible by their product.
    Used by the landmark localizer and by the segmenter's 'unet' backbone.
    """
    strides = tuple(strides) if strides is not None else (2,) * (len(channels) - 1)
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=strides,
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
