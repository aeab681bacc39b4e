"""The one validator of study configs: types, constraints, nested and named option sets, file and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest

from experiments.schema import Named, option, read_study_config
from xraydiff.errors import DataError


@dataclass
class Model:
    config: list[str] = option(nonempty=True, file=True)
    args: list[Any] = option(default_factory=list, pairs=True)


@dataclass(kw_only=True)
class Variant(Named):
    name: str = option(pattern=r"[a-z]+")
    strength: float | None = option(None, above=0, max=1)


@dataclass
class Schema:
    model: Model
    steps: int = option(min=1)
    sizes: list[int] = option(default_factory=lambda: [1], distinct=True, above=0)
    share: float | None = option(0.5, min=0, below=1)
    mode: Literal["fast", "slow"] = "fast"
    ckpt: dict[str, str] | str = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)

    retired: ClassVar[dict[str, str]] = {"old_steps": "is now 'steps'"}


def _read(tmp_path, body: str):
    path = tmp_path / "study.yaml"
    path.write_text("experiment:\n" + body)
    return read_study_config(path, Schema)[0]


GOOD = "  model: {config: study.yaml, args: [--a, 1]}\n  steps: 3\n"


def test_a_good_config_is_read_with_types_and_named_variants(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _read(tmp_path, GOOD + "  sizes: 4\n  share: 0\n  ckpt: a.ckpt\n  variants:\n    - {name: paper}\n")
    assert config.model == Model(["study.yaml"], ["--a", 1]) and config.steps == 3
    assert config.sizes == [4] and config.share == 0.0 and isinstance(config.share, float)
    assert config.ckpt == "a.ckpt" and config.mode == "fast"
    assert config.variants == [{"name": "paper"}]  # only what the variant names


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("  steps: 3\n", 1, "experiment.model is required"),
        (GOOD + "  step: 3\n", 4, "unknown key experiment.step (known: "),
        (GOOD + "  old_steps: 3\n", 4, "experiment.old_steps is now 'steps'"),
        (GOOD.replace("steps: 3", "steps: 0"), 3, "experiment.steps must be at least 1, got 0"),
        (GOOD.replace("steps: 3", "steps: three"), 3, "experiment.steps must be int, got 'three'"),
        (GOOD.replace("steps: 3", "steps: true"), 3, "experiment.steps must be int, got True"),
        (GOOD + "  sizes: [2, 2]\n", 4, "experiment.sizes must not repeat a value"),
        (GOOD + "  share: 1\n", 4, "experiment.share must be in [0, 1), got 1"),
        (GOOD + "  mode: medium\n", 4, "experiment.mode must be one of ['fast', 'slow'], got 'medium'"),
        (GOOD.replace("study.yaml,", "nope.yaml,"), 2, "experiment.model.config[0]: nope.yaml not found"),
        (GOOD.replace("[--a, 1]", "[--a]"), 2, "experiment.model.args must be pairs of option and value"),
        (
            GOOD + "  variants:\n    - {name: a}\n    - {name: b, strength: 2}\n",
            6,
            "variants[1].strength must be in (0, 1]",
        ),
        (GOOD + "  variants:\n    - {strength: 0.5}\n", 5, "experiment.variants[0].name is required"),
        (GOOD + "  variants:\n    - {name: A1}\n", 5, "experiment.variants[0].name must match"),
    ],
)
def test_bad_configs_name_file_line_and_key(tmp_path, monkeypatch, body, line, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        _read(tmp_path, body)
    assert str(error.value).startswith(f"{tmp_path / 'study.yaml'}:{line}: ") and message in str(error.value)
