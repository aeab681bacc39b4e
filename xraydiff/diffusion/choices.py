"""The named choices of the diffusion commands, in a module that imports nothing heavy (the command line's
choices and help read it without importing torch or MONAI): the reverse processes every generator samples
with, and how a latent blend is composited.

``ddpm`` is the full chain of T posterior steps, ``ddim`` the DDIM posterior step (Song et al., eq. 12) on k
timesteps, and the rest diffusers' multistep solvers driven by the engine's x0 predictions
(``xraydiff.diffusion.engine``): DPM-Solver++(2M) and its SDE variant (Lu et al. 2022) and UniPC (Zhao et al.
2023).
"""

from __future__ import annotations

from typing import Literal, get_args

Sampler = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
# the samplers on a grid of k steps, of which a blend runs the tail (the full chain has no such grid)
STEP_SAMPLERS = tuple(name for name in SAMPLERS if name != "ddpm")
StepSampler = Literal[STEP_SAMPLERS]  # type: ignore[valid-type]
# Landmark diffusion's inference modes: 'single' one x0 prediction at t = T - 1, 'ddpm' the T-step chain, 'ddim'
# k steps, 'empty' the diagnostic call at t = 0 on the empty heatmap
LandmarkSampler = Literal["single", "ddpm", "ddim", "empty"]
ONE_CALL: tuple[LandmarkSampler, ...] = ("single", "empty")  # decoded from the logits of their one call
# diffusers scheduler class and options of each solver; all are given the engine's x0 (prediction 'sample')
SOLVERS = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
}
# latent: the decoded blend (Lim et al.); pixel: it inside the feathered region, the partner outside;
# copy_paste: the guide's pixels pasted into the partner, no diffusion (a control)
COMPOSITES = ("latent", "pixel", "copy_paste")
