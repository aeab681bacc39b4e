"""The sampler registry (``xraydiff.diffusion.choices``) is the one declaration of the reverse processes: no other
module names a sampler, and a sampler registered there reaches every command, study and model with no other edit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xraydiff.diffusion import choices

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_MODULE = ROOT / "xraydiff" / "diffusion" / "choices.py"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sampler_literals(path: Path) -> list[str]:
    """'file:line name' of every string constant of ``path`` (docstrings aside) that is a registered sampler."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.value}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and id(node) not in skip and node.value in choices.REGISTRY
    ]


def test_sampler_names_are_literals_only_in_the_registry():
    sources = [
        p
        for p in ROOT.rglob("*.py")
        if not {".venv", "tests", "build", ".git"} & set(p.relative_to(ROOT).parts) and p != REGISTRY_MODULE
    ]
    assert len(sources) > 50
    found = [hit for path in sources for hit in sampler_literals(path)]
    assert not found, "sampler names outside xraydiff/diffusion/choices.py:\n" + "\n".join(found)


def test_the_scan_finds_a_name(tmp_path):
    probe = ROOT / "tests" / "_probe_sampler_literal.py"
    probe.write_text('"""ddim"""\nx = "ddim"\n')
    try:
        assert sampler_literals(probe) == ["tests/_probe_sampler_literal.py:2 ddim"]
    finally:
        probe.unlink()


def test_the_derived_lists_follow_the_registry():
    assert choices.SAMPLERS == tuple(n for n, s in choices.REGISTRY.items() if "image" in s.models)
    assert set(choices.ONE_CALL) <= set(choices.LANDMARK_SAMPLERS) and not set(choices.ONE_CALL) & set(choices.SAMPLERS)
    assert all(choices.spec(n).grid for n in choices.STEP_SAMPLERS)
    assert choices.DEFAULT_SAMPLER in choices.STEP_SAMPLERS
    assert choices.DEFAULT_LANDMARK_SAMPLER in choices.LANDMARK_SAMPLERS


# Registers DPM-Solver++(3M) (a diffusers scheduler none of the project's modules names), then reads every help
# page and schema that offers samplers, and samples with it on a tiny untrained paired DDPM and landmark model.
PROBE = """
import json, sys
from xraydiff.diffusion import choices
choices.register("dpmpp_3m_probe", choices.SamplerSpec(
    "solver", "DPM-Solver++(3M) k={k}",
    solver=("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3})))
import cli
from experiments import study_help
pages = {}
for words in (["sample"], ["blend"], ["acceptance", "rate"]):
    pages[" ".join(words)] = cli.parse([*words, "--help"]) if False else cli.COMMANDS[tuple(words)][0]().format_help()
for name in ("landmarks", "blend", "augment"):
    pages["experiment " + name] = study_help(name)
import torch
from lightning_modules.paired_ddpm import PairedDDPM
from lightning_modules.landmark_diffusion import LandmarkDiffusion
torch.manual_seed(0)
ddpm = PairedDDPM(image_size=(16, 16), network={"channels": (8, 8), "norm_num_groups": 4, "num_res_blocks": 1},
                  schedule={"num_train_timesteps": 50}, sampling={"sampler": "dpmpp_3m_probe", "sampling_steps": 5})
out = ddpm.generate(2, torch.Generator().manual_seed(0))
landmark = LandmarkDiffusion(
    num_landmarks=2, image_size=(16, 16), schedule={"num_train_timesteps": 50},
    network={"channels": (8, 8), "attention_levels": (False, False), "norm_num_groups": 4, "num_head_channels": 4},
    inference={"sampler": "dpmpp_3m_probe", "sampling_steps": 4})
calls = landmark.inference_settings()["steps"]
print(json.dumps({"pages": pages, "finite": bool(torch.isfinite(out[0]).all()), "landmark_calls": calls}))
"""


def test_a_registered_sampler_reaches_every_command_study_and_model():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for page, text in report["pages"].items():
        assert "dpmpp_3m_probe" in text, page
    assert report["finite"] and report["landmark_calls"] == 4


@pytest.mark.parametrize("name", list(choices.REGISTRY))
def test_every_registered_sampler_has_a_working_spec(name):
    entry = choices.spec(name)
    assert entry.models and set(entry.models) <= {"image", "landmark"}
    assert (entry.solver is not None) == (entry.rule == "solver")
    assert entry.one_call == (entry.rule == "one_call") and (not entry.one_call or not entry.grid)
