"""Every shipped config parses against the current code: a renamed argument cannot silently break a recipe.
Config errors name the file, the line and the nearest valid key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.augment import load_study_config
from experiments.blend import BlendStudy, load_blend_study_config
from experiments.landmarks import LandmarkStudy, load_landmark_study_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def kind(path: str) -> str:
    document = yaml.safe_load((REPO / path).read_text())
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
    config["model"]["init_args"]["num_res_block"] = config["model"]["init_args"].pop("num_res_blocks")
    path = tmp_path / "renamed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    line = next(k for k, text in enumerate(path.read_text().splitlines(), 1) if "num_res_block:" in text)
    code, _, err = cli("fit", "--config", path, "--print_config")
    assert code != 0
    assert f"{path}:{line}: model.init_args.num_res_block: PairedDDPM has no parameter 'num_res_block'" in err
    assert "did you mean 'num_res_blocks'?" in err


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
        model_data = document["data"]["init_args"]
        assert not IDENTITY & set(model_data), f"{path}: the dataset's keys belong in {DATASETS[anatomy]}"
        code, out, err = cli("fit", "--config", DATASETS[anatomy], "--config", path, "--print_config")
        assert code == 0, err[-2000:]
        composed = yaml.safe_load(out)["data"]["init_args"]
        assert composed["root"] == dataset["root"], path  # from the dataset's config
        for key, value in model_data.items():  # the model's own settings win
            assert composed[key] == value, (path, key)
