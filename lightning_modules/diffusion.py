"""The part every diffusion LightningModule shares: its denoising U-Net, the moving average of its weights, its
variance schedule, its default sampler, its optimiser, and the typed option groups they are built from
(``xraydiff.diffusion.specs``). A model subclasses ``DiffusionModule`` and holds only its paper's part."""

from __future__ import annotations

import dataclasses
import inspect

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from lightning_modules.generative import WeightAverageMixin
from lightning_modules.optim import adamw_with_schedule, check_lr_schedule
from xraydiff.diffusion.engine import check_diffusion_options, check_sampling, sample
from xraydiff.diffusion.objectives import diffusion_loss, scheduler_of
from xraydiff.diffusion.specs import NetworkSpec, OptimSpec, SamplingSpec, ScheduleSpec, as_spec, grouped
from xraydiff.errors import DataError


class OptionGroups:
    """A LightningModule configured by typed option groups (``GROUPS``: name -> spec dataclass): each kept as its
    spec (a mapping given, a checkpoint's or a config's, read over the subclass's default group), stored in the
    checkpoint's hyperparameters as a mapping; checkpoints and configs of the flat options before the groups are
    upgraded or refused with the new names."""

    GROUPS: dict[str, type] = {}
    earlier_names: dict[str, str] = {}  # a subclass's own renamed options
    # Config keys of earlier versions, refused with the name that replaced them (commands.lightning_cli): every
    # option now inside a group (``channels`` -> ``network.channels``), set for each subclass.
    renamed_parameters: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        grouped_names = {f.name: f"{g}.{f.name}" for g, spec in cls.GROUPS.items() for f in dataclasses.fields(spec)}
        cls.renamed_parameters = {**grouped_names, **cls.earlier_names}

    def init_groups(self, **given) -> None:
        """Set every group of ``GROUPS`` from ``given`` (a spec, a mapping or None) over the signature's default."""
        defaults = inspect.signature(type(self).__init__).parameters
        for name, cls in self.GROUPS.items():
            spec = as_spec(cls, given.get(name), defaults[name].default)
            setattr(self, name, spec)
            if name in self.hparams:
                self.hparams[name] = dataclasses.asdict(spec)

    @classmethod
    def upgrade_hparams(cls, hparams: dict) -> dict:
        """The hyperparameters of a checkpoint saved before the option groups, grouped (newer ones unchanged)."""
        return grouped(hparams, cls.GROUPS)


class DiffusionModule(OptionGroups, WeightAverageMixin):
    """Network, EMA, schedule, sampler and optimiser of a diffusion model, from its option groups.

    ``network``, ``schedule``, ``sampling``, ``optim``: the typed groups (``init_groups``), saved in the
    checkpoint's hyperparameters as mappings; ``init_denoiser`` sets the network, its EMA copy and the schedule.
    ``clip_sample``: whether x0 predictions are clamped to [-1, 1] (images: yes; unit-variance latents: no).
    ``sampling_memory_format``: the memory format the EMA network samples in (channels-last where measured
    faster per call: ``benchmarks/ddpm.py --compile-step``).
    """

    GROUPS = {"network": NetworkSpec, "schedule": ScheduleSpec, "sampling": SamplingSpec, "optim": OptimSpec}

    clip_sample: bool = True
    sampling_memory_format: torch.memory_format = torch.contiguous_format

    def init_groups(self, **given) -> None:
        """``OptionGroups.init_groups``, then the checks of the schedule, the sampler and the optimiser."""
        super().init_groups(**given)
        if "sampling" in self.GROUPS:
            s, k = self.schedule, self.sampling
            check_diffusion_options(k.sampler, s.prediction_type, k.ddim_eta, k.sampling_steps, s.num_train_timesteps)
        check_lr_schedule(self.optim.lr_schedule, self.optim.warmup_fraction)

    def init_denoiser(self, unet: nn.Module) -> None:
        """The denoiser ``self.unet``, its EMA copy (``optim``) and the schedule."""
        self.unet = unet
        self.init_weight_average("unet", self.optim.ema_decay, self.optim.ema_warmup)
        self.scheduler = self.make_scheduler()

    def build_unet(self, in_channels: int, out_channels: int, default_attention: tuple[bool, ...] | None = None):
        """MONAI's ``DiffusionModelUNet`` of ``network``; attention where ``attention_levels`` says, else at
        ``default_attention`` (else nowhere but MONAI's bottleneck)."""
        n = self.network
        attention = n.attention_levels or default_attention or (False,) * len(n.channels)
        if len(attention) != len(n.channels):
            raise DataError(None, f"attention_levels needs one entry per level ({len(n.channels)}), got {attention}")
        return DiffusionModelUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(n.channels),
            attention_levels=tuple(attention),
            num_res_blocks=n.num_res_blocks,
            num_head_channels=n.num_head_channels,
            norm_num_groups=n.norm_num_groups,
            use_flash_attention=n.use_flash_attention,
        )

    def make_scheduler(self):
        """The model's variance schedule (MONAI's DDPM scheduler), which every sampler steps with."""
        return scheduler_of(self.schedule, self.clip_sample)

    # ------------------------------------------------------------------------------ training

    def training_x0(self, batch: dict) -> Tensor:
        """The x0 a training batch gives the denoiser (image/heatmap pairs, latents)."""
        raise NotImplementedError

    def evaluation_x0(self, batch: dict, generator: torch.Generator) -> Tensor:
        """The x0 of a validation / test batch, drawn with ``generator`` where it is random."""
        return self.training_x0(batch)

    def diffusion_loss(
        self, x0: Tensor, model: nn.Module | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The objective of ``prediction_type`` (Ho et al., eq. 14 for epsilon) on x0 (``xraydiff.diffusion``)."""
        network = model or self.unet
        return diffusion_loss(lambda x, t: network(x, timesteps=t), x0, self.scheduler, generator)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(self.training_x0(batch))
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> Tensor:
        # A fixed generator per batch makes the loss comparable across epochs and leaves the
        # global random state (and thus exact resumption) untouched.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        x0 = self.evaluation_x0(batch, generator)
        loss = self.diffusion_loss(x0, self.ema.module, generator)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self):
        o = self.optim
        return adamw_with_schedule(
            self.unet.parameters(), o.learning_rate, o.weight_decay, o.lr_schedule, self.trainer, o.warmup_fraction
        )

    # ------------------------------------------------------------------------------ sampling

    def sampling_description(self, sampler: str | None, steps: int | None) -> tuple[str, int]:
        """(sampler, network calls) of ``denoise`` for these arguments (None: the model's defaults)."""
        sampler = sampler or self.sampling.sampler
        steps = steps or self.sampling.sampling_steps
        return sampler, check_sampling(sampler, steps, self.sampling.ddim_eta, self.schedule.num_train_timesteps)

    @torch.no_grad()
    def denoise(
        self,
        x_T: Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """x_0 from x_T by the reverse process with the EMA weights (``self.ema``), see
        ``xraydiff.diffusion.engine.sample``; clamped to [-1, 1] when ``clip_sample``."""
        sampler, steps = self.sampling_description(sampler, steps)
        network = self.ema.to(memory_format=self.sampling_memory_format)
        return sample(
            lambda x, t: network(x, timesteps=t),
            x_T.contiguous(memory_format=self.sampling_memory_format),
            self.scheduler,
            sampler,
            steps,
            self.sampling.ddim_eta,
            generator,
            clip=self.clip_sample,
            progress=progress,
            desc=f"{sampler} x{x_T.shape[0]}",
        ).contiguous()
