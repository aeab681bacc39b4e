"""The one registry of reverse processes, and the other named choices of the diffusion commands, in a module that
imports nothing heavy (the command line's choices and help read it without importing torch or MONAI).

A sampler is declared once, in ``REGISTRY``: its step rule, whether it draws noise, whether it runs on a grid of
k steps, and which models it serves. Every list of names, every ``--help`` choice, study schema and check is
derived from it, so a sampler registered here (``register``, before the models and commands are imported) is
offered by ``sample``, ``blend``, ``acceptance rate``, the studies and the landmark model with no other edit.

``ddpm`` is the full chain of T posterior steps, ``ddim`` the DDIM posterior step (Song et al., eq. 12) on k
timesteps, the solvers diffusers' multistep schedulers driven by the engine's x0 predictions
(``xraydiff.diffusion.engine``): DPM-Solver++(2M) and its SDE variant (Lu et al. 2022) and UniPC (Zhao et al.
2023). ``single`` and ``empty`` are landmark diffusion's one-call decodings (the landmark-diffusion paper).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

# the models a sampler serves: image generators (paired DDPM, LDM, blending) and landmark diffusion
Model = Literal["image", "landmark"]
BOTH: tuple[Model, ...] = ("image", "landmark")


@dataclass(frozen=True)
class SamplerSpec:
    """What the engine needs to know of a sampler.

    rule: 'posterior' (``posterior_step``, Song et al. eq. 12), 'solver' (a diffusers scheduler, ``solver``) or
        'one_call' (landmark diffusion: one x0 prediction, no chain).
    grid: runs on a grid of k = ``steps`` timesteps (the full chain and the one-call modes do not).
    noise: 'always' a draw every step, 'eta' when DDIM's eta > 0, 'never'.
    eta: the fixed eta of a posterior rule (DDPM: 1); None: the model's ``ddim_eta``.
    solver: the diffusers class name and its options (all are fed x0: prediction 'sample').
    t_start: for 'one_call', the timestep of the call: 'end' (T - 1) or 'zero'.
    models: which models it serves.
    label: a table's name for it (``{k}``: its steps).
    """

    rule: Literal["posterior", "solver", "one_call"]
    label: str
    grid: bool = True
    noise: Literal["always", "eta", "never"] = "never"
    eta: float | None = None
    solver: tuple[str, dict[str, Any]] | None = None
    t_start: Literal["end", "zero"] = "end"
    models: tuple[Model, ...] = BOTH

    @property
    def one_call(self) -> bool:
        return self.rule == "one_call"


REGISTRY: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec("posterior", "multi-step (T steps)", grid=False, noise="always", eta=1.0),
    "ddim": SamplerSpec("posterior", "DDIM k={k}", noise="eta"),
    "dpmpp_2m": SamplerSpec(
        "solver", "DPM-Solver++(2M) k={k}", solver=("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"})
    ),
    "dpmpp_2m_sde": SamplerSpec(
        "solver",
        "SDE-DPM-Solver++(2M) k={k}",
        noise="always",
        solver=("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ),
    "unipc": SamplerSpec("solver", "UniPC k={k}", solver=("UniPCMultistepScheduler", {"solver_type": "bh2"})),
    # landmark diffusion's one-call decodings: x0 from x_{T-1}, and the diagnostic call at t = 0 on the empty heatmap
    "single": SamplerSpec("one_call", "single-step (x0 from x_T)", grid=False, models=("landmark",)),
    "empty": SamplerSpec(
        "one_call",
        "diagnostic: one call at t = 0 on the empty heatmap",
        grid=False,
        t_start="zero",
        models=("landmark",),
    ),  # fmt: skip
}
DEFAULT_SAMPLER = "ddim"  # of the image generators and blending (Lim et al.)
FULL_CHAIN = "ddpm"  # the T-step chain of Ho et al.
SINGLE_CALL = "single"  # landmark diffusion's x0 from x_{T-1}
DEFAULT_LANDMARK_SAMPLER = FULL_CHAIN  # the landmark-diffusion paper's
FIT_VALIDATION_SAMPLER = SINGLE_CALL  # landmark diffusion's cheap check during fit
SOLVER_ORDER = 2  # of every multistep solver (2M, bh2)


def names(model: Model, grid: bool | None = None) -> tuple[str, ...]:
    """The samplers serving ``model`` (only those on a k-step grid with ``grid``), in registry order."""
    return tuple(n for n, s in REGISTRY.items() if model in s.models and (grid is None or s.grid == grid))


def spec(name: str) -> SamplerSpec:
    """The registry entry of ``name`` (KeyError for an unknown one: check names with ``names`` first)."""
    return REGISTRY[name]


def uses_eta(name: str) -> bool:
    """Whether the sampler ``name`` steps with the model's DDIM eta (False for names the registry lacks)."""
    entry = REGISTRY.get(name)
    return entry is not None and entry.rule == "posterior" and entry.eta is None


def _derive() -> None:
    """The module's derived names (the Literal types signatures and schemas are read with)."""
    module = sys.modules[__name__]
    module.SAMPLERS = names("image")
    module.STEP_SAMPLERS = names("image", grid=True)
    module.LANDMARK_SAMPLERS = names("landmark")
    module.ONE_CALL = tuple(n for n, s in REGISTRY.items() if s.one_call)
    module.Sampler = Literal[module.SAMPLERS]
    module.StepSampler = Literal[module.STEP_SAMPLERS]
    module.LandmarkSampler = Literal[module.LANDMARK_SAMPLERS]


def register(name: str, entry: SamplerSpec) -> None:
    """Add a sampler. Call before the models and commands are imported: their choices are read at import."""
    REGISTRY[name] = entry
    _derive()


SAMPLERS: tuple[str, ...]
STEP_SAMPLERS: tuple[str, ...]  # the samplers on a grid of k steps, of which a blend runs the tail
LANDMARK_SAMPLERS: tuple[str, ...]
ONE_CALL: tuple[str, ...]  # decoded from the logits of their one call
Sampler: Any
StepSampler: Any
LandmarkSampler: Any
_derive()

# latent: the decoded blend (Lim et al.); pixel: it inside the feathered region, the partner outside;
# copy_paste: the guide's pixels pasted into the partner, no diffusion (a control)
COMPOSITES = ("latent", "pixel", "copy_paste")
