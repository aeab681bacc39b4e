"""Quality control of predicted landmark configurations with the acceptance machinery's shape model."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.errors import DataError


def fit_prediction_checker(datamodule, **config) -> AcceptanceChecker | None:
    """An ``AcceptanceChecker`` whose statistics are fitted on the DataModule's training shapes, in
    its model frame (``image_size``), with the anatomy's default rules, without the MRF's edge
    distributions (not needed, and the slow part of a fit); ``check_configurations`` then judges
    predicted configurations. ``config``: ``AcceptanceConfig`` fields over those defaults. None (with
    a note) when the DataModule has no landmark shapes or fewer than 3 training shapes."""
    if datamodule is None or not hasattr(datamodule, "shape_table"):
        return None
    try:
        shapes, spacing, frame = datamodule.shape_table("train")
    except DataError as err:
        rank_zero_info(f"prediction plausibility not checked: {err}")
        return None
    stats = ShapeStatistics.fit(
        shapes, spacing, datamodule.image_size, datamodule.anatomy, AcceptanceConfig(**config), frame,
        edge_distributions=False,
    )  # fmt: skip
    return AcceptanceChecker(stats)
