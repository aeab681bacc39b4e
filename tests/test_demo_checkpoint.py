"""The shipped phantom DDPM does what `make demo` promises (its own file: the suite's longest test,
which xdist then runs beside the rest of the study tests)."""

from __future__ import annotations

import json

from experiments.augment import load_study_config


def test_the_shipped_demo_checkpoint_generates_accepted_pairs(cli, tmp_path):
    """`make demo` promises accepted synthetic samples: pairs of the pretrained phantom DDPM, drawn
    as the demo draws them, pass the MRF-SSM check of statistics fitted to the demo's phantoms."""
    study = load_study_config("configs/demo/hand_augment.yaml")
    ddpm = study.generators["ddpm"]
    data = [
        *(a for c in ddpm.config for a in ("--config", c)),
        "--data.init_args.phantom_counts",
        json.dumps(study.data["phantom_counts"]),
    ]
    code, _, err = cli("acceptance", "fit", *data, "--annotations_only", "--out", tmp_path / "stats.json")
    assert code == 0, err
    code, _, err = cli(
        "acceptance", "rate", "--ckpt_path", ddpm.ckpt["full"], "--stats", tmp_path / "stats.json",
        "--runs", 2, "--num_samples", 12, "--batch_size", study.batch_size,
        "--sampler", study.sampler, "--steps", study.steps, "--seed", study.seed, "--precision", study.precision,
        "--out", tmp_path / "rate",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "rate/acceptance.json").read_text())
    # Two runs of 12 (24 samples, more than the demo's rate runs, so that the argument holds): at the
    # measured ~20 % acceptance (benchmarks/sampler_acceptance.py) none accepted has probability
    # 0.8^24 < 0.5 %, for any seed.
    assert result["num_samples"] == 12 and result["mean"] > 0
