"""Anatomy-guided latent blending (Lim et al., sect. 2 and Appendix A), framework-free.

A labelled radiograph X_a with binary mask G_a and an unlabelled X_u similar to it become one synthetic
pair: their latents are blended so that the structure region comes from z_a and the rest from z_u, the
blend is noised and denoised by the LDM, and the decoded image S_a inherits the label G_a.

Shapes: latents (C, h, w) or (N, C, h, w); masks (H, W) in image pixels, latent masks (h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from xraydiff.diffusion import choices
from xraydiff.diffusion.choices import DEFAULT_SAMPLER
from xraydiff.diffusion.engine import StepRule, reverse_process, step_rule
from xraydiff.diffusion.objectives import Denoiser
from xraydiff.errors import DataError


def latent_ssim(z_a: Tensor, pool: Tensor, data_range: float, chunk: int = 256, kernel_size: int = 11) -> Tensor:
    """SSIM (Wang et al. 2004; torchmetrics) between the latent z_a (C, h, w) and each latent of ``pool``
    (N, C, h, w), computed per channel and averaged over channels and positions: (N,) scores.

    ``data_range`` fixes SSIM's stabilising constants for every pair alike (latents are unbounded). The
    pool is scored ``chunk`` latents at a time, so memory stays linear in N. The Gaussian window shrinks
    (to the largest odd size that fits) on latents smaller than ``kernel_size``.
    """
    if z_a.dim() != 3 or pool.dim() != 4 or pool.shape[1:] != z_a.shape:
        raise DataError(None, f"latent shapes differ: labelled {tuple(z_a.shape)}, unlabelled {tuple(pool.shape[1:])}")
    size = min(kernel_size, *z_a.shape[-2:])
    size -= 1 - size % 2
    scores = []
    for start in range(0, pool.shape[0], chunk):
        part = pool[start : start + chunk].float()
        reference = z_a.float()[None].expand_as(part)
        scores.append(
            structural_similarity_index_measure(
                part, reference, data_range=data_range, kernel_size=size, sigma=1.5 * size / 11, reduction="none"
            )
        )
    return torch.cat(scores)


def top_k_partners(z_a: Tensor, pool: Tensor, k: int, data_range: float, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """(indices, scores) of the ``k`` latents of ``pool`` most similar to z_a by ``latent_ssim``, best first
    (ties by pool order). DataError when k exceeds the pool."""
    if not 1 <= k <= pool.shape[0]:
        raise DataError(None, f"top-k {k} must be in [1, the unlabelled pool's {pool.shape[0]} images]")
    scores = latent_ssim(z_a, pool, data_range, chunk)
    order = torch.argsort(-scores, stable=True)[:k]
    return order, scores[order]


def latent_mask(mask: Tensor, latent_size: tuple[int, int], radius: int = 1, mode: str = "max") -> Tensor:
    """G'_a = dilate(downsample(G_a)): the image mask (H, W) at the latent resolution (h, w), as float {0, 1}.

    ``mode`` 'max' marks every latent cell that holds any structure pixel (a thin canal never vanishes in
    the downsampling, the choice made here), 'area' the cells at least half covered. The dilation with a
    (2 radius + 1)^2 square widens the region (Lim et al.: against the information imbalance of a narrow
    structure between the two sources); radius 0 keeps the downsampled mask.
    """
    if mask.dim() != 2:
        raise DataError(None, f"mask must be (H, W), got shape {tuple(mask.shape)}")
    if radius < 0:
        raise DataError(None, f"dilation radius must be >= 0, got {radius}")
    binary = (mask > 0).float()[None, None]
    if mode == "max":
        small = F.adaptive_max_pool2d(binary, latent_size)
    elif mode == "area":
        small = (F.adaptive_avg_pool2d(binary, latent_size) >= 0.5).float()
    else:
        raise DataError(None, f"mask downsampling mode must be 'max' or 'area', got {mode!r}")
    if radius:
        small = F.max_pool2d(small, 2 * radius + 1, stride=1, padding=radius)
    return small[0, 0]


def blend_latents(z_a: Tensor, z_u: Tensor, region: Tensor) -> Tensor:
    """z_init = G'_a * z_a + (1 - G'_a) * z_u: the structure region from the labelled latent, the rest from
    the unlabelled one. Appendix A of Lim et al. writes z'_u = z_u x G'_a and z'_a = z_a x (1 - G'_a), which
    would paste the unlabelled image into the structure and leave G_a labelling nothing of z_a; the text's
    meaning ("G_a ... used to synthesize the anatomical structure within the unlabeled PANs") is this one.

    z_a (C, h, w) or (N, C, h, w), z_u (N, C, h, w) or (C, h, w), region (h, w): broadcast to (N, C, h, w).
    """
    if z_a.shape[-3:] != z_u.shape[-3:] or tuple(region.shape) != tuple(z_a.shape[-2:]):
        raise DataError(
            None,
            f"shapes differ: z_a {tuple(z_a.shape)}, z_u {tuple(z_u.shape)}, latent mask {tuple(region.shape)}",
        )
    region = region.to(z_a.dtype)
    return region * z_a + (1 - region) * z_u


def resolve_strength(strength: float | None, steps: int, num_train_timesteps: int) -> float:
    """The blend's noise level as a fraction of T; None is Lim et al.'s Appendix A read literally: z_T =
    noise(z_init, T) with T the number of denoising steps (25), i.e. ``steps`` / T of the training chain
    (t_start = 24 of 1000, abar about 0.99)."""
    return steps / num_train_timesteps if strength is None else float(strength)


def blend_rule(
    scheduler: DDPMScheduler, steps: int, strength: float | None, sampler: str = DEFAULT_SAMPLER, eta: float = 0.0
) -> StepRule:
    """The ``steps`` steps of a reverse process that starts at t_start ~ strength * T (SDEdit, Meng et al.
    2022): ``sampler``'s grid of round(steps / strength) steps over [0, T) and its last ``steps``, so the
    blend is always denoised in ``steps`` network calls (25 in Lim et al.) and ``strength`` alone says how
    much of z_init is destroyed (1: all of it, pure sampling; None: ``resolve_strength``'s literal reading,
    the last ``steps`` timesteps of the chain, steps - 1 .. 0)."""
    if steps < 1:
        raise DataError(None, f"blending steps must be at least 1, got {steps}")
    strength = resolve_strength(strength, steps, scheduler.num_train_timesteps)
    if not 0.0 < strength <= 1.0:
        raise DataError(None, f"blending strength must be in (0, 1], got {strength}")
    total = max(steps, int(round(steps / strength)))
    if total > scheduler.num_train_timesteps:
        raise DataError(
            None,
            f"{steps} steps at strength {strength} need {total} steps, more than T = {scheduler.num_train_timesteps}",
        )
    if sampler in choices.REGISTRY and not choices.spec(sampler).grid:  # no k-step grid to take a tail of
        raise DataError(None, f"blending samples with one of {choices.STEP_SAMPLERS}, not {sampler}")
    return step_rule(sampler, scheduler, total, eta, last=steps)


def blend_timesteps(
    scheduler: DDPMScheduler, steps: int, strength: float | None, sampler: str = DEFAULT_SAMPLER
) -> list[int]:
    """The timesteps of ``blend_rule``: t_start first."""
    return blend_rule(scheduler, steps, strength, sampler).timesteps


@torch.no_grad()
def blend_denoise(
    denoiser: Denoiser,
    z_init: Tensor,
    scheduler: DDPMScheduler,
    steps: int,
    strength: float | None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    reimpose: tuple[Tensor, Tensor] | None = None,
    sampler: str = DEFAULT_SAMPLER,
) -> Tensor:
    """z_0 from the blended latent (Lim et al., Appendix A): z_t = noise(z_init, t_start), then ``steps``
    steps of ``sampler`` (DDIM in Lim et al., Song et al. eq. 12, or a solver) down to
    t = 0 on ``xraydiff.diffusion.engine.reverse_process``.

    ``reimpose`` = (z_a, region): after every step the structure region is replaced by z_a noised to the
    step's new t, z = m * noised(z_a, t) + (1 - m) * z (Blended Latent Diffusion, Avrahami et al. 2023,
    Alg. 1, with the roles of the sources as here), and by z_a itself at the end. Off in Lim et al.

    z_init (N, C, h, w); z_a (C, h, w) or (N, C, h, w); region (h, w). Noise comes from ``generator``.
    """
    rule = blend_rule(scheduler, steps, strength, sampler, eta)
    noise = torch.randn(z_init.shape, generator=generator, device=z_init.device)
    start = torch.full((z_init.shape[0],), rule.timesteps[0], device=z_init.device, dtype=torch.long)
    z = scheduler.add_noise(z_init.float(), noise, start)
    reimposed = None
    if reimpose is not None:
        z_a = reimpose[0].float().expand_as(z)
        region = reimpose[1].to(z.dtype)

        def reimposed(x: Tensor, t_prev: int) -> Tensor:
            if t_prev < 0:
                return region * z_a + (1 - region) * x
            fresh = torch.randn(x.shape, generator=generator, device=x.device)
            known = scheduler.add_noise(z_a, fresh, torch.full((x.shape[0],), t_prev, device=x.device))
            return region * known + (1 - region) * x

    return reverse_process(denoiser, z, scheduler, rule, generator, x_hook=reimposed)


# ----------------------------------------------------------------------------- pixel space


def pixel_region(region: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The latent mask G'_a (h, w) back at image resolution (H, W): every pixel of a marked latent cell,
    i.e. the downsampled, dilated structure region in pixels (float {0, 1})."""
    return F.interpolate(region.float()[None, None], size=tuple(image_size), mode="nearest")[0, 0]


