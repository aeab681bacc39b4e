"""Latent diffusion maths (Rombach et al. 2022), framework-free: the first-stage autoencoder (built from
its recorded architecture), its losses, float32 encode / decode, the latent scale factor and a cache of the
training posteriors.

The autoencoder is MONAI's ``AutoencoderKL``; its encoder gives a diagonal Gaussian posterior
q(z | x) = N(z_mu, diag(z_sigma^2)) over a latent of ``latent_channels`` x H/f x W/f, f = 2^(levels - 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL
from torch import Tensor, nn

from xraydiff.diffusion.objectives import gaussian_kl
from xraydiff.errors import DataError

# The hyperparameters of a first stage that fix its architecture (an LDM records them in its own).
FIRST_STAGE_ARCHITECTURE = ("image_size", "channels", "num_res_blocks", "latent_channels", "attention_levels",
                            "mid_attention", "norm_num_groups")  # fmt: skip


def compression_factor(channels_per_level: int) -> int:
    """Spatial downsampling f of an ``AutoencoderKL`` with this many levels: one halving between levels."""
    return 2 ** (channels_per_level - 1)


def latent_shape(image_size: tuple[int, int], latent_channels: int, factor: int) -> tuple[int, int, int]:
    """(C, H / f, W / f) of the latent of an (H, W) image; DataError when f does not divide H and W."""
    height, width = image_size
    if height % factor or width % factor:
        raise DataError(None, f"image size {height} x {width} (H x W) is not divisible by the compression {factor}")
    return latent_channels, height // factor, width // factor


def autoencoder_kl(
    latent_channels: int,
    channels: tuple[int, ...],
    num_res_blocks: int,
    attention_levels: tuple[bool, ...] | None,
    mid_attention: bool,
    norm_num_groups: int,
) -> AutoencoderKL:
    """MONAI ``AutoencoderKL`` for 1-channel 2-D radiographs (the first stage of Rombach et al., sect. 3.1)."""
    return AutoencoderKL(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(channels),
        num_res_blocks=num_res_blocks,
        attention_levels=tuple(attention_levels or (False,) * len(channels)),
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        with_encoder_nonlocal_attn=mid_attention,
        with_decoder_nonlocal_attn=mid_attention,
        include_fc=False,
    )


class Float32Autoencoder(nn.Module):
    """Encode / decode of an ``AutoencoderKL`` in float32 with autocast disabled, whatever the caller's precision.

    The first stage's activations overflow in half precision (a known failure of latent diffusion
    under fp16), and a bf16 latent would quantise the very signal the denoiser is trained on.

    Shapes: images (B, 1, H, W) in [-1, 1]; latents (B, C, H / f, W / f).
    """

    def __init__(self, network: AutoencoderKL):
        super().__init__()
        self.network = network

    def _no_autocast(self, x: Tensor):
        return torch.autocast(device_type=x.device.type, enabled=False)

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(z_mu, z_sigma) of q(z | x)."""
        with self._no_autocast(images):
            return self.network.encode(images.float())

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw z = z_mu + z_sigma * eps from q(z | x) (Kingma & Welling, eq. 10), eps from ``generator``."""
        z_mu, z_sigma = self.posterior(images)
        eps = torch.randn(z_mu.shape, generator=generator, device=z_mu.device)
        return z_mu + z_sigma * eps

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, 1, H, W) from latents, in float32."""
        with self._no_autocast(latents):
            return self.network.decode(latents.float())

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, z_mu, z_sigma): decode a posterior draw, as ``AutoencoderKL.forward`` does."""
        z_mu, z_sigma = self.posterior(images)
        eps = torch.randn(z_mu.shape, generator=generator, device=z_mu.device)
        return self.decode(z_mu + z_sigma * eps), z_mu, z_sigma


def autoencoder_loss(
    reconstruction: Tensor, images: Tensor, z_mu: Tensor, z_sigma: Tensor, kl_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, L1, KL): L = |x - x_hat|_1 / D + beta KL(q(z | x) || N(0, I)), the first-stage objective of
    Rombach et al. (sect. 3.1, KL-reg.) without the perceptual and adversarial terms.

    L1 is the mean absolute error per pixel; KL is summed over the latent and averaged over the batch,
    the convention under which beta is ~1e-6 (Rombach et al.; MONAI's tutorials).
    """
    l1 = F.l1_loss(reconstruction.float(), images.float())
    kl = gaussian_kl(z_mu, 2.0 * torch.log(z_sigma.float().clamp_min(1e-12))).mean()
    return l1 + kl_weight * kl, l1, kl


