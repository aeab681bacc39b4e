"""Diffusion maths: training objectives, the one reverse engine, latent diffusion (first stage),
anatomy-guided latent blending and conditional landmark diffusion."""
