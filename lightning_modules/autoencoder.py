"""First stage of the latent diffusion model: a KL-regularised autoencoder of panoramic radiographs."""

from __future__ import annotations

import inspect

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lightning_modules.diffusion import OptionGroups
from lightning_modules.generative import GenerativeModule, model_class
from xraydiff.checkpoints import read_checkpoint
from xraydiff.diffusion.latent import (
    FIRST_STAGE_ARCHITECTURE,
    Float32Autoencoder,
    autoencoder_kl,
    autoencoder_loss,
    compression_factor,
    latent_shape,
)
from xraydiff.diffusion.specs import AdversarialSpec
from xraydiff.errors import DataError


class LatentAutoencoder(OptionGroups, GenerativeModule):
    """MONAI ``AutoencoderKL`` trained as the first stage of Rombach et al. (sect. 3.1), as in Medfusion's VAE.

    Loss of the autoencoder (``xraydiff.diffusion.latent.autoencoder_loss``):
        L = |x - x_hat|_1 + kl_weight KL(q(z|x) || N(0, I))
            [+ perceptual_weight LPIPS(x, x_hat)] [+ adversarial_weight * -log D(x_hat) (least squares)]
    The adversarial term uses MONAI's ``PatchDiscriminator`` / ``PatchAdversarialLoss`` (least squares)
    once the autoencoder has made ``adversarial_warmup`` optimizer steps; the discriminator has its own
    optimizer (manual optimization, both optimizers saved in every checkpoint). Lightning counts every
    optimizer step in ``global_step``: with the adversarial term active, a batch adds 2 to it (and thus to
    ``max_steps``); the warm-up counts the autoencoder's own steps (``autoencoder_steps``).

    The autoencoder always runs in float32 (``xraydiff.diffusion.latent.Float32Autoencoder``); the discriminator
    follows the trainer's precision. Validation/test log the L1 error and the reconstruction PSNR / SSIM of
    the posterior mean (mean over images; images in [-1, 1], data range 2), synchronised across DDP ranks.

    Shapes: images (B, 1, H, W) in [-1, 1]; latents (B, latent_channels, H / f, W / f), f = 2^(levels - 1).

    Args:
        image_size: (H, W) of the training images (for checks, galleries and the latent shape).
        channels: features per level; 4 levels give the 8x compression of Medfusion's VAE.
        num_res_blocks: residual blocks per level.
        latent_channels: channels of the latent (4 in Medfusion and Rombach et al.'s f = 8 models).
        attention_levels: self-attention per level (default none: the cost grows with H W squared).
        mid_attention: self-attention in the encoder's and decoder's bottleneck (at the latent resolution).
        norm_num_groups: GroupNorm groups.
        kl_weight: beta of the KL term (1e-6 as in Rombach et al.).
        perceptual_weight: weight of MONAI's ``PerceptualLoss`` (0: off). Needs the pretrained weights of
            ``perceptual_network``, downloaded beforehand; a run that cannot load them stops at start.
        perceptual_network: the ``network_type`` of MONAI's ``PerceptualLoss`` (e.g. 'squeeze', 'alex').
        gan: the patch GAN (``AdversarialSpec``): the weight of the generator's adversarial term (0: no
            discriminator), autoencoder steps before the term and the discriminator start, the
            ``PatchDiscriminator``'s width and depth, the discriminator's learning rate.
        learning_rate: Adam learning rate of the autoencoder.
    """

    GROUPS = {"gan": AdversarialSpec}

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 512),
        channels: tuple[int, ...] = (64, 128, 256, 256),
        num_res_blocks: int = 2,
        latent_channels: int = 4,
        attention_levels: tuple[bool, ...] | None = None,
        mid_attention: bool = False,
        norm_num_groups: int = 32,
        kl_weight: float = 1e-6,
        perceptual_weight: float = 0.0,
        perceptual_network: str = "squeeze",
        gan: AdversarialSpec = AdversarialSpec(),
        learning_rate: float = 1e-4,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.init_groups(gan=gan)
        a = self.gan
        adversarial_weight, adversarial_warmup = a.adversarial_weight, a.adversarial_warmup
        self.automatic_optimization = False
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if min(kl_weight, perceptual_weight, adversarial_weight) < 0 or adversarial_warmup < 0:
            raise DataError(
                None, "kl_weight, perceptual_weight, adversarial_weight and adversarial_warmup must be >= 0"
            )
        if attention_levels is not None and len(attention_levels) != len(channels):
            raise DataError(
                None, f"attention_levels needs one entry per level ({len(channels)}), got {attention_levels}"
            )
        self.latent_shape = latent_shape(self.image_size, latent_channels, compression_factor(len(channels)))
        self.autoencoder = Float32Autoencoder(
            autoencoder_kl(latent_channels, channels, num_res_blocks, attention_levels, mid_attention, norm_num_groups)
        )
        self.perceptual = self._perceptual_loss(perceptual_network) if perceptual_weight > 0 else None
        self.discriminator = None
        if adversarial_weight > 0:
            self.discriminator = PatchDiscriminator(
                spatial_dims=2,
                channels=a.discriminator_channels,
                in_channels=1,
                num_layers_d=a.discriminator_layers,
            )
            self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        # The autoencoder's optimizer steps: the adversarial warm-up's clock, saved for exact resume.
        self.register_buffer("autoencoder_steps", torch.zeros((), dtype=torch.long))
        self.metrics = torch.nn.ModuleDict(
            {
                stage: torch.nn.ModuleDict(
                    {
                        "psnr": PeakSignalNoiseRatio(data_range=2.0, dim=(1, 2, 3), reduction="elementwise_mean"),
                        "ssim": StructuralSimilarityIndexMeasure(data_range=2.0),
                    }
                )
                for stage in ("val", "test")
            }
        )

    @staticmethod
    def _perceptual_loss(network: str):
        from monai.losses import PerceptualLoss

        try:
            return PerceptualLoss(spatial_dims=2, network_type=network)
        except Exception as err:  # noqa: BLE001 - missing package, no network, no cached weights
            raise DataError(
                None,
                f"perceptual_weight > 0 needs the pretrained '{network}' weights of MONAI's PerceptualLoss, which "
                f"could not be loaded ({type(err).__name__}: {err}). Download them once with network access "
                "(pip install lpips; they are cached by torch.hub) or set perceptual_weight: 0",
            ) from None

    # ------------------------------------------------------------------------------ the model

    @property
    def adversarial_active(self) -> bool:
        return self.discriminator is not None and int(self.autoencoder_steps) >= self.gan.adversarial_warmup

    def reconstruct(self, images: Tensor) -> Tensor:
        """Decode the posterior mean: the deterministic reconstruction (B, 1, H, W) used for evaluation."""
        z_mu, _ = self.autoencoder.posterior(images)
        return self.autoencoder.decode(z_mu)

    def generator_loss(
        self, images: Tensor, reconstruction: Tensor, z_mu: Tensor, z_sigma: Tensor
    ) -> dict[str, Tensor]:
        """The autoencoder's loss terms; ``loss`` is their weighted sum."""
        loss, l1, kl = autoencoder_loss(reconstruction, images, z_mu, z_sigma, self.hparams.kl_weight)
        terms = {"l1": l1, "kl": kl}
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(reconstruction.float(), images.float())
            loss = loss + self.hparams.perceptual_weight * terms["perceptual"]
        if self.adversarial_active:
            logits = self.discriminator(reconstruction)[-1]
            terms["adversarial"] = self.adversarial(logits, target_is_real=True, for_discriminator=False).float()
            loss = loss + self.gan.adversarial_weight * terms["adversarial"]
        terms["loss"] = loss
        return terms

    def discriminator_loss(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        """Least-squares patch GAN loss of the discriminator: real images 1, reconstructions 0."""
        fake = self.discriminator(reconstruction.detach())[-1]
        real = self.discriminator(images)[-1]
        return (
            0.5
            * (
                self.adversarial(fake, target_is_real=False, for_discriminator=True)
                + self.adversarial(real, target_is_real=True, for_discriminator=True)
            ).float()
        )

    # ------------------------------------------------------------------------------ training

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = self._images(batch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        adversarial = self.adversarial_active  # decided once per batch: both updates see the same phase
        reconstruction, z_mu, z_sigma = self.autoencoder(images)
        terms = self.generator_loss(images, reconstruction, z_mu, z_sigma)
        optimizers[0].zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"])
        optimizers[0].step()
        self.autoencoder_steps += 1
        if adversarial:
            d_loss = self.discriminator_loss(images, reconstruction)
            optimizers[1].zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            optimizers[1].step()
            terms["discriminator"] = d_loss
        loss = terms.pop("loss")
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()})
        self.log("train/loss", loss.detach(), prog_bar=True)

    def configure_optimizers(self):
        autoencoder = torch.optim.Adam(self.autoencoder.parameters(), lr=self.hparams.learning_rate)
        if self.discriminator is None:
            return autoencoder
        discriminator = torch.optim.Adam(self.discriminator.parameters(), lr=self.gan.discriminator_learning_rate)
        return [autoencoder, discriminator]

    # ------------------------------------------------------------------------------ evaluation

    def _evaluate(self, batch: dict, stage: str) -> None:
        images = self._images(batch)
        z_mu, z_sigma = self.autoencoder.posterior(images)
        reconstruction = self.autoencoder.decode(z_mu)
        _, l1, kl = autoencoder_loss(reconstruction, images, z_mu, z_sigma, self.hparams.kl_weight)
        size = images.shape[0]
        metrics = self.metrics[stage]
        metrics["psnr"](reconstruction.clamp(-1, 1), images)
        metrics["ssim"](reconstruction.clamp(-1, 1), images)
        self.log(f"{stage}/l1", l1, prog_bar=True, sync_dist=True, batch_size=size)
        self.log(f"{stage}/kl", kl, sync_dist=True, batch_size=size)
        self.log(f"{stage}/psnr", metrics["psnr"], prog_bar=True, batch_size=size)
        self.log(f"{stage}/ssim", metrics["ssim"], prog_bar=True, batch_size=size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ------------------------------------------------------------------------------ galleries

    def gallery(self, num, generator, sampler, steps, reference: Tensor | None) -> Tensor:
        """Validation images beside their reconstructions: (B, 2, H, W)."""
        if reference is None:
            raise DataError(None, "the autoencoder's gallery shows reconstructions of validation images: none found")
        return torch.stack([reference[:, 0], self.reconstruct(reference.float())[:, 0].clamp(-1, 1)], dim=1)

    def sampling_description(self, sampler, steps):
        raise DataError(None, "a LatentAutoencoder does not generate: sample from a LatentDiffusion checkpoint")


def read_first_stage(path: str | None) -> tuple[dict, dict]:
    """(architecture, weights) of the ``LatentAutoencoder`` checkpoint ``path``; DataError naming the file.

    Read from the checkpoint's dictionaries, not by instantiating the autoencoder: no discriminator or
    perceptual network is built, and Lightning's hyperparameter capture stays with the model that loads it."""
    if path is None:
        raise DataError(None, "a new LatentDiffusion needs --model.init_args.autoencoder_ckpt PATH")
    model_class(path, expected=LatentAutoencoder)
    checkpoint = read_checkpoint(path)
    saved = checkpoint.get("hyper_parameters", {})
    defaults = inspect.signature(LatentAutoencoder.__init__).parameters
    architecture = {k: saved.get(k, defaults[k].default) for k in FIRST_STAGE_ARCHITECTURE}
    prefix = "autoencoder."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return architecture, weights
