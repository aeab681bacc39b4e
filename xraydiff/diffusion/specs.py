"""The typed option groups every diffusion model is configured with: its denoising network, its variance schedule,
how it samples and how it is optimised. A model takes one of each (``model.init_args.network.channels`` in a
config), so a constructor holds only its paper's own options; a checkpoint stores them as plain mappings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from xraydiff.diffusion.choices import DEFAULT_SAMPLER, Sampler
from xraydiff.errors import DataError


@dataclass(frozen=True)
class NetworkSpec:
    """MONAI's ``DiffusionModelUNet``: features per level (``channels``), residual blocks per level, self-attention
    per level (None: the model's default), channels per attention head, GroupNorm groups, fused attention."""

    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] | None = None
    num_head_channels: int = 32
    norm_num_groups: int = 32
    use_flash_attention: bool = True


@dataclass(frozen=True)
class ScheduleSpec:
    """The forward process q(x_t | x_0) (Ho et al., eq. 4): T, the betas' ends and schedule ('scaled' multiplies
    the linear ends by 1000 / T, improved-diffusion's convention), and what the network predicts."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear_beta"
    beta_scaling: Literal["scaled", "literal"] = "literal"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"


@dataclass(frozen=True)
class SamplingSpec:
    """The default reverse process: a sampler of ``xraydiff.diffusion.choices``, its steps k (the full chain
    runs T) and DDIM's eta (Song et al., eq. 16)."""

    sampler: Sampler = DEFAULT_SAMPLER
    sampling_steps: int | None = 10
    ddim_eta: float = 0.0


@dataclass(frozen=True)
class OptimSpec:
    """AdamW (weight decay 0 is Adam) with an optional per-step schedule ('cosine': linear warm-up over the
    first ``warmup_fraction`` of the run, then cosine decay; 'constant'), and the moving average of the weights
    used for sampling (``ema_decay`` None: none; ``ema_warmup``: its decay warmed up, diffusers' EMAModel)."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "constant"
    warmup_fraction: float = 0.0
    ema_decay: float | None = 0.999
    ema_warmup: bool = True


@dataclass(frozen=True)
class AdversarialSpec:
    """The patch GAN of the first stage (Rombach et al., sect. 3.1; Medfusion's VAE): weight of the generator's
    least-squares term (0: no discriminator), autoencoder steps before it starts, MONAI's ``PatchDiscriminator``
    width and depth, and the discriminator's Adam learning rate."""

    adversarial_weight: float = 0.0
    adversarial_warmup: int = 0
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    discriminator_learning_rate: float = 1e-4


Spec = TypeVar("Spec")


def as_spec(cls: type[Spec], value: Spec | dict | None, base: Spec | None = None) -> Spec:
    """``value`` as a ``cls``: itself, or the mapping a checkpoint or config stored (lists as tuples) over
    ``base`` (the model's default group; a key it lacks keeps the model's default); DataError naming unknown keys."""
    if isinstance(value, cls):
        return value
    base = base if base is not None else cls()
    if value is None:
        return base
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise DataError(None, f"{cls.__name__} has no option {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def grouped(flat: dict[str, Any], groups: dict[str, type]) -> dict[str, Any]:
    """The hyperparameters of a checkpoint saved before the groups existed, with each group's options folded into
    its mapping (``{"channels": ..., "learning_rate": ...}`` -> ``{"network": {"channels": ...}, "optim": ...}``);
    newer ones as they are."""
    out = dict(flat)
    for group, cls in groups.items():
        names = {f.name for f in dataclasses.fields(cls)}
        moved = {key: out.pop(key) for key in list(out) if key in names}
        if moved:
            out[group] = {**dict(out.get(group) or {}), **moved}
    return out
