"""Shared fixtures: the real data beside the repository, and a helper to run the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test workers share the cores: one compute thread each (inherited by the CLI
    # subprocesses and DDP ranks the tests start) instead of every worker spinning on all cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real data not found at {SHARED_DATA} (see docs/data.md, 'Real data for development')",
)


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Run ``xraydiff <args>`` in this process; return (exit code, stdout, stderr). Without ``capsys``
    (module-scoped fixtures cannot use the function-scoped one) stdout and stderr come back empty."""
    from cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = (capsys or _NoCapture()).readouterr()
    return code, captured.out, captured.err


def acceptance_outputs(root, data: list) -> None:
    """``acceptance fit`` (annotations only) to ``root/stats.json`` and ``acceptance render`` of the
    test split to ``root/gt`` on the data of ``data`` (config arguments), for module fixtures."""
    code, _, err = run_cli(["acceptance", "fit", *data, "--annotations_only", "--out", root / "stats.json"])
    assert code == 0, err
    code, _, err = run_cli(["acceptance", "render", *data, "--split", "test", "--out", root / "gt"])
    assert code == 0, err


@pytest.fixture
def cli(capsys):
    return lambda *args: run_cli(list(args), capsys)


class _NoCapture:
    """``run_cli``'s stand-in for capsys when none is given."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})()


@pytest.fixture(scope="module")
def autoencoder_checkpoint(tmp_path_factory):
    """A tiny LatentAutoencoder trained on phantom jaws (``tiny.AUTOENCODER``), once per test module."""
    from tiny import AUTOENCODER

    root = tmp_path_factory.mktemp("autoencoder")
    code, _, err = run_cli(["fit", *AUTOENCODER, "--trainer.default_root_dir", root, "--trainer.max_epochs", "8"])
    assert code == 0, err
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ldm_checkpoint(tmp_path_factory, autoencoder_checkpoint):
    """A tiny LatentDiffusion on that autoencoder (``tiny.LDM``), once per test module."""
    from tiny import LDM

    root = tmp_path_factory.mktemp("ldm")
    args = ["fit", *LDM, "--model.init_args.autoencoder_ckpt", autoencoder_checkpoint, "--trainer.max_epochs", "3"]
    code, _, err = run_cli([*args, "--trainer.default_root_dir", root])
    assert code == 0, err
    return root / "checkpoints" / "last.ckpt"
