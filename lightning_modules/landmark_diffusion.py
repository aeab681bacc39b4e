"""Landmark diffusion: a conditional DDPM that generates per-landmark heatmaps given an image."""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from lightning_modules.diffusion import DiffusionModule
from lightning_modules.generative import TaggedCheckpointMixin
from xraydiff.data.geometry import to_original_pixels
from xraydiff.diffusion.choices import FIT_VALIDATION_SAMPLER
from xraydiff.diffusion.engine import check_sampling
from xraydiff.diffusion.landmark import (
    ONE_CALL,
    LandmarkInference,
    LandmarkSampler,
    as_x0,
    check_blur,
    check_decoding,
    check_inference,
    decode_heatmaps,
    decode_topk,
    ensemble_statistics,
    item_generators,
    landmark_diffusion_loss,
    sample_heatmaps,
)
from xraydiff.diffusion.specs import NetworkSpec, OptimSpec, ScheduleSpec
from xraydiff.errors import DataError
from xraydiff.landmarks.heatmaps import gaussian_heatmaps
from xraydiff.landmarks.localization import decode_landmarks
from xraydiff.landmarks.metrics import radial_errors_mm

# Training options a checkpoint must share with the model config (group, key); the value a checkpoint saved
# before the option existed was trained with (None: the option has always been saved).
TRAINED_WITH = {
    (None, "num_landmarks"): None, (None, "image_channels"): None, (None, "image_size"): None,
    ("schedule", "num_train_timesteps"): None, ("schedule", "beta_scaling"): "literal",
}  # fmt: skip


