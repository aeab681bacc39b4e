"""``xraydiff blend``: synthetic image/mask pairs by anatomy-guided latent blending (Lim et al.) into a dataset folder.

For every labelled guide image X_a (mask G_a) of the data config's ``--guides`` split, the k partner
images of the ``--partners`` split whose latents are most similar to z_a (latent SSIM) are blended
with it (structure from z_a, the rest from z_u), noised to ``--strength`` T and denoised in ``--steps``
DDIM steps by the LDM, then decoded: k synthetic images S_a labelled G_a. Guides whose mask holds no pixel
of the structure are skipped (named in the log and the manifest's ``skipped_empty_guides``).
All k partners of a guide go through the LDM together (in chunks of ``--batch_size``).

Output, all or nothing (a staging folder replaces ``--out`` at the end): ``images/<guide>__<partner>.png``,
``masks/<same>.png`` (mask value 255) in the panoramic layout that ``PanoramicDataModule`` reads through
``extra_train_dirs``, ``manifest.json`` (settings, and for each sample its guide, partner, SSIM rank and
score) and ``gallery.png`` (guide with its mask, best partner, synthetic image with the mask).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from commands.sampling import interruptible
from xraydiff.blending import blend_latents, latent_mask, top_k_partners
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.errors import DataError
from xraydiff.imageio import atomic_directory, atomic_write_bytes, check_output_folder, write_png
from xraydiff.precision import resolve_precision

MASK_VALUE = 255


def _training_ids(path: Path) -> set[str]:
    """Image ids a generator checkpoint was trained on (recorded by the DataModule)."""
    return set(read_checkpoint(path)[CHECKPOINT_KEY].get("train_data", {}).get("ids") or [])


def check_no_leakage(partner_ids: list[str], checkpoints: list[Path]) -> None:
    """DataError naming the checkpoint when a partner image was in a generator's training set (Lim et al.
    train the LDM without the images used for synthesis)."""
    for path in checkpoints:
        seen = sorted(set(partner_ids) & _training_ids(path))
        if seen:
            raise DataError(
                path,
                f"{len(seen)} of the {len(partner_ids)} partner images were in this model's training set "
                f"(e.g. {', '.join(seen[:3])}); blend with images it never saw (the data config's 'synthesis' "
                "split, kept out of the generators' training)",
            )


def check_same_autoencoder(model, path: Path) -> None:
    """DataError unless the autoencoder checkpoint holds the first stage the LDM was trained with."""
    from lightning_modules.autoencoder import LatentAutoencoder
    from lightning_modules.generative import model_class

    model_class(path, expected=LatentAutoencoder)
    prefix = "autoencoder."
    given = {k[len(prefix) :]: v for k, v in read_checkpoint(path)["state_dict"].items() if k.startswith(prefix)}
    inside = model.first_stage.state_dict()
    if given.keys() != inside.keys() or any(not torch.equal(given[k].cpu(), inside[k].cpu()) for k in inside):
        raise DataError(path, "this autoencoder is not the one the LDM was trained with (its weights differ)")


def encode_all(model, images: list[np.ndarray], batch_size: int, device: torch.device) -> torch.Tensor:
    """Scaled posterior-mean latents (N, C, h, w) of (H, W) images, on the CPU in float32."""
    latents = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.stack(images[start : start + batch_size]))[:, None].to(device)
        latents.append(model.latents(batch).float().cpu())
    return torch.cat(latents)


def run_blend(
    ldm: Path,
    datamodule,
    out: Path,
    top_k: int,
    steps: int = 25,
    strength: float = 0.5,
    seed: int = 0,
    autoencoder: Path | None = None,
    dilation: int = 1,
    mask_mode: str = "max",
    reimpose: bool = False,
    guides: str = "train",
    partners: str = "synthesis",
    batch_size: int = 16,
    accelerator: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    gallery: int = 8,
    log=print,
) -> dict:
    """Blend every guide with its top-k partners into ``out``; returns the manifest (see the module docstring)."""
    from lightning.fabric import Fabric

    from lightning_modules.generative import load_model
    from lightning_modules.latent_diffusion import LatentDiffusion
    from xraydiff.preview import mask_grid

    out = Path(out)
    inputs = (ldm, autoencoder, getattr(datamodule, "root", None))
    check_output_folder(out, overwrite, "blend", inputs)
    if batch_size < 1:
        raise DataError(None, f"--batch_size must be at least 1, got {batch_size}")
    model = load_model(ldm, expected=LatentDiffusion)
    if not float(model.scale_factor) > 0:
        raise DataError(ldm, "this LDM has no latent scale factor: it was never trained")
    if autoencoder is not None:
        check_same_autoencoder(model, autoencoder)
    datamodule.setup()
    if tuple(datamodule.image_size) != tuple(model.image_size):
        raise DataError(
            None,
            f"data image_size {list(datamodule.image_size)} differs from the LDM's {list(model.image_size)} ({ldm})",
        )
    for split in (guides, partners):
        if split not in datamodule.items:
            raise DataError(None, f"no split {split!r} in the data (known: {sorted(datamodule.items)})")
    labelled = [item for item in datamodule.items[guides] if item.mask is not None]
    # A guide without a pixel of the structure would label the partner's own anatomy background.
    empty = [item.id for item in labelled if not item.mask.any()]
    guide_items = [item for item in labelled if item.mask.any()]
    partner_items = datamodule.items[partners]
    if not guide_items:
        raise DataError(
            datamodule.root,
            f"the {guides} split holds no labelled image with a pixel of the structure to guide the blending"
            + (f" ({len(empty)} guides with empty masks, e.g. {', '.join(empty[:3])})" if empty else ""),
        )
    if empty:
        log(f"blend: {len(empty)} of {len(labelled)} guides skipped, their masks are empty ({', '.join(empty[:5])})")
    if not 1 <= top_k <= len(partner_items):
        raise DataError(
            None, f"--top_k {top_k} must be in [1, the {len(partner_items)} images of the {partners} split]"
        )
    check_no_leakage([item.id for item in partner_items], [Path(ldm), *([Path(autoencoder)] if autoencoder else [])])

    resolved = resolve_precision(precision, accelerator)
    fabric = Fabric(accelerator=accelerator, devices=1, precision=resolved)
    model = model.to(fabric.device).eval()
    manifest = {
        "command": "blend",
        "ldm": str(Path(ldm).resolve()),
        "autoencoder": str(Path(autoencoder).resolve()) if autoencoder else None,
        "data_source": datamodule.source,
        "guides": guides,
        "partners": partners,
        "top_k": top_k,
        "steps": steps,
        "strength": strength,
        "ddim_eta": float(model.hparams.ddim_eta),
        "seed": seed,
        "batch_size": batch_size,
        "dilation": dilation,
        "mask_mode": mask_mode,
        "reimpose": reimpose,
        "image_size": list(model.image_size),
        "mask_value": MASK_VALUE,
        "classes": list(getattr(datamodule, "classes", [])),
        "precision": resolved,
        "skipped_empty_guides": empty,
        "samples": [],
    }
    with interruptible(), atomic_directory(out, overwrite, "blend", inputs) as staging, torch.no_grad():
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        with fabric.autocast():
            pool = encode_all(model, [item.image for item in partner_items], batch_size, fabric.device)
            guide_latents = encode_all(model, [item.image for item in guide_items], batch_size, fabric.device)
        # One data range for every SSIM (latents are unbounded): that of the whole partner pool.
        data_range = float(pool.max() - pool.min())
        latent_size = tuple(pool.shape[-2:])
        panels = []
        for g, (item, z_a) in enumerate(zip(guide_items, guide_latents, strict=True)):
            order, scores = top_k_partners(z_a, pool, top_k, data_range)
            region = latent_mask(torch.from_numpy(item.mask.astype(np.float32)), latent_size, dilation, mask_mode)
            z_init = blend_latents(z_a, pool[order], region)
            generator = torch.Generator(device=fabric.device).manual_seed(seed * 1_000_003 + g)
            reimposed = (z_a.to(fabric.device), region.to(fabric.device)) if reimpose else None
            synthetic = []
            for start in range(0, top_k, batch_size):
                chunk = z_init[start : start + batch_size].to(fabric.device)
                with fabric.autocast():
                    synthetic.append(model.blend(chunk, steps, strength, generator, reimposed).float().cpu())
            synthetic = torch.cat(synthetic)[:, 0].numpy()
            for rank, (p, score, image) in enumerate(zip(order.tolist(), scores.tolist(), synthetic, strict=True)):
                partner = partner_items[p]
                name = f"{item.id}__{partner.id}"
                write_png(staging / "images" / f"{name}.png", image)
                write_png(staging / "masks" / f"{name}.png", item.mask.astype(np.float32) * 2 - 1)
                manifest["samples"].append(
                    {"id": name, "guide": item.id, "partner": partner.id, "rank": rank + 1, "ssim": score}
                )
            if g < gallery:
                best = partner_items[int(order[0])]
                panels += [
                    {"image": item.image, "mask": item.mask, "id": f"labelled {item.id}"},
                    {"image": best.image, "id": f"unlabelled {best.id} (SSIM {float(scores[0]):.3f})"},
                    {"image": synthetic[0], "mask": item.mask, "id": "synthetic"},
                ]
            log(f"blend: guide {g + 1}/{len(guide_items)} {item.id}: {top_k} samples")
        manifest["count"] = len(manifest["samples"])
        atomic_write_bytes(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
        mask_grid(panels, staging / "gallery.png", columns=3, title="labelled | unlabelled partner | synthetic")
    return manifest
