"""The documentation holds: every relative link of the README and docs/ resolves (file and heading), every
``xraydiff ...`` command line they show parses, and the CLI reference is the parsers' own help."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from tiny import REPO

PAGES = [REPO / "README.md", REPO / "DEVELOPERS.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Placeholders a documented command may use, and a value of the right type for each.
PLACEHOLDERS = {"CKPT": "model.ckpt", "DIR": "runs/out", "PATH": "data", "CONFIG": "configs/data/hand_phantom.yaml"}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in LINK.findall(page.read_text())]


def test_pages_exist_and_link_somewhere():
    assert len(PAGES) >= 10 and len(links()) >= 30


@pytest.mark.parametrize("page,target", links(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_relative_link_resolves(page: Path, target: str):
    if re.match(r"[a-z]+:", target):
        return  # http(s), mailto: not checked offline
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.name}: link to {target}: no such file"
    if anchor:
        assert anchor in anchors(resolved), f"{page.name}: link to {target}: no such heading in {resolved.name}"


def command_lines() -> list[tuple[str, list[str]]]:
    """(page, argument list) of every ``xraydiff ...`` line in a code block, continuations joined, comments and
    optional ``[...]`` groups removed, placeholders replaced."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s+#.*$", "", line.strip())
                if not line.startswith("xraydiff "):
                    continue
                line = re.sub(r"\s\[[^\]]*\]", "", line)
                words = [PLACEHOLDERS.get(word, word) for word in shlex.split(line)[1:]]
                found.append((page.name, words))
    return found


def test_the_documentation_shows_commands():
    assert len(command_lines()) >= 30


@pytest.mark.parametrize("page,argv", command_lines(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_documented_command_parses(page: str, argv: list[str], monkeypatch):
    import cli

    if argv[:1] == ["--help"]:
        return
    if argv[0] in cli.LIGHTNING_SUBCOMMANDS:
        from lightning.pytorch.cli import LightningCLI

        from commands.lightning_cli import XrayCLI

        class Parsed(Exception):
            pass

        class ParseOnly(XrayCLI):  # parsing and validating, none of the run's checks on the file system
            def parse_arguments(self, parser, args):
                LightningCLI.parse_arguments(self, parser, args)
                raise Parsed

        argv = [word for word in argv if word != "--print_config"]
        with pytest.raises(Parsed):
            ParseOnly(args=argv)
    elif argv[0] == "experiment":
        from experiments import studies, study_parser

        assert argv[1] in studies(), f"{page}: no study {argv[1]}"
        study_parser(argv[1], "").parse_args(argv[2:])
    else:
        assert cli.command_of(argv), f"{page}: xraydiff {' '.join(argv)}: no such command"
        cli.parse(argv)


def test_the_cli_reference_is_the_parsers_help():
    import importlib

    reference = importlib.import_module("scripts.cli_reference")
    assert reference.TARGET.read_text() == reference.render(), "docs/cli.md is stale: python -m scripts.cli_reference"


def test_import_cli_imports_no_framework():
    """``xraydiff --help`` and every plain command's help must not wait for Lightning, torch or MONAI."""
    import subprocess
    import sys

    code = "import sys, cli; print(sorted(m for m in ('lightning', 'torch', 'monai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
