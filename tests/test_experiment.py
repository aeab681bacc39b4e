"""`xraydiff experiment augment`: the whole study at toy size, resumable; bad study configs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from tiny import DDPM, VAE

from experiments.augment import Study, load_study_config
from xraydiff.errors import DataError


def _args(base: list[str]) -> list[str]:
    """The overrides of a tiny training config, without its --config entries and data sizes."""
    out, skip = [], False
    for value in base:
        if skip:
            skip = False
            continue
        if value == "--config" or value.startswith("--data.init_args.phantom_counts"):
            skip = True
            continue
        out.append(value)
    return out


def _study(tmp_path, **changes) -> dict:
    localizer = [
        "--model.init_args.image_size",
        "[16, 16]",
        "--model.init_args.channels",
        "[8, 16]",
        "--data.init_args.image_size",
        "[16, 16]",
        "--data.init_args.batch_size",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.callbacks",
        '[{"class_path": "callbacks.landmark_eval.LandmarkEvaluation"}]',
        "--trainer.enable_progress_bar",
        "false",
    ]
    study = {
        "experiment": {
            "seed": 0,
            "data": {"root": None, "phantom_counts": {"train": 10, "val": 5, "test": 4}},
            "training_sets": {"full": 1.0, "reduced": 0.3},
            "generators": {
                "ddpm": {
                    "config": ["configs/demo/hand_ddpm.yaml"],
                    "args": [*_args(DDPM), "--trainer.max_epochs", "1"],
                },
                "vae": {"config": ["configs/demo/hand_vae.yaml"], "args": [*_args(VAE), "--trainer.max_epochs", "1"]},
            },
            "num_samples": 4,
            "sampler": "ddim",
            "steps": 2,
            "batch_size": 4,
            "rate_runs": 2,
            "rate_samples": 3,
            "localizer": {"config": ["configs/demo/hand_localizer.yaml"], "args": localizer},
            **changes,
        }
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_runs_end_to_end_and_resumes(cli, tmp_path):
    config = _study(tmp_path, localizer_seeds=[0, 1])
    out = tmp_path / "out"
    code, stdout, err = cli("experiment", "augment", "--config", config, "--out", out)
    assert code == 0, err[-3000:]
    assert "Table 1" in stdout and "Table 2" in stdout
    results = json.loads((out / "results.json").read_text())
    for name in ("full", "reduced"):
        entry = results["training_sets"][name]
        assert set(entry["generators"]) == {"ddpm", "vae"}
        for info in entry["generators"].values():
            # trained here on exactly this row's phantoms: 10, or round(0.3 * 10)
            assert info["trained"] and info["train_images"] == {"full": 10, "reduced": 3}[name]
            assert info["accepted"]["n"] == 4 and len(info["acceptance"]["by_rule_set"]) == 2
        real = entry["localizer"]["real"]
        assert real["n_images"] == 4 and real["n_landmarks"] == 37 and real["mre_mm"] > 0
        seeds = entry["localizer_seeds"]["real"]  # seed 0 in the one-seed folder, seed 1 beside it
        assert len(seeds) == 2 and seeds[0]["mre_mm"] == real["mre_mm"] != seeds[1]["mre_mm"]
        assert (out / name / "localizer/real_seed1/test_metrics.json").exists()
    assert results["training_sets"]["reduced"]["fraction"] == 0.3
    report = (out / "results.md").read_text()
    assert "Table 1" in report and "Table 2" in report and "gallery.png" in report
    assert "rate, paper rules (i, ii)" in report and "rate, strict rules (i-iv)" in report
    assert (out / "full/ddpm/samples/acceptance/gallery.png").exists()
    copies = results["training_sets"]["reduced"]["generators"]["vae"]["accepted"]["near_copies"]
    assert copies["n"] == 4 and copies["train_images"] == 3 and copies["threshold"]["n"] == 5
    assert "| near copies of its training set, all samples [95 % CI] |" in report
    assert "vae reduced - vae full: acceptance" in report and "near copies" in report
    assert (out / "reduced/vae/samples/novelty/gallery.png").exists()
    # A second run recomputes nothing; a step without its marker is redone.
    first = (out / "full/localizer/real/done.json").read_text()
    (out / "reduced/vae/rate/done.json").unlink()
    code, stdout, err = cli("experiment", "augment", "--config", config, "--out", out)
    assert code == 0, err[-3000:]
    assert stdout.count("[skip]") == stdout.count("[run ]") + stdout.count("[skip]") - 1
    assert "[run ] reduced/vae: acceptance rate" in stdout
    assert (out / "full/localizer/real/done.json").read_text() == first


@pytest.mark.parametrize(
    "change,message",
    [
        ({"num_sample": 3}, "study.yaml:"),
        (
            {"localizer": {"config": ["configs/nope.yaml"]}},
            "experiment.localizer.config[0]: configs/nope.yaml not found",
        ),
        ({"training_sets": {"full": 1.5}}, "experiment.training_sets.full must be in (0, 1], got 1.5"),
        ({"rate_runs": 0}, "experiment.rate_runs must be at least 1, got 0"),
        ({"rate_source": "pool"}, "experiment.rate_source must be one of ['runs', 'augmentation'], got 'pool'"),
        ({"num_samples": "many"}, "experiment.num_samples must be int, got 'many'"),
        (
            {"localizer": {"config": "configs/demo/hand_localizer.yaml", "args": ["--trainer.max_steps"]}},
            "experiment.localizer.args must be pairs of option and value",
        ),
        ({"localizer": {"args": []}}, "experiment.localizer.config is required"),
        ({"generators": {}}, "experiment.generators must not be empty"),
        ({"rate_source": "augmentation"}, "rate_runs x rate_samples (2 x 3) must not exceed num_samples"),
    ],
)
def test_bad_study_configs_name_file_and_line(tmp_path, change, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_study_config(_study(tmp_path, **change))


def test_rate_from_the_augmentation_samples_matches_a_hand_computed_case(tmp_path):
    """rate_source augmentation: 6 verdicts split into 2 runs of 3. Strict: 2 of 3, then 1 of 3 accepted
    (mean 1/2, SD with Bessel's correction sqrt(2) / 6); paper rules: 3 of 3, then 2 of 3 (mean 5/6)."""
    config = load_study_config(_study(tmp_path, rate_source="augmentation", num_samples=6))
    strict, paper = [1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 1, 1]
    report = tmp_path / "report.json"
    verdicts = [
        {"accepted_by_rule_set": {"strict": bool(a), "paper": bool(b)}} for a, b in zip(strict, paper, strict=True)
    ]
    report.write_text(json.dumps({"samples": verdicts}))
    result = Study(config, tmp_path / "out", log=lambda *_: None).rate_from_samples(tmp_path, report)
    assert result["mean"] == pytest.approx(0.5) and result["sd"] == pytest.approx(2**0.5 / 6)
    assert result["by_rule_set"]["paper"]["mean"] == pytest.approx(5 / 6)
    assert result["by_rule_set"]["paper"]["sd"] == pytest.approx(2**0.5 / 6)


def test_unknown_key_reports_its_line(tmp_path):
    path = _study(tmp_path, num_sample=3)
    line = next(k for k, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("num_sample:"))
    with pytest.raises(DataError, match=f"study.yaml:{line}: unknown key experiment.num_sample"):
        load_study_config(path)


def test_an_unreadable_generator_checkpoint_stops_the_study_with_its_name(cli, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    ddpm = {"config": ["configs/demo/hand_ddpm.yaml"], "ckpt": {"full": str(broken)}}
    code, _, err = cli(
        "experiment", "augment", "--config", _study(tmp_path, generators={"ddpm": ddpm}), "--out", tmp_path / "out"
    )
    assert code != 0 and f"{broken}: not a checkpoint" in err
    assert not list((tmp_path / "out").rglob("done.json"))


def test_demo_study_runs_at_smoke_size(cli, tmp_path):
    """configs/demo/hand_augment.yaml (the `make demo` job) with fewer samples and steps: the shipped DDPM and
    VAE are checked against the training set they record, and results.json names every row's generator."""
    demo = yaml.safe_load(open("configs/demo/hand_augment.yaml"))
    study = demo["experiment"]
    study["training_sets"] = {"full": 1.0}
    study["generators"]["vae"]["ckpt"] = {"full": study["generators"]["vae"]["ckpt"]["full"]}
    study.update(num_samples=6, rate_runs=1, rate_samples=6, steps=4, batch_size=6)
    study["localizer"]["args"] = ["--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false"]
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(demo))
    code, stdout, err = cli("experiment", "augment", "--config", path, "--out", tmp_path / "out")
    assert code == 0, err[-3000:]
    results = json.loads((tmp_path / "out/results.json").read_text())
    ddpm = results["training_sets"]["full"]["generators"]["ddpm"]
    shipped = torch.load(ddpm["checkpoint"], weights_only=False)
    assert not ddpm["trained"] and ddpm["checkpoint"].endswith("demo_hand_ddpm.ckpt")
    assert ddpm["train_images"] == study["data"]["phantom_counts"]["train"] == 2000
    assert ddpm["global_step"] == shipped["global_step"] > 0 and ddpm["accepted"]["n"] == 6
    assert f"{shipped['global_step']} steps on 2000 real training images" in (tmp_path / "out/results.md").read_text()
    # the VAE baseline is shipped on the DDPM's budget: its row is comparable
    vae = results["training_sets"]["full"]["generators"]["vae"]
    assert not vae["trained"] and vae["checkpoint"].endswith("demo_hand_vae.ckpt")
    assert vae["global_step"] == ddpm["global_step"] and vae["accepted"]["n"] == 6
    assert "not comparable" not in (tmp_path / "out/results.md").read_text()
    assert "Table 1" in stdout and "Table 2" in stdout

    # the same checkpoint offered for a training set it was not trained on is refused
    study["training_sets"] = {"reduced": 0.1}
    study["generators"]["ddpm"].update(ckpt={"reduced": "xraydiff/assets/demo_hand_ddpm.ckpt"}, sets=None)
    del study["generators"]["vae"]
    path.write_text(yaml.safe_dump(demo))
    code, _, err = cli("experiment", "augment", "--config", path, "--out", tmp_path / "other")
    assert code != 0 and "train_images: 2000 vs 200" in err and "trained on another training set" in err


def test_a_study_module_registers_itself_without_an_edit_of_the_cli(monkeypatch, tmp_path, capsys):
    import experiments
    from cli import main

    assert set(experiments.studies()) == {"augment", "blend", "landmarks"}
    (tmp_path / "registered.py").write_text(
        "from experiments.steps import StudyCommand\n\n"
        "STUDY = StudyCommand(name='registered', summary='a study found by its module', description='d',\n"
        "                     run=lambda config, out: f'ran {config} into {out}')\n"
    )
    monkeypatch.setattr(experiments, "__path__", [*experiments.__path__, str(tmp_path)])
    assert experiments.studies()["registered"] == "a study found by its module"
    main(["experiment", "registered", "--config", "c.yaml", "--out", "o"])
    assert "ran c.yaml into o" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "experiment registered" in capsys.readouterr().out


def test_table_1_shows_both_rule_sets_and_marks_an_unequal_training_budget():
    from experiments.augment import GeneratorSpec, StudyConfig, tables

    def generator(steps, paper, strict):
        by_set = {"paper": {"mean": paper, "sd": 0.1}, "strict": {"mean": strict, "sd": 0.05}}
        return {"global_step": steps, "acceptance": {"mean": strict, "sd": 0.05, "by_rule_set": by_set}}

    results = {
        "generators": ["ddpm", "vae"],
        "training_sets": {"full": {"generators": {"ddpm": generator(11250, 0.4, 0.25), "vae": generator(60, 0.0, 0.0)},
                                   "localizer": {}}},
    }  # fmt: skip
    config = StudyConfig(data={}, generators={}, localizer=GeneratorSpec(["unused.yaml"]))
    table1, _ = tables(results, config)
    assert "| mean acceptance rate, paper rules (i, ii) | 40% (+-10% SD) | 0% (+-10% SD) |" in table1
    assert "| mean acceptance rate, strict rules (i-iv) | 25% (+-5% SD) | 0% (+-5% SD) |" in table1
    assert "| training steps | 11250 | 60 |" in table1
    assert "vae full: not comparable, 60 training steps against 11250." in table1
    assert "ddpm full: not comparable" not in table1


def test_table_1_compares_the_near_copies_of_a_generator_on_two_training_sets():
    """Newcombe (1998), Table II, example (a): 56/70 - 48/80 = +0.200, 95 % interval [+0.0524, +0.3339]."""
    from experiments.augment import GeneratorSpec, StudyConfig, tables

    def generator(accepted, n, copies, copied_accepted):
        by_set = {name: {"mean": accepted / n, "sd": 0.0} for name in ("paper", "strict")}
        near = {"near_copies": copies, "n": n, "accepted": copied_accepted}
        return {"global_step": 10, "acceptance": {"by_rule_set": by_set},
                "accepted": {"accepted": accepted, "n": n, "near_copies": near}}  # fmt: skip

    sets = {
        "full": {"generators": {"vae": generator(48, 80, 48, 30)}, "localizer": {}},
        "reduced": {"generators": {"vae": generator(56, 70, 56, 50)}, "localizer": {}},
    }
    config = StudyConfig(data={}, generators={}, localizer=GeneratorSpec(["unused.yaml"]))
    table1, _ = tables({"generators": ["vae"], "training_sets": sets}, config)
    assert "| near copies of its training set, all samples [95 % CI] | 60% [49%, 70%] (48 of 80) | 80%" in table1
    assert "| near copies among the accepted | 30 of 48 | 50 of 56 |" in table1
    assert "vae reduced - vae full: acceptance +20.0% [+5.2%, +33.4%] (higher); near copies +20.0% [+5.2%, " in table1


def test_table_2_shows_seeds_and_the_paired_interval_against_real_only():
    from experiments.augment import GeneratorSpec, StudyConfig, tables
    from xraydiff.metrics import common_image_rows, paired_difference

    def localizer(errors):
        return {"mre_mm": float(np.mean(errors)), "mre_sd_mm": 0.5, "outliers": {"2": 1},
                "per_image_mre_mm": {str(i): e for i, e in enumerate(errors)}}  # fmt: skip

    rng = np.random.default_rng(0)
    real = [localizer(rng.uniform(2, 3, 8)) for _ in range(3)]
    better = [localizer(np.array([m["per_image_mre_mm"][str(i)] for i in range(8)]) - 0.5) for m in real]
    entry = {"generators": {"ddpm": None}, "localizer": {"real": real[0], "real+ddpm": better[0]},
             "localizer_seeds": {"real": real, "real+ddpm": better},
             "paired": {"real+ddpm": paired_difference(
                 *common_image_rows(*([m["per_image_mre_mm"] for m in row] for row in (better, real))))}}  # fmt: skip
    config = StudyConfig(data={}, generators={}, localizer=GeneratorSpec(["unused.yaml"]), outlier_radii=[2.0])
    _, table2 = tables({"generators": ["ddpm"], "training_sets": {"full": entry}}, config)
    row = next(line for line in table2.splitlines() if "real+ddpm" in line)
    seed_sd = np.std([m["mre_mm"] for m in better], ddof=1)
    assert f"3 (seed SD {seed_sd:.3f})" in row and "-0.50 [" in row and "better than real only" in row