def latent_moments(z_mu: Tensor, z_sigma: Tensor) -> Tensor:
    """(count, sum E z, sum E z^2) over all latent elements of posteriors q(z | x) = N(z_mu, z_sigma^2),
    float64: E z = z_mu, E z^2 = z_mu^2 + z_sigma^2. Exact moments of the latents the denoiser is trained
    on, without drawing any; ranks add them up before ``scale_factor_from_moments``."""
    mu, sigma = z_mu.detach().double(), z_sigma.detach().double()
    count = torch.tensor(float(mu.numel()), dtype=torch.float64, device=mu.device)
    return torch.stack([count, mu.sum(), (mu**2 + sigma**2).sum()])


def scale_factor_from_moments(moments: Tensor) -> float:
    """1 / std of the latents from summed ``latent_moments`` (Rombach et al., appendix G: the latents
    are rescaled to unit variance before diffusion); the unbiased variance n / (n - 1) (E z^2 - (E z)^2)."""
    count, total, squares = (float(v) for v in moments)
    if count < 2:
        raise DataError(None, "the latent scale factor needs at least two latent values")
    variance = (squares - total * total / count) / (count - 1)
    if not variance > 0:
        raise DataError(None, f"the training latents have no spread (variance {variance}): is the autoencoder trained?")
    return float(variance**-0.5)


def first_stage_from_architecture(architecture: dict) -> Float32Autoencoder:
    """The frozen-to-be first stage of an LDM from its recorded ``FIRST_STAGE_ARCHITECTURE``."""
    return Float32Autoencoder(
        autoencoder_kl(
            architecture["latent_channels"],
            architecture["channels"],
            architecture["num_res_blocks"],
            architecture["attention_levels"],
            architecture["mid_attention"],
            architecture["norm_num_groups"],
        )
    )


def check_first_stage(
    architecture: dict, image_size: tuple[int, int], latent_channels: int, source: str
) -> tuple[int, int, int]:
    """The latent shape (C, h, w) of the LDM's (H, W) images; DataError naming ``source`` (the autoencoder's
    file) when the LDM's latent channels or image size do not fit the autoencoder's."""
    if latent_channels != architecture["latent_channels"]:
        raise DataError(
            source,
            f"the autoencoder's latents have {architecture['latent_channels']} channels, "
            f"the LDM's latent_channels is {latent_channels}",
        )
    factor = compression_factor(len(architecture["channels"]))
    trained = latent_shape(tuple(architecture["image_size"]), latent_channels, factor)
    try:
        shape = latent_shape(image_size, latent_channels, factor)
    except DataError as err:
        raise DataError(source, f"{err.reason} of the autoencoder") from None
    if shape != trained:
        raise DataError(
            source,
            f"the autoencoder was trained on {tuple(architecture['image_size'])} images (latent {trained}); "
            f"the LDM's image_size {tuple(image_size)} gives latents {shape}",
        )
    return shape


@torch.no_grad()
def posterior_moments(first_stage: Float32Autoencoder, batches: Iterable[Tensor], quota: int) -> Tensor:
    """Summed ``latent_moments`` of the posteriors of the first ``quota`` images of ``batches`` (B, 1, H, W)."""
    moments, seen = None, 0
    for images in batches:
        z_mu, z_sigma = first_stage.posterior(images[: quota - seen])
        part = latent_moments(z_mu, z_sigma)
        moments = part if moments is None else moments + part
        seen += min(images.shape[0], quota - seen)
        if seen >= quota:
            break
    if moments is None:
        raise DataError(None, "no training images to estimate the latent scale factor from")
    return moments


class PosteriorCache:
    """The posteriors q(z | x) = N(z_mu, z_sigma^2) (N, C, h, w) of a training set, by dataset index: a step
    draws z ~ q(z | x) from them instead of running the encoder (the same latent distribution)."""

    def __init__(self, z_mu: Tensor, z_sigma: Tensor):
        self.z_mu, self.z_sigma = z_mu, z_sigma

    def __len__(self) -> int:
        return len(self.z_mu)

    @classmethod
    @torch.no_grad()
    def encode(
        cls, first_stage: Float32Autoencoder, dataset: Sequence[dict], batch_size: int, device: torch.device
    ) -> PosteriorCache:
        """Encode every item of ``dataset`` (dicts with 'image' and their own 'index') in fixed batches in
        index order, so that a resumed run caches the very same values."""
        mus, sigmas = [], []
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            if any(item["index"] != start + k for k, item in enumerate(items)):
                raise DataError(None, "cache_latents needs a training set whose items carry their own index")
            z_mu, z_sigma = first_stage.posterior(torch.stack([item["image"] for item in items]).float().to(device))
            mus.append(z_mu)
            sigmas.append(z_sigma)
        return cls(torch.cat(mus), torch.cat(sigmas))

    def draw(self, index: Tensor) -> Tensor:
        """z = z_mu + z_sigma eps (unscaled) of the items ``index`` (B,), eps from the global random state as
        ``Float32Autoencoder.encode`` draws it."""
        index = index.to(self.z_mu.device)
        z_mu, z_sigma = self.z_mu[index], self.z_sigma[index]
        return z_mu + z_sigma * torch.randn(z_mu.shape, device=z_mu.device)
