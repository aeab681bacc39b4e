"""Errors a user can act on: where, which key, what was expected, the nearest valid name, in a few lines."""

from __future__ import annotations

import pytest
from tiny import DDPM

DEMO = ["--config", "configs/demo/hand_ddpm.yaml"]


def short_error(result) -> str:
    code, _, err = result
    assert code in (1, 2), err[-2000:]  # 2: jsonargparse's usage error; 1: xraydiff's check before it
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 5, err
    assert "usage:" not in err and "Union" not in err and "Subtypes" not in err
    return err


@pytest.mark.parametrize(
    "yaml_text,fragments",
    [
        ("trainer:\n  max_step: 4\n", ("bad.yaml:2:", "trainer.max_step: no such option", "trainer.max_steps?")),
        ("trainer:\n  max_steps: lots\n", ("bad.yaml:2:", "trainer.max_steps: expected int, got 'lots'")),
        (
            "model:\n  init_args:\n    network:\n      num_res_blocks: one\n",
            ("bad.yaml:4:", "model.init_args.network.num_res_blocks: expected int, got 'one'"),
        ),
    ],
    ids=["unknown-trainer-key", "trainer-type", "model-type"],
)
def test_config_file_errors_name_file_line_key_and_expectation(cli, tmp_path, yaml_text, fragments):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    err = short_error(cli("fit", *DEMO, "--config", bad, "--trainer.default_root_dir", tmp_path / "r"))
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--trainer.max_step", "4"], ("command line: --trainer.max_step: no such option", "--trainer.max_steps?")),
        (
            ["--model.init_args.network.num_res_block", "1"],
            ("model.init_args.network.num_res_block", "network.num_res_blocks'?"),
        ),
        (
            ["--model.init_args.network.num_res_blocks", "one"],
            ("command line: model.init_args.network.num_res_blocks: expected int",),
        ),
    ],
    ids=["abbreviation", "model-typo", "model-type"],
)
def test_command_line_errors_and_no_abbreviations(cli, tmp_path, args, fragments):
    err = short_error(cli("fit", *DDPM, *args, "--trainer.default_root_dir", tmp_path / "r"))
    for fragment in fragments:
        assert fragment in err, err


def test_plain_commands_one_spelling_and_concise_errors(cli, tmp_path):
    bad = tmp_path / "data.yaml"
    bad.write_text("data:\n  class_path: datamodules.HandDataModule\n  init_args:\n    image_sise: [32, 32]\n")
    err = short_error(cli("data", "summary", "--config", bad, "--out", tmp_path / "o"))
    assert "data.yaml:4: data.init_args.image_sise: no such option; did you mean data.init_args.image_size?" in err
    # The old dashed spelling and the old checkpoint name point to the one spelling.
    err = short_error(cli("sample", "--ckpt", "x.ckpt", "--num-samples", 2, "--out", tmp_path / "s"))
    assert "--ckpt: no such option; did you mean --ckpt_path?" in err
    err = short_error(cli("sample", "--ckpt_path", "x.ckpt", "--num-samples", 2, "--out", tmp_path / "s"))
    assert "--num-samples: no such option; did you mean --num_samples?" in err
    err = short_error(cli("sample", "--ckpt_path", "x.ckpt", "--num_sample", 2, "--out", tmp_path / "s"))
    assert "--num_sample: no such option; did you mean --num_samples?" in err  # no abbreviation either


def test_groups_list_their_subcommands_and_typos_get_the_nearest_command(cli):
    for group, subcommands in (("acceptance", "{fit,render,run,rate}"), ("data", "{summary}")):
        code, _, err = cli(group)
        assert code == 2 and f"usage: xraydiff {group} {subcommands}" in err
    code, _, err = cli("sampl", "--help")
    assert code == 2 and "unknown command 'sampl'; did you mean 'xraydiff sample'?" in err
    code, _, err = cli("acceptance", "rnu")
    assert code == 2 and "did you mean 'xraydiff acceptance run'?" in err


def test_help_shows_every_default_and_every_option_has_help(cli):
    code, out, _ = cli("sample", "--help")
    assert code == 0
    assert "samples per network call (default: 16)" in out and "seed of the samples (default: 0)" in out
    import cli as entry

    for words, (build, _) in entry.COMMANDS.items():
        name = " ".join(words)
        for action in build()._actions:
            assert action.help, f"xraydiff {name} {action.option_strings}: no help"
            assert all("-" not in option[2:] for option in action.option_strings if option.startswith("--")), (
                f"xraydiff {name}: {action.option_strings} spelt with a dash"
            )


def test_one_parser_library_for_every_command():
    """Every command but LightningCLI's parses with jsonargparse (``ConfigParser``), none with argparse alone."""
    import ast

    from tiny import REPO

    for path in [REPO / "cli.py", *(REPO / "experiments").glob("*.py"), *(REPO / "commands").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "ArgumentParser",
            ):
                assert path.name == "parsing.py", f"{path}: an argparse parser beside jsonargparse"
