"""Latent diffusion maths (Rombach et al. 2022), framework-free: the first-stage autoencoder's losses,
float32 encode / decode, and the latent scale factor.

The autoencoder is MONAI's ``AutoencoderKL``; its encoder gives a diagonal Gaussian posterior
q(z | x) = N(z_mu, diag(z_sigma^2)) over a latent of ``latent_channels`` x H/f x W/f, f = 2^(levels - 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL
from torch import Tensor, nn

from xraydiff.diffusion import gaussian_kl
from xraydiff.errors import DataError


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