def feathered(region: Tensor, sigma: float) -> Tensor:
    """Alpha (H, W) in [0, 1]: the pixel region smoothed by a Gaussian of ``sigma`` pixels (MONAI's
    ``GaussianFilter``), so a composite has no seam. With sigma = half a latent cell and a dilation of one
    cell the structure itself keeps alpha >= 0.97 (two sigmas inside the region's edge)."""
    from monai.networks.layers import GaussianFilter

    if sigma <= 0:
        return region.float()
    blurred = GaussianFilter(spatial_dims=2, sigma=sigma)(region.float()[None, None])[0, 0]
    return blurred.clamp(0.0, 1.0)


def composite(inside: Tensor, outside: Tensor, alpha: Tensor) -> Tensor:
    """alpha * inside + (1 - alpha) * outside: images (N, H, W) or (H, W), alpha (H, W).

    Pixel compositing puts the decoded blend inside the feathered region and the partner's own pixels
    outside (the autoencoder's blur then touches only the structure); the copy-paste control puts the
    guide's pixels there with the hard region, no diffusion at all."""
    if inside.shape[-2:] != outside.shape[-2:] or inside.shape[-2:] != alpha.shape:
        raise DataError(
            None,
            f"shapes differ: inside {tuple(inside.shape)}, outside {tuple(outside.shape)}, alpha {tuple(alpha.shape)}",
        )
    return alpha * inside + (1 - alpha) * outside


