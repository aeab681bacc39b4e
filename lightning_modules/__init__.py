"""LightningModules, one per model."""

from lightning_modules.generative import PairedGenerativeModule, load_model
from lightning_modules.landmark_diffusion import LandmarkDiffusion
from lightning_modules.localizer import LandmarkLocalizer
from lightning_modules.paired_ddpm import PairedDDPM
from lightning_modules.vae import PairedVAE

__all__ = ["LandmarkDiffusion", "LandmarkLocalizer", "PairedDDPM", "PairedGenerativeModule", "PairedVAE", "load_model"]
