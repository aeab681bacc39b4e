"""Every shipped config parses against the current code: a renamed argument cannot silently break a recipe.
Config errors name the file, the line and the nearest valid key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from commands.parsing import BASE, compose_configs, config_bases, expand_bases
from experiments.augment import load_study_config
from experiments.blend import BlendStudy, load_blend_study_config
from experiments.landmarks import LandmarkStudy, load_landmark_study_config
from experiments.schema import merged

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def composed(path: Path) -> dict:
    """A config with its bases under it, as the parser composes them; study configs as their reader merges them."""
    if "experiment" in yaml.safe_load(path.read_text()):
        document: dict = {}
        for layer in [*config_bases(path), path]:
            document = merged(document, yaml.safe_load(layer.read_text()))
        document.pop(BASE, None)
        return document
    return compose_configs([path])


def kind(path: str) -> str:
    document = composed(REPO / path)
    if "experiment" in document:
        if "segmenter" in document["experiment"]:
            return "blend study"
        return "landmark study" if "modes" in document["experiment"] else "study"
    if "model" in document:
        return "lightning"
    return "data" if set(document) == {"data"} else "fragment"


@pytest.mark.parametrize("path", CONFIGS)
def test_config_parses(cli, path, monkeypatch):
    monkeypatch.chdir(REPO)
    if kind(path) == "study":
        study = load_study_config(REPO / path)
        subconfigs = [study.localizer, *study.generators.values()]
        for spec in subconfigs:
            code, _, err = cli("fit", *(a for c in spec.config for a in ("--config", c)), *spec.args, "--print_config")
            assert code == 0, err[-2000:]
        return
    if kind(path) == "blend study":
        study = load_blend_study_config(REPO / path)
        for spec in (study.autoencoder, study.ldm, study.segmenter):
            if spec is None or not spec.config:  # a given checkpoint, no config to train it
                continue
            args = [a for c in spec.config for a in ("--config", c)] + spec.args + BlendStudy.data_args(study.data)
            code, _, err = cli("fit", *args, "--print_config")
            assert code == 0, err[-2000:]
        return
    if kind(path) == "landmark study":
        study = load_landmark_study_config(REPO / path)
        args = [a for c in study.config for a in ("--config", c)] + study.args + LandmarkStudy.data_args(study.data)
        code, _, err = cli("fit", *args, "--print_config")
        assert code == 0, err[-2000:]
        return
    if kind(path) == "data":
        code, _, err = cli("data", "summary", "--config", path, "--out", "unused", "--print_config")
    elif kind(path) == "lightning":
        code, _, err = cli("fit", "--config", path, "--print_config")
    else:  # trainer fragments are used on top of a full config
        code, _, err = cli("fit", "--config", "configs/demo/hand_ddpm.yaml", "--config", path, "--print_config")
    assert code == 0, err[-2000:]


def test_a_renamed_argument_is_caught(cli, tmp_path):
    config = yaml.safe_load((REPO / "configs/demo/hand_ddpm.yaml").read_text())
    config["base"] = str(REPO / "configs/demo" / config["base"])
    network = config["model"]["init_args"]["network"]
    network["num_res_block"] = network.pop("num_res_blocks")
    config["model"]["init_args"]["heatmap_sigm"] = 1.5
    path = tmp_path / "renamed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    lines = path.read_text().splitlines()
    line = next(k for k, text in enumerate(lines, 1) if "num_res_block:" in text)
    code, _, err = cli("fit", "--config", path, "--print_config")
    assert code != 0
    assert f"{path}:{line}: model.init_args.network.num_res_block: PairedDDPM's network has no option" in err
    assert "did you mean 'num_res_blocks'?" in err
    del network["num_res_block"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    line = next(k for k, text in enumerate(path.read_text().splitlines(), 1) if "heatmap_sigm:" in text)
    code, _, err = cli("fit", "--config", path, "--print_config")
    assert f"{path}:{line}: model.init_args.heatmap_sigm: PairedDDPM has no parameter 'heatmap_sigm'" in err
    assert "did you mean 'heatmap_sigma'?" in err


def test_a_yaml_syntax_error_names_file_and_line(cli, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  class_path: lightning_modules.PairedDDPM\n  init_args: {image_size: [64, 64\n")
    code, _, err = cli("fit", "--config", path)
    assert code != 0 and f"{path}:4: invalid YAML" in err


# A model config holds what the model trains with (size, batch, augmentation); the dataset it reads (root,
# layout, split fractions) comes from configs/data/, given first: xraydiff fit --config DATA --config MODEL.
DATASETS = {"ceph": "configs/data/isbi2015.yaml", "panoramic": "configs/data/panoramic.yaml",
            "hand": "configs/data/hand_dha.yaml"}  # fmt: skip
IDENTITY = {"root", "annotations", "split_dir", "image_dir", "mask_dir", "ground_truth", "test_fraction",
            "val_fraction", "unlabelled_fraction", "synthesis_fraction"}  # fmt: skip


@pytest.mark.parametrize("anatomy", sorted(DATASETS))
def test_model_configs_compose_with_their_dataset_config(cli, anatomy, monkeypatch):
    monkeypatch.chdir(REPO)
    dataset = yaml.safe_load((REPO / DATASETS[anatomy]).read_text())["data"]["init_args"]
    for path in sorted((REPO / "configs" / anatomy).glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        if "model" not in document:
            continue
        model_data = (document.get("data") or {}).get("init_args") or {}
        assert not IDENTITY & set(model_data), f"{path}: the dataset's keys belong in {DATASETS[anatomy]}"
        code, out, err = cli("fit", "--config", DATASETS[anatomy], "--config", path, "--print_config")
        assert code == 0, err[-2000:]
        composed = yaml.safe_load(out)["data"]["init_args"]
        assert composed["root"] == dataset["root"], path  # from the dataset's config
        for key, value in model_data.items():  # the model's own settings win
            assert composed[key] == value, (path, key)


# ------------------------------------------------------------------------------------- configs as deltas


def leaves(document, key=()):
    """(key path, value) of every value a later config replaces whole: lists, and an option's value (a mapping
    under ``init_args`` is one value); sections, class specs and study sections are merged key by key."""
    if isinstance(document, dict) and (len(key) < 2 or key[-1] == "init_args" or key[0] == "experiment"):
        for name, value in document.items():
            yield from leaves(value, (*key, name))
    else:
        yield key, document


def lookup(document, key):
    for name in key:
        if not isinstance(document, dict) or name not in document:
            return KeyError
        document = document[name]
    return document


@pytest.mark.parametrize("path", CONFIGS)
def test_a_config_holds_only_what_differs_from_its_base(path):
    """No key of a config restates the value its bases already give it (declared once)."""
    own = yaml.safe_load((REPO / path).read_text())
    bases = config_bases(REPO / path)
    if not bases:
        return
    below = composed(bases[-1]) if len(bases) == 1 else {}
    for layer in bases if len(bases) > 1 else ():
        below = merged(below, yaml.safe_load(layer.read_text()))
    below.pop(BASE, None)
    repeated = [".".join(map(str, key)) for key, value in leaves(own) if key != (BASE,) and lookup(below, key) == value]
    assert not repeated, f"{path} restates its base: {repeated}"


@pytest.mark.parametrize("path", CONFIGS)
def test_no_init_arg_restates_the_class_default(path):
    """A model's or DataModule's option equal to the class's own default is written only where it undoes a
    different value of a base."""
    import importlib
    import inspect

    own = yaml.safe_load((REPO / path).read_text())
    bases = config_bases(REPO / path)
    below: dict = {}
    for layer in bases:
        below = merged(below, yaml.safe_load(layer.read_text()))
    full = composed(REPO / path)
    restated = []
    for section in ("model", "data"):
        spec = full.get(section)
        if not isinstance(spec, dict) or "class_path" not in spec:
            continue
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        defaults = {
            key: p.default
            for klass in reversed(cls.__mro__)
            if "__init__" in vars(klass)
            for key, p in inspect.signature(klass.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        given = [
            ((key,), value, defaults.get(key, KeyError))
            for key, value in ((own.get(section) or {}).get("init_args") or {}).items()
            if not (isinstance(value, dict) and dataclasses.is_dataclass(defaults.get(key)))
        ] + [  # an option of a group (network, schedule, ...) against the model's default group
            ((key, option), value, getattr(defaults[key], option, KeyError))
            for key, group in ((own.get(section) or {}).get("init_args") or {}).items()
            if isinstance(group, dict) and dataclasses.is_dataclass(defaults.get(key))
            for option, value in group.items()
        ]
        for key, value, default in given:
            default = list(default) if isinstance(default, tuple) else default
            undoes = lookup(below, (section, "init_args", *key)) not in (KeyError, value)
            if default == value and type(default) is type(value) and not undoes:
                restated.append(f"{section}.init_args.{'.'.join(key)}")
    assert not restated, f"{path} restates class defaults: {restated}"


def test_shipped_configs_are_deltas():
    """The shipped configs were 1184 lines of whole copies; as bases and deltas they are at most two thirds."""
    lines = sum(len((REPO / path).read_text().splitlines()) for path in CONFIGS)
    assert lines <= 789, lines


def test_bases_compose_in_order_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("trainer: {max_epochs: 1}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ntrainer: {max_epochs: 2}\n")
    (tmp_path / "sub" / "top.yaml").write_text("base: [mid.yaml]\ntrainer: {max_steps: 3}\n")
    top = str(tmp_path / "sub" / "top.yaml")
    expanded = expand_bases(["fit", "--config", top, "--trainer.max_steps", "4"])
    assert expanded == ["fit", "--config", str(tmp_path / "root.yaml"), "--config", str(tmp_path / "sub" / "mid.yaml"),
                        "--config", top, "--trainer.max_steps", "4"]  # fmt: skip


def test_a_missing_or_circular_base_names_the_file_and_line(tmp_path, cli):
    (tmp_path / "a.yaml").write_text("# a\nbase: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("trainer: {}\nbase: nowhere.yaml\n")
    code, _, err = cli("fit", "--config", tmp_path / "a.yaml")
    assert code != 0 and "a cycle" in err and "Traceback" not in err
    code, _, err = cli("fit", "--config", tmp_path / "c.yaml")
    assert code != 0 and f"{tmp_path / 'c.yaml'}:2: base: nowhere.yaml not found" in err


def test_a_composed_run_saves_a_complete_config(cli, tmp_path, monkeypatch):
    """The config.yaml a fit writes is the composition, without the base it came from: it reruns on its own."""
    monkeypatch.chdir(REPO)
    delta = tmp_path / "delta.yaml"
    delta.write_text(
        f"base: {REPO / 'configs/demo/hand_ddpm.yaml'}\n"
        "model:\n  init_args: {schedule: {num_train_timesteps: 20}}\n"
    )
    root = tmp_path / "run"
    tiny = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--data.init_args.phantom_counts", "{train: 16, val: 4, test: 4}",
            "--data.init_args.batch_size", "4", "--trainer.default_root_dir", root]  # fmt: skip
    code, _, err = cli("fit", "--config", delta, *tiny)
    assert code == 0, err[-2000:]
    saved = yaml.safe_load((root / "config.yaml").read_text())
    assert saved.get(BASE) is None and saved["model"]["init_args"]["schedule"]["num_train_timesteps"] == 20
    assert saved["model"]["init_args"]["network"]["channels"] == [32, 64, 64]  # from the base
