"""precision: auto resolves to bf16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest
import torch

from xraydiff import precision


@pytest.mark.parametrize("amx,avx512_bf16,expected", [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"),
                                                      (False, False, "32-true")])  # fmt: skip
def test_auto_on_cpu_follows_native_bf16(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("32-true", "cpu") == "32-true"  # an explicit choice stays
    assert precision.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_gpu_follows_the_gpu(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: not bf16)  # the CPU does not decide
    assert precision.resolve_precision("auto", "gpu") == ("bf16-mixed" if bf16 else "32-true")


def test_the_cli_resolves_auto_once_and_says_so(cli, tmp_path, monkeypatch):
    from tiny import DDPM

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    code, out, err = cli(
        "fit", *DDPM, "--trainer.precision", "auto", "--trainer.max_steps", "1",
        "--trainer.default_root_dir", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    assert out.count("precision auto -> 32-true (CPU") == 1
    (config,) = (tmp_path / "run").rglob("config.yaml")
    assert "precision: auto" in config.read_text()  # the saved config stays portable
