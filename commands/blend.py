"""``xraydiff blend``: synthetic image/mask pairs by anatomy-guided latent blending (Lim et al.) into a dataset folder.

For every labelled guide image X_a (mask G_a) of the data config's ``--guides`` split, the k partner
images of the ``--partners`` split whose latents are most similar to z_a (latent SSIM) are blended
with it (structure from z_a, the rest from z_u), noised to ``--strength`` T (by default ``--steps`` / T,
Appendix A read literally) and denoised in ``--steps`` DDIM steps by the LDM, then decoded: k synthetic
images S_a labelled G_a. ``--composite pixel`` keeps the decoded blend only inside the feathered region and
the partner's own pixels outside; ``--composite copy_paste`` is the control without diffusion (the guide's
pixels inside the dilated region pasted into the partner). Guides whose mask holds no pixel of the
structure are skipped (named in the log and the manifest's ``skipped_empty_guides``). For every pair the
manifest records how much of the guide's anatomy survived (``xraydiff.diffusion.blending.anatomy_survival``: r with
the guide's reconstruction inside its mask against outside the region), summarised in ``survival``.
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

from commands.options import BlendOptions
from commands.progress import Countdown
from commands.sampling import interruptible
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.data.imageio import atomic_directory, atomic_write_bytes, check_output_folder, write_png
from xraydiff.diffusion.blending import (
    anatomy_survival,
    blend_latents,
    blend_timesteps,
    feathered,
    latent_mask,
    pixel_region,
    resolve_strength,
    survival_summary,
    top_k_partners,
)
from xraydiff.diffusion.blending import composite as alpha_composite
from xraydiff.diffusion.choices import COMPOSITES
from xraydiff.errors import DataError
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


def _finite(value: float) -> float | None:
    return value if value == value else None  # JSON has no NaN


def run_blend(options: BlendOptions, datamodule, gallery: int = 8, log=print) -> dict:
    """Blend every guide with its top-k partners into ``options.out``; returns the manifest (module docstring)."""
    from lightning.fabric import Fabric

    from lightning_modules.generative import load_model
    from lightning_modules.latent_diffusion import LatentDiffusion
    from xraydiff.data.preview import mask_grid

    o = options
    ldm, autoencoder, out, top_k, steps, strength = o.ldm, o.autoencoder, Path(o.out), o.top_k, o.steps, o.strength
    sampler, guides, partners, batch_size, composite = o.sampler, o.guides, o.partners, o.batch_size, o.composite
    inputs = (ldm, autoencoder, getattr(datamodule, "root", None))
    check_output_folder(out, o.overwrite, "blend", inputs)
    if batch_size < 1:
        raise DataError(None, f"--batch_size must be at least 1, got {batch_size}")
    if composite not in COMPOSITES:
        raise DataError(None, f"--composite must be one of {COMPOSITES}, got {composite!r}")
    diffused = composite != "copy_paste"
    if o.reimpose and not diffused:
        raise DataError(None, "--reimpose needs the LDM; the copy-paste control has no diffusion to re-impose in")
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
    T = int(model.schedule.num_train_timesteps)
    # refused here, before anything is written, when the strength or the steps do not fit the chain
    t_start = int(blend_timesteps(model.scheduler, steps, strength, sampler)[0]) if diffused else None

    resolved = resolve_precision(o.precision, o.accelerator)
    fabric = Fabric(accelerator=o.accelerator, devices=1, precision=resolved)
    model = model.to(fabric.device).eval()
    manifest = {
        "command": "blend",
        "anatomy": datamodule.anatomy,
        "ldm": str(Path(ldm).resolve()),
        "autoencoder": str(Path(autoencoder).resolve()) if autoencoder else None,
        "data_source": datamodule.source,
        "guides": guides,
        "partners": partners,
        "top_k": top_k,
        "composite": composite,
        "sampler": sampler if diffused else None,
        "steps": steps if diffused else None,
        "strength": resolve_strength(strength, steps, T) if diffused else None,
        "strength_rule": None
        if not diffused
        else "steps / T (Appendix A read literally)"
        if strength is None
        else "given",
        "t_start": t_start,
        "ddim_eta": float(model.sampling.ddim_eta),
        "seed": o.seed,
        "batch_size": batch_size,
        "dilation": o.dilation,
        "mask_mode": o.mask_mode,
        "reimpose": o.reimpose,
        "image_size": list(model.image_size),
        "mask_value": MASK_VALUE,
        "classes": list(getattr(datamodule, "classes", [])),
        "precision": resolved,
        "skipped_empty_guides": empty,
        "samples": [],
    }
    with interruptible(), atomic_directory(out, o.overwrite, "blend", inputs) as staging, torch.no_grad():
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        with fabric.autocast():
            pool = encode_all(model, [item.image for item in partner_items], batch_size, fabric.device)
            guide_latents = encode_all(model, [item.image for item in guide_items], batch_size, fabric.device)
        # One data range for every SSIM (latents are unbounded): that of the whole partner pool.
        data_range = float(pool.max() - pool.min())
        latent_size = tuple(pool.shape[-2:])
        image_size = tuple(model.image_size)
        sigma = image_size[0] / latent_size[0] / 2  # half a latent cell
        panels, survival, countdown = [], [], Countdown(len(guide_items))
        for g, (item, z_a) in enumerate(zip(guide_items, guide_latents, strict=True)):
            order, scores = top_k_partners(z_a, pool, top_k, data_range)
            region = latent_mask(torch.from_numpy(item.mask.astype(np.float32)), latent_size, o.dilation, o.mask_mode)
            region_px = pixel_region(region, image_size)
            partners_px = torch.from_numpy(np.stack([partner_items[p].image for p in order.tolist()]))
            if diffused:
                z_init = blend_latents(z_a, pool[order], region)
                generator = torch.Generator(device=fabric.device).manual_seed(o.seed * 1_000_003 + g)
                reimposed = (z_a.to(fabric.device), region.to(fabric.device)) if o.reimpose else None
                decoded = []
                with fabric.autocast():
                    for start in range(0, top_k, batch_size):
                        chunk = z_init[start : start + batch_size].to(fabric.device)
                        decoded.append(model.blend(chunk, steps, strength, generator, reimposed, sampler).float().cpu())
                    reference = model.decode(z_a[None].to(fabric.device)).float().cpu()[0, 0]
                synthetic = torch.cat(decoded)[:, 0]
                if composite == "pixel":
                    synthetic = alpha_composite(synthetic, partners_px, feathered(region_px, sigma))
            else:  # the control: the guide's own pixels, no diffusion
                reference = torch.from_numpy(item.image)
                synthetic = alpha_composite(reference.expand_as(partners_px), partners_px, region_px)
            inside = torch.from_numpy(item.mask.astype(bool))
            for rank, (p, score, image) in enumerate(zip(order.tolist(), scores.tolist(), synthetic, strict=True)):
                partner = partner_items[p]
                name = f"{item.id}__{partner.id}"
                r_in, r_out = anatomy_survival(image, reference, inside, region_px == 0)
                survival.append((r_in, r_out))
                write_png(staging / "images" / f"{name}.png", image.numpy())
                write_png(staging / "masks" / f"{name}.png", item.mask.astype(np.float32) * 2 - 1)
                manifest["samples"].append(
                    {
                        "id": name, "guide": item.id, "partner": partner.id, "rank": rank + 1, "ssim": score,
                        "survival": {"inside": _finite(r_in), "outside": _finite(r_out)},
                    }
                )  # fmt: skip
            if g < gallery:
                best = partner_items[int(order[0])]
                panels += [
                    {"image": item.image, "mask": item.mask, "id": f"labelled {item.id}"},
                    {"image": best.image, "id": f"unlabelled {best.id} (SSIM {float(scores[0]):.3f})"},
                    {"image": synthetic[0].numpy(), "mask": item.mask, "id": "synthetic"},
                ]
            log(f"blend: guide {g + 1}/{len(guide_items)} {item.id}: {top_k} samples ({countdown.after(g + 1)})")
        manifest["survival"] = survival_summary(survival)
        manifest["count"] = len(manifest["samples"])
        atomic_write_bytes(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
        mask_grid(panels, staging / "gallery.png", columns=3, title="labelled | unlabelled partner | synthetic")
    return manifest