class HeatmapDenoiser(nn.Module):
    """Logits of x0 from U-Net([image, x_t], t): MONAI's time-conditioned ``DiffusionModelUNet`` (given, with
    image + N input and N output channels) seeing the image concatenated to the noisy heatmaps and, as in the
    paper's sect. 3.1, a tanh in place of the final SiLU, which in MONAI's (and guided diffusion's) U-Net sits
    before the output convolution: GroupNorm -> tanh -> conv. The output is therefore unbounded;
    x0_hat = clamp(logits, -1, 1).

    Shapes: image (B, C, H, W), x_t (B, N, H, W), t (B,) -> (B, N, H, W) logits.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        if not isinstance(self.unet.out[1], nn.SiLU):
            raise TypeError(f"MONAI's output block changed: expected SiLU at out[1], found {self.unet.out[1]}")
        self.unet.out[1] = nn.Tanh()

    def forward(self, image: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(torch.cat([image, x_t.to(image.dtype)], dim=1), timesteps=t)


class LandmarkDiffusion(DiffusionModule, TaggedCheckpointMixin, L.LightningModule):
    """Conditional heatmap DDPM with x0 prediction (the landmark-diffusion paper, sect. 3).

    Training: x0 = N Gaussians of sigma ``heatmap_sigma`` scaled to [-1, 1]; t ~ U{0, T-1};
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 3); loss eq. 10-11 on x0_hat. With
    ``diffusion`` False the same network and loss are trained without noise (zeros in place of x_t,
    t = 0): the paper's "no diffusion" baseline, image in, heatmaps out, one call at inference.

    Inference (validate / test / predict, all from one checkpoint, set by ``sampler``):
    'single' (x0_hat from x_{T-1} in one call), 'ddpm' (the T-step chain with the shrinking blur of
    eq. 12), 'ddim' (``sampling_steps`` steps, ``ddim_eta``): the names of the other diffusion models;
    'empty', a diagnostic: one call at t = 0 on the empty heatmap, what the network finds from the image
    alone, which tells the network's training apart from its sampling. Every mode starts from
    q(x_{T-1} | x0 = the empty heatmap), the input training showed at t = T - 1.
    The baseline, 'single' and 'empty' are decoded from the logits as the localizer decodes (arg-max,
    soft-argmax refinement); a chain from its final x0
    (``chain_decoding`` 'argmax': the same refinement on log x0; 'topk': the weighted mean of the 9
    highest pixels, the authors' framework). ``ensemble`` M > 1 runs M stochastic
    members in one batch and averages their decoded coordinates, the spread of the M predictions
    giving each landmark an uncertainty in mm. Validation inside ``fit`` uses ``fit_validation``
    (default 'single', cheap), so that choosing a checkpoint does not cost T calls per image.

    Args:
        num_landmarks: N heatmap channels (19 for ISBI 2015).
        image_size: (H, W), divisible by 2 ** (len(channels) - 1).
        image_channels: channels of the conditioning image.
        diffusion: False trains the no-diffusion baseline.
        heatmap_sigma: target Gaussian sigma in pixels (1 = the paper's few-hot map).
        lambda_nll, lambda_s: weights of eq. 11 (1 and 0.01).
        network: the MONAI ``DiffusionModelUNet`` (symmetric; docs/deviations.md has the paper's asymmetric
            widths), attention at the two lowest levels unless ``attention_levels`` says otherwise.
        schedule: T = 200 and the linear betas 1e-4 to 0.02, 'scaled' by 1000 / T (improved-diffusion's
            convention, so that x_{T-1} is noise at any T; 'literal' uses them as given), x0 prediction ('sample').
        inference: the mode and its options (``LandmarkInference``; see above); not saved in the checkpoint.
        fit_validation: inference mode of the validation inside ``fit``.
        optim: AdamW (1e-4 and weight decay 1e-4 in the paper), per-step cosine schedule after a 5 % warm-up,
            and the moving average of the weights used for inference (None: none; its decay warmed up: a fixed
            0.998 leaves 37 % of the weight on the untrained network after 500 steps).
        refine_window: window of the centre-of-mass refinement of each arg-max, in pixels.
    """

    GROUPS = {"network": NetworkSpec, "schedule": ScheduleSpec, "inference": LandmarkInference, "optim": OptimSpec}
    earlier_names = {"ddim_steps": "inference.sampling_steps"}

    def __init__(
        self,
        num_landmarks: int = 19,
        image_size: tuple[int, int] = (800, 640),
        image_channels: int = 1,
        diffusion: bool = True,
        heatmap_sigma: float = 1.0,
        lambda_nll: float = 1.0,
        lambda_s: float = 0.01,
        network: NetworkSpec = NetworkSpec(channels=(32, 64, 128, 256, 256, 512), norm_num_groups=16),
        schedule: ScheduleSpec = ScheduleSpec(num_train_timesteps=200, beta_scaling="scaled", prediction_type="sample"),
        inference: LandmarkInference = LandmarkInference(),
        fit_validation: LandmarkSampler = FIT_VALIDATION_SAMPLER,
        optim: OptimSpec = OptimSpec(
            learning_rate=1e-4, weight_decay=1e-4, lr_schedule="cosine", warmup_fraction=0.05, ema_decay=None
        ),
        refine_window: int = 5,
    ):
        super().__init__()
        # Inference options are choices of each validate / test / predict run, not properties of the
        # trained model: kept out of the checkpoint, so that LightningCLI (which restores a
        # checkpoint's hyperparameters over the config) lets `--model.init_args.inference.sampler ...` apply.
        self.save_hyperparameters(ignore=["inference"])
        self.init_groups(network=network, schedule=schedule, inference=inference, optim=optim)
        if self.schedule.prediction_type != "sample":
            raise DataError(None, f"landmark diffusion predicts x0 ('sample'), got {self.schedule.prediction_type!r}")
        i, T = self.inference, self.schedule.num_train_timesteps
        check_decoding(i.x0_estimate, i.chain_decoding)
        check_blur(i.sigma_max, i.sigma_min, i.blur_scaling)
        check_inference(i.sampler, i.sampling_steps, i.ensemble, T, i.ddim_eta)
        check_inference(fit_validation, i.sampling_steps, 1, T, i.ddim_eta)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        levels = len(self.network.channels)
        paper_attention = (False,) * max(levels - 2, 0) + (True,) * min(levels, 2)  # at the two lowest resolutions
        unet = self.build_unet(image_channels + num_landmarks, num_landmarks, default_attention=paper_attention)
        self.init_denoiser(HeatmapDenoiser(unet))

    # ------------------------------------------------------------------------------ training

    def _check(self, batch: dict) -> None:
        image = batch["image"]
        if image.shape[1] != self.hparams.image_channels:
            raise DataError(None, f"images have {image.shape[1]} channels, the model {self.hparams.image_channels}")
        if tuple(image.shape[-2:]) != self.image_size:
            size = tuple(image.shape[-2:])
            raise DataError(None, f"data image size {size} differs from the model's {self.image_size}")
        if batch["landmarks"].shape[1] != self.hparams.num_landmarks:
            raise DataError(
                None, f"data has {batch['landmarks'].shape[1]} landmarks, the model {self.hparams.num_landmarks}"
            )

    def loss(self, batch: dict, network: nn.Module, generator: torch.Generator | None = None) -> tuple:
        """(L, L_nll, L_s) of eq. 11 on a batch, x_t drawn by eq. 3 (zeros for the baseline)."""
        image = batch["image"]
        x0 = gaussian_heatmaps(batch["landmarks"], self.image_size, self.hparams.heatmap_sigma, normalize=True)
        batch_size = x0.shape[0]
        if self.hparams.diffusion:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
            T = self.schedule.num_train_timesteps
            t = torch.randint(0, T, (batch_size,), generator=generator, device=x0.device)
            x_t = self.scheduler.add_noise(x0, noise, t)
        else:
            x_t, t = torch.zeros_like(x0), torch.zeros(batch_size, dtype=torch.long, device=x0.device)
        hp = self.hparams
        return landmark_diffusion_loss(network(image, x_t, t), x0, hp.lambda_nll, hp.lambda_s, batch.get("visible"))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._check(batch)
        loss, nll, mse = self.loss(batch, self.unet)
        size = len(batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({"train/nll": nll, "train/mse": mse}, batch_size=size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint whose heatmaps, image channels or size differ from this model's config,
        naming the file, before its weights are loaded."""
        super().on_load_checkpoint(checkpoint)
        saved = self.upgrade_hparams(checkpoint.get("hyper_parameters", {}))
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("net.")]:  # checkpoints before the network was `unet`
            state["unet." + key[len("net.") :]] = state.pop(key)
        for (group, key), before in TRAINED_WITH.items():
            given = saved if group is None else saved.get(group) or {}
            value = given.get(key, before)
            mine = self.hparams[key] if group is None else getattr(getattr(self, group), key)
            if value is not None and list(np.atleast_1d(value)) != list(np.atleast_1d(mine)):
                option = key if group is None else f"{group}.{key}"
                hint = "" if key in given else f" (saved before the option existed; --model.init_args.{option} {value})"
                raise DataError(path, f"checkpoint has {option} {value}, the model config {mine}{hint}")

    # ------------------------------------------------------------------------------ inference

    @property
    def inference_network(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.unet

    def inference_settings(self) -> dict:
        """The mode this stage runs: mode, steps (network calls per member), ensemble size M."""
        hp = self.hparams
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        mode = hp.fit_validation if fitting else self.inference.sampler
        ensemble = 1 if fitting else self.inference.ensemble
        if not hp.diffusion:
            return {"mode": "baseline", "steps": 1, "ensemble": 1}
        inference = self.inference
        steps = check_sampling(
            mode, inference.sampling_steps, inference.ddim_eta, self.schedule.num_train_timesteps, "landmark"
        )
        return {"mode": mode, "steps": steps, "ensemble": ensemble}

    @torch.no_grad()
    def infer(self, image: Tensor, indices: Tensor, settings: dict | None = None) -> dict:
        """Heatmaps and positions for (B, C, H, W) images with dataset ``indices`` (B,) (they seed the noise).

        Returns ``heatmaps`` (B, N, H, W) of the first member, ``members`` (B, M, N, 2) model pixels,
        ``network_calls`` per image and ``seconds`` for the batch.
        """
        settings = settings or self.inference_settings()
        hp, network = self.hparams, self.inference_network
        start = time.perf_counter()
        shape = (hp.num_landmarks, *self.image_size)
        if settings["mode"] == "baseline":
            zeros = torch.zeros((image.shape[0], *shape), device=image.device)
            logits, calls, members = network(image, zeros, torch.zeros_like(indices)).float(), 1, 1
            heatmaps, positions = as_x0(logits), decode_landmarks(logits, hp.refine_window)
        else:
            members = settings["ensemble"]
            images = image.repeat_interleave(members, dim=0)
            generators = item_generators(self.inference.seed, indices.tolist(), members)
            heatmaps, logits, calls = sample_heatmaps(
                lambda x, t: network(images, x, t),
                shape,
                self.scheduler,
                settings["mode"],
                generators,
                image.device,
                steps=settings["steps"],
                eta=self.inference.ddim_eta,
                sigma_max=self.inference.sigma_max,
                sigma_min=self.inference.sigma_min,
                x0_estimate=self.inference.x0_estimate,
                blur_scaling=self.inference.blur_scaling,
            )
            if settings["mode"] in ONE_CALL:
                positions = decode_landmarks(logits, hp.refine_window)
            elif self.inference.chain_decoding == "topk":
                positions = decode_topk(heatmaps)
            else:
                positions = decode_heatmaps(heatmaps, hp.refine_window)
        batch = image.shape[0]
        return {
            "heatmaps": heatmaps.view(batch, members, *shape)[:, 0],
            "members": positions.view(batch, members, hp.num_landmarks, 2),
            "network_calls": calls * members,
            "seconds": time.perf_counter() - start,
        }

    def _predict_original(self, batch: dict) -> dict:
        result = self.infer(batch["image"], torch.as_tensor(batch["index"], device=self.device))
        scale = batch["scale"][:, None, None, :]
        members_original = to_original_pixels(result["members"], scale)
        predicted_original, spread = ensemble_statistics(members_original)
        predicted, _ = ensemble_statistics(result["members"])
        # An uncertainty exists only for an ensemble (M > 1); one member has zero spread by definition.
        ensemble = result["members"].shape[1] > 1
        result.update(
            predicted=predicted,
            predicted_original=predicted_original,
            uncertainty_mm=spread * batch["mm_per_px"].float()[:, None] if ensemble else None,
        )
        return result

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> dict:
        self._check(batch)
        # A fixed generator per batch: the loss is comparable across epochs and the global random
        # state (exact resumption) is left alone.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss, _, _ = self.loss(batch, self.inference_network, generator)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))
        result = self._predict_original(batch)
        target_original = to_original_pixels(batch["landmarks"].float(), batch["scale"][:, None, :])
        result["errors_mm"] = radial_errors_mm(result["predicted_original"], target_original, batch["mm_per_px"])
        result["loss"] = loss
        return result

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        result = self._predict_original(batch)
        return {
            "id": batch["id"],
            "predicted": result["predicted"].cpu(),
            "landmarks": result["predicted_original"].cpu(),
            "uncertainty_mm": None if result["uncertainty_mm"] is None else result["uncertainty_mm"].cpu(),
            "mm_per_px": batch["mm_per_px"].cpu(),
        }
