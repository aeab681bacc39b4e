"""No command deletes or overwrites what it did not write (each case was reproduced on earlier code)."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny import LOCALIZER, run

from xraydiff.data.imageio import OUTPUT_MARKER, read_marker

HAND = ["--config", "configs/data/hand_phantom.yaml", "--data.init_args.phantom_counts",
        '{"train": 20, "val": 2, "test": 6}']  # fmt: skip


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A statistics file and a ground-truth samples folder (acceptance render), written once."""
    from conftest import acceptance_outputs

    root = tmp_path_factory.mktemp("outputs")
    acceptance_outputs(root, HAND)
    return root


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_marker_names_the_command_and_the_files_it_wrote(outputs):
    marker = read_marker(outputs / "gt")
    assert marker["command"] == "acceptance render"
    assert set(marker["files"]) == {str(p) for p in _snapshot(outputs / "gt")} - {OUTPUT_MARKER}
    assert "manifest.json" in marker["files"]


@pytest.mark.parametrize("where", ["same", "inside"])
def test_acceptance_run_never_writes_into_the_samples_it_checks(cli, outputs, tmp_path, where):
    samples = tmp_path / "gt"
    shutil.copytree(outputs / "gt", samples)
    before = _snapshot(samples)
    out = samples if where == "same" else samples / "checked"
    code, _, err = cli("acceptance", "run", "--samples", samples, "--stats", outputs / "stats.json", "--out", out,
                       "--overwrite")  # fmt: skip
    assert code != 0 and ("is the input" in err or "lies inside the input" in err), err
    assert _snapshot(samples) == before


def test_overwrite_replaces_only_an_output_of_the_same_command_with_nothing_added(cli, outputs, tmp_path):
    samples = tmp_path / "gt"
    shutil.copytree(outputs / "gt", samples)
    before = _snapshot(samples)
    # another command's folder: refused, nothing deleted
    code, _, err = cli("data", "summary", *HAND, "--out", samples, "--overwrite")
    assert code != 0 and "written by `xraydiff acceptance render`, not by `xraydiff data summary`" in err
    assert _snapshot(samples) == before
    # the same command's folder with a file the user added: refused, naming it
    (samples / "notes.txt").write_text("my notes")
    code, _, err = cli("acceptance", "render", *HAND, "--split", "test", "--out", samples, "--overwrite")
    assert code != 0 and "notes.txt" in err and (samples / "notes.txt").read_text() == "my notes"
    # nothing added: replaced
    (samples / "notes.txt").unlink()
    code, _, err = cli("acceptance", "render", *HAND, "--split", "val", "--out", samples, "--overwrite")
    assert code == 0, err
    assert json.loads((samples / "manifest.json").read_text())["count"] == 2


def test_acceptance_fit_overwrites_only_a_statistics_file(cli, outputs, tmp_path):
    document = tmp_path / "thesis.json"
    document.write_text('{"chapter": 1}')
    code, _, err = cli("acceptance", "fit", *HAND, "--annotations_only", "--out", document, "--overwrite")
    assert code != 0 and "not a shape-statistics file" in err and document.read_text() == '{"chapter": 1}'
    stats = tmp_path / "stats.json"
    shutil.copy(outputs / "stats.json", stats)
    code, _, err = cli("acceptance", "fit", *HAND, "--annotations_only", "--out", stats, "--overwrite")
    assert code == 0, err


def test_a_new_fit_over_an_earlier_runs_checkpoints_is_refused(tmp_path):
    root = tmp_path / "run"
    fit = ["fit", *LOCALIZER, "--trainer.default_root_dir", root, "--trainer.max_steps", "2"]
    result = run(fit)
    assert result.returncode == 0, result.stderr[-3000:]
    last = (root / "checkpoints/last.ckpt").read_bytes()
    result = run(fit)
    assert result.returncode != 0 and "holds the checkpoints of an earlier run" in result.stderr
    assert "--ckpt_path last" in result.stderr and (root / "checkpoints/last.ckpt").read_bytes() == last
    result = run([*fit, "--overwrite_run", "true"])  # asked for explicitly
    assert result.returncode == 0, result.stderr[-3000:]


def test_fit_never_replaces_a_config_yaml_it_did_not_write(tmp_path):
    """A user's own config.yaml in the run folder was overwritten by the config copy, silently."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text("# my experiment notes\nlr: 0.1\n")
    result = run(["fit", *LOCALIZER, "--trainer.default_root_dir", root, "--trainer.max_steps", "1"])
    assert result.returncode != 0 and f"{root / 'config.yaml'}: a file xraydiff did not write" in result.stderr
    assert (root / "config.yaml").read_text() == "# my experiment notes\nlr: 0.1\n"
    assert not (root / "checkpoints").exists()


def test_overwrite_run_removes_exactly_the_earlier_runs_files(tmp_path):
    """--overwrite_run left the old run's checkpoints beside the new ones; and it must not touch a user's file."""
    root = tmp_path / "run"
    fit = ["fit", *LOCALIZER, "--trainer.default_root_dir", root]
    result = run([*fit, "--trainer.max_steps", "8"])  # two epochs of 4 steps
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (root / "checkpoints").glob("epoch=*.ckpt")} == {"epoch=0001-step=0000008.ckpt"}
    (root / "notes.txt").write_text("mine")
    (root / "checkpoints" / "my_copy.txt").write_text("mine too")
    result = run([*fit, "--trainer.max_steps", "4", "--overwrite_run", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed the" in result.stdout + result.stderr
    now = {p.name for p in (root / "checkpoints").glob("epoch=*.ckpt")}
    assert now == {"epoch=0000-step=0000004.ckpt"}, now  # the earlier run's epoch=0001 checkpoint is gone
    assert (root / "notes.txt").read_text() == "mine" and (root / "checkpoints" / "my_copy.txt").exists()
    assert len(list(root.glob("version_*"))) == 1  # the earlier run's CSV logs are gone, the new run's are there
