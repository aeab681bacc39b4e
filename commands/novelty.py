"""``xraydiff novelty``: how many generated images are near copies of training images (``xraydiff.data.novelty``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from commands.options import NoveltyOptions
from xraydiff.data.imageio import atomic_directory, atomic_write_bytes, check_output_folder
from xraydiff.data.novelty import FEW_HELD_OUT, MIN_HELD_OUT, calibrate, nearest, reduced
from xraydiff.data.samples import MANIFEST, SampleImages, read_sample_images
from xraydiff.errors import DataError
from xraydiff.metrics import wilson_interval

ASPECT_TOLERANCE = 0.1  # relative difference of H / W that tells another anatomy from a resized one
DUPLICATE = 1e-3  # a held-out image this close to a training image is the same radiograph in two splits


def check_anatomy(samples: SampleImages, datamodule) -> None:
    """DataError naming the manifest or the first sample when the samples are not of the data's anatomy: the
    anatomy their manifest names, heatmaps (a landmark anatomy) or none, and the shape of the images."""
    anatomy, landmarks = datamodule.anatomy, hasattr(datamodule, "shape_table")
    if samples.anatomy is not None and samples.anatomy != anatomy:
        raise DataError(
            samples.folder / MANIFEST, f"the samples are {samples.anatomy} images, the data config's are {anatomy}"
        )
    if samples.paired != landmarks:
        kind = "image/heatmap pairs (a landmark generator)" if samples.paired else "images without heatmaps"
        raise DataError(samples.files[0], f"the samples are {kind}; the data config's {anatomy} data is not")
    height, width = samples.images.shape[1:]
    configured = datamodule.image_size
    if abs((height / width) / (configured[0] / configured[1]) - 1) > ASPECT_TOLERANCE:
        raise DataError(
            samples.files[0],
            f"the samples are {height} x {width} (H x W), the {anatomy} data config's images {configured[0]} x "
            f"{configured[1]}: another anatomy? (a deliberate aspect: set --data.init_args.image_size)",
        )


def split_images(datamodule, split: str, config: Path | None) -> tuple[list[str], Tensor]:
    """(ids, images (N, 1, H, W)) of a split of a set-up DataModule; DataError naming the config when it is empty."""
    known = datamodule.items or {}
    if split not in known:
        raise DataError(config, f"the data has no split '{split}' (it has: {', '.join(known)})")
    items = known[split]
    if not items:
        raise DataError(config, f"the data's '{split}' split is empty (--split / --held_out name the splits compared)")
    if items[0].image is None:
        raise DataError(config, f"the '{split}' split has annotations only; the near-copy check needs its images")
    return [item.id for item in items], torch.from_numpy(np.stack([item.image for item in items]))[:, None]


def feature_space(options: NoveltyOptions, size: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """Images (N, 1, H, W) -> the maps compared: the reduced images (pixel space) or the autoencoder's posterior
    means (latent space; NCC ignores the latent scale factor)."""
    if options.space == "pixel":
        return lambda images: reduced(images, options.size)
    if options.autoencoder is None:
        raise DataError(None, "--space latent needs --autoencoder (a LatentAutoencoder or LatentDiffusion checkpoint)")
    from lightning_modules.generative import load_model

    model = load_model(options.autoencoder)
    encoder = getattr(model, "first_stage", None) or getattr(model, "autoencoder", None)
    if encoder is None:
        raise DataError(options.autoencoder, f"a {type(model).__name__}: --autoencoder needs a LatentAutoencoder or "
                        "LatentDiffusion checkpoint")  # fmt: skip
    if tuple(model.image_size) != tuple(size):
        raise DataError(options.autoencoder, f"the autoencoder encodes {tuple(model.image_size)} images, the samples "
                        f"are {tuple(size)}")  # fmt: skip
    encoder.eval()

    @torch.no_grad()
    def latents(images: Tensor) -> Tensor:
        return torch.cat([encoder.posterior(part)[0].float() for part in images.split(options.batch_size)])

    return latents


def summary(report: dict, out: Path) -> dict:
    """What a study keeps of the report ``check_novelty`` wrote into ``out``: counts, rate, threshold, its path."""
    keys = ("n", "near_copies", "near_copy_rate", "near_copy_rate_ci95", "train_images", "threshold")
    return {**{key: report[key] for key in keys}, "report": str(Path(out) / "report.json")}


def check_novelty(options: NoveltyOptions, datamodule, config: Path | None = None, log=print) -> dict:
    """Every sample's nearest training image and distance, the threshold calibrated on the held-out split, and the
    near-copy rate; writes ``out/report.json`` and ``out/gallery.png`` (all or nothing) and returns the report."""
    from xraydiff.data.preview import novelty_grid

    o = options
    check_output_folder(o.out, o.overwrite, "novelty", inputs=(o.samples,))
    if o.split == o.held_out:
        raise DataError(None, f"--held_out must be another split than --split ({o.split})")
    samples = read_sample_images(o.samples)
    check_anatomy(samples, datamodule)
    size = tuple(samples.images.shape[1:])
    features = feature_space(o, size)  # a foreign autoencoder stops here, before the data is loaded
    with torch.no_grad():
        queries = features(torch.from_numpy(samples.images)[:, None])
    compared = tuple(queries.shape[-2:])
    if min(compared) <= 2 * o.max_shift:
        most = (min(compared) - 1) // 2
        raise DataError(None, f"--max_shift {o.max_shift} leaves no window of the compared {compared[0]} x "
                        f"{compared[1]} {o.space} maps (at most {most}; or a larger --size)")  # fmt: skip
    if datamodule.items is None:
        datamodule.image_size = size  # the training images at the samples' size
        datamodule.setup()
    elif tuple(datamodule.image_size) != size:
        raise ValueError(f"the DataModule was set up at {datamodule.image_size}, the samples are {size}")
    train_ids, train = split_images(datamodule, o.split, config)
    held_out_ids, held_out = split_images(datamodule, o.held_out, config)
    if len(held_out_ids) < MIN_HELD_OUT:
        raise DataError(config, f"the data's '{o.held_out}' split holds {len(held_out_ids)} image(s); the threshold "
                        f"needs at least {MIN_HELD_OUT} held-out images (--held_out)")  # fmt: skip
    with torch.no_grad():
        references = features(train)
        held_out_distance, held_out_index = nearest(features(held_out), references, o.max_shift, o.batch_size)
        threshold = calibrate(held_out_distance.numpy(), o.level)
        distance, index = nearest(queries, references, o.max_shift, o.batch_size)
    duplicates = [
        {"id": held_out_ids[k], "nearest": train_ids[int(held_out_index[k])], "distance": float(held_out_distance[k])}
        for k in torch.nonzero(held_out_distance < DUPLICATE).flatten().tolist()
    ]
    if len(held_out_ids) < FEW_HELD_OUT:
        log(f"note: the threshold rests on {len(held_out_ids)} {o.held_out} images; with fewer than {FEW_HELD_OUT} "
            "it is approximate (docs/novelty.md, 'The calibrated threshold')")  # fmt: skip
    if duplicates:
        log(
            f"warning: {len(duplicates)} of the {len(held_out_ids)} {o.held_out} images lie within {DUPLICATE} of a "
            f"{o.split} image (the same radiograph in two splits?): "
            + ", ".join(f"{d['id']}~{d['nearest']}" for d in duplicates[:10])
            + (" ..." if len(duplicates) > 10 else "")
        )
    flagged = (distance < threshold.value).tolist()
    count, n = int(sum(flagged)), len(flagged)
    low, high = wilson_interval(count, n)
    report = {
        "samples_dir": str(o.samples),
        "data": datamodule.source,
        "anatomy": datamodule.anatomy,
        "split": o.split,
        "train_images": len(train_ids),
        "held_out_split": o.held_out,
        "space": o.space,
        "compared_size": list(compared),
        "max_shift": o.max_shift,
        "distance": f"1 - max NCC over training images and relative shifts of up to {o.max_shift} px of "
        f"{compared[0]} x {compared[1]} {'latents' if o.space == 'latent' else 'images'}",
        "threshold": {**vars(threshold), "description": threshold.describe()},
        "held_out_duplicates": duplicates,
        "n": n,
        "near_copies": count,
        "near_copy_rate": count / n,
        "near_copy_rate_ci95": [low, high],
        "samples": [
            {"id": sample, "nearest": train_ids[k], "distance": d, "near_copy": flag}
            for sample, k, d, flag in zip(samples.ids, index.tolist(), distance.tolist(), flagged, strict=True)
        ],
    }
    closest = torch.argsort(distance)[: o.gallery_size].tolist()
    cases = [
        {
            "image": samples.images[k],
            "nearest": train[index[k], 0].numpy(),
            "label": f"{samples.ids[k]} | {train_ids[index[k]]}: {distance[k]:.4f}",
            "near_copy": flagged[k],
        }
        for k in closest
    ]
    with atomic_directory(o.out, o.overwrite, "novelty", inputs=(o.samples,)) as staging:
        atomic_write_bytes(staging / "report.json", json.dumps(report, indent=1).encode())
        novelty_grid(staging / "gallery.png", cases, title=f"closest samples | their nearest {o.split} image "
                     f"(near copies framed orange: distance < {threshold.value:.4f})")  # fmt: skip
    log(
        f"{count} of {n} samples are near copies ({count / n:.1%}, 95 % CI {low:.1%}-{high:.1%}) of "
        f"the {len(train_ids)} {o.split} images: distance below {threshold.value:.4f}, {threshold.describe()}"
    )
    log(f"wrote {o.out}/report.json, {o.out}/gallery.png")
    return report