def anatomy_survival(synthetic: Tensor, reference: Tensor, inside: Tensor, outside: Tensor) -> tuple[float, float]:
    """How much of the guide's anatomy survived in a synthetic image (H, W): Pearson's r between it and the
    guide's ``reference`` (H, W) over the pixels of ``inside`` (the guide's mask) and, as the baseline a
    random partner also reaches, over those of ``outside`` (beyond the blended region). A blend that kept
    the structure has r_inside well above r_outside; NaN where a region is empty or constant."""
    from torchmetrics.functional import pearson_corrcoef

    def r(where: Tensor) -> float:
        where = where.bool()
        a, b = synthetic[where].double(), reference[where].double()
        if a.numel() < 2 or float(a.std()) == 0.0 or float(b.std()) == 0.0:
            return float("nan")
        return float(pearson_corrcoef(a, b))

    return r(inside), r(outside)


def survival_summary(samples: list[tuple[float, float]]) -> dict:
    """Median and quartiles over synthetic pairs of r_inside, r_outside and r_inside - r_outside
    (``anatomy_survival``; pairs with a NaN left out, their count kept)."""
    values = torch.tensor([s for s in samples if s[0] == s[0] and s[1] == s[1]], dtype=torch.float64).reshape(-1, 2)
    summary: dict = {"n": int(values.shape[0]), "undefined": len(samples) - int(values.shape[0])}
    columns = {"inside": values[:, 0], "outside": values[:, 1], "difference": values[:, 0] - values[:, 1]}
    for name, column in columns.items():
        if len(column):
            q25, median, q75 = torch.quantile(column, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
            summary[name] = {"median": median, "q25": q25, "q75": q75}
        else:
            summary[name] = None
    summary["kept_fraction"] = float((columns["difference"] > 0).double().mean()) if len(values) else None
    return summary
