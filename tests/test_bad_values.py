"""Every bad value stops in one line that names the option and where it was given (the config file and line,
or the command line), with no traceback: sizes, fractions, negative counts, wrong types, a file that is not a
checkpoint, in the plain commands and in LightningCLI's."""

from __future__ import annotations

import re
import subprocess

import pytest
from tiny import REPO, XRAYDIFF

HAND = ["--config", "configs/data/hand_phantom.yaml"]
JAWS = ["--config", "configs/data/panoramic_phantom.yaml"]
SUMMARY = ["data", "summary", *HAND]
DEMO_DDPM = "xraydiff/assets/demo_hand_ddpm.ckpt"
DEMO_LDM = "xraydiff/assets/demo_panoramic_ldm.ckpt"
SAMPLE = ["sample", "--ckpt_path", DEMO_DDPM, "--num_samples", "2"]
RATE = ["acceptance", "rate", "--ckpt_path", DEMO_DDPM, "--stats", "{stats}"]
CHECK = ["acceptance", "run", "--samples", "{folder}", "--stats", "{stats}"]
STATS = ["acceptance", "fit", *HAND, "--annotations_only"]
FIT = ["fit", "--config", "configs/demo/hand_localizer.yaml", "--trainer.max_steps", "1"]

# (case, arguments after the command's own, the option the message must name, where it must say it came from)
CASES = [
    ("image size zero", [*SUMMARY, "--data.init_args.image_size", "[0, 0]"], "image_size", "command line"),
    ("fraction above 1", [*SUMMARY, "--data.init_args.val_fraction", "1.5"], "val_fraction", "command line"),
    ("negative batch", [*SUMMARY, "--data.init_args.batch_size", "-1"], "batch_size", "command line"),
    ("train fraction 0", [*SUMMARY, "--data.init_args.train_fraction", "0"], "train_fraction", "command line"),
    ("share of 1", [*SUMMARY, "--data.init_args.synthetic_share", "1.0"], "synthetic_share", "command line"),
    ("word for a count", [*SUMMARY, "--data.init_args.batch_size", "two"], "batch_size", "command line"),
    ("negative preview", [*SUMMARY, "--num_preview", "-3"], "num_preview", "command line"),
    ("jaw test fraction 2", ["data", "summary", *JAWS, "--data.init_args.test_fraction", "2"], "test_fraction", None),
    ("no samples", ["sample", "--ckpt_path", DEMO_DDPM, "--num_samples", "0"], "num_samples", None),
    (
        "batch of zero",
        [*SAMPLE, "--batch_size", "0"],
        "batch_size",
        None,
    ),
    ("zero steps", [*SAMPLE, "--steps", "0"], "steps", None),
    ("word for a seed", [*SAMPLE, "--seed", "abc"], "seed", None),
    ("a PNG as checkpoint", ["sample", "--ckpt_path", "{png}", "--num_samples", "2"], "not a checkpoint", None),
    (
        "rate of no runs",
        [*RATE, "--runs", "0"],
        "runs",
        None,
    ),
    (
        "MRF batch 0",
        [*CHECK, "--batch_size", "0"],
        "batch_size",
        None,
    ),
    (
        "negative limit",
        [*STATS, "--acceptance.stable_max_mm", "-1"],
        "stable_max_mm",
        None,
    ),
    ("no partners", ["blend", *JAWS, "--ldm", DEMO_LDM, "--top_k", "0"], "top_k", None),
    ("strength above 1", ["blend", *JAWS, "--ldm", DEMO_LDM, "--top_k", "2", "--strength", "1.5"], "strength", None),
    ("blend steps 0", ["blend", *JAWS, "--ldm", DEMO_LDM, "--top_k", "2", "--steps", "0"], "steps", None),
    ("negative dilation", ["blend", *JAWS, "--ldm", DEMO_LDM, "--top_k", "2", "--dilation", "-1"], "dilation", None),
    ("fit: image size zero", [*FIT, "--data.init_args.image_size", "[0, 0]"], "image_size", "command line"),
    ("fit: negative batch", [*FIT, "--data.init_args.batch_size", "-1"], "batch_size", "command line"),
    ("fit: fraction in a file", [*FIT, "--config", "{bad_yaml}"], "val_fraction", "bad.yaml:4"),
    ("fit: word in a union", [*FIT, "--data.init_args.image_size", "big"], "image_size", "command line"),
    ("fit: a PNG to resume", [*FIT, "--ckpt_path", "{png}"], "not a checkpoint", None),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    from xraydiff.data.imageio import write_png

    root = tmp_path_factory.mktemp("bad_values")
    write_png(root / "picture.png", np.zeros((8, 8), np.float32))
    (root / "bad.yaml").write_text(
        "data:\n  class_path: datamodules.HandDataModule\n  init_args:\n    val_fraction: 1.5\n"
    )
    (root / "stats.json").write_text("{}")
    (root / "samples").mkdir()
    return {"png": root / "picture.png", "bad_yaml": root / "bad.yaml", "stats": root / "stats.json",
            "folder": root / "samples", "out": root / "out"}  # fmt: skip


def test_the_table_is_long_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case,argv,option,where", CASES, ids=[case for case, *_ in CASES])
def test_a_bad_value_stops_in_one_line_naming_it(cli, files, case, argv, option, where):
    argv = [str(files.get(a[1:-1], a)) if a.startswith("{") else a for a in argv]
    if argv[0] in ("data", "sample", "blend", "acceptance"):
        code, _, err = cli(*argv, "--out", files["out"] / case.replace(" ", "_"))
    else:  # LightningCLI in a process of its own: as a user runs it, with Lightning's logging set up afresh
        root = ["--trainer.default_root_dir", str(files["out"] / case.replace(" ", "_"))]
        done = subprocess.run([*XRAYDIFF, *argv, *root], cwd=REPO, capture_output=True, text=True)
        code, err = done.returncode, done.stderr
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code != 0, f"{case}: accepted"
    assert "Traceback" not in err, f"{case}: a traceback\n{err[-2000:]}"
    assert len(errors) == 1 and len(err.strip().splitlines()) <= 3, f"{case}: not one line\n{err[-2000:]}"
    assert re.search(rf"\b{re.escape(option)}\b", errors[0]), f"{case}: {option} not named in {errors[0]}"
    if where is not None:
        assert where in errors[0], f"{case}: does not say it came from {where}: {errors[0]}"
    assert not (files["out"] / case.replace(" ", "_")).exists(), f"{case}: wrote output"
