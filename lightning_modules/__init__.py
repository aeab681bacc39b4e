"""LightningModules, one per model."""

from lightning_modules.autoencoder import LatentAutoencoder
from lightning_modules.generative import GenerativeModule, PairedGenerativeModule, load_model
from lightning_modules.landmark_diffusion import LandmarkDiffusion
from lightning_modules.latent_diffusion import LatentDiffusion
from lightning_modules.localizer import LandmarkLocalizer
from lightning_modules.paired_ddpm import PairedDDPM
from lightning_modules.segmenter import Segmenter
from lightning_modules.vae import PairedVAE

__all__ = [
    "GenerativeModule",
    "LandmarkDiffusion",
    "LandmarkLocalizer",
    "LatentAutoencoder",
    "LatentDiffusion",
    "PairedDDPM",
    "PairedGenerativeModule",
    "PairedVAE",
    "Segmenter",
    "load_model",
]
