"""Write docs/cli.md, the command-line reference, from the parsers themselves (the help of every command).

    python -m scripts.cli_reference            # rewrite docs/cli.md
    python -m scripts.cli_reference --check    # exit 1 if docs/cli.md is stale (tests/test_docs.py does this)

The four LightningCLI commands get their usage and a pointer: their options depend on the model and DataModule
classes (``xraydiff fit --model.help CLASS``), and the full page is several hundred lines.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "cli.md"
WIDTH = "100"  # help is wrapped to the terminal: a fixed width keeps the page reproducible

HEADER = """# Command-line reference

Generated from the parsers by `python -m scripts.cli_reference`; `tests/test_docs.py` fails when it is stale.
Every command answers `--help`; options are spelt with underscores and never abbreviated.

## fit, validate, test, predict

LightningCLI over every model and DataModule: `xraydiff fit --config CONFIG [--config MORE] [--KEY VALUE ...]`.
Configs compose left to right; any key can be overridden on the command line. `xraydiff fit --help` lists the
trainer's options, `xraydiff fit --model.help CLASS` and `--data.help CLASS` a model's or DataModule's, and
`--print_config` the resolved configuration. xraydiff adds `--trainer.precision auto`, `--overwrite_run`,
`--ckpt_path last` and the `checkpoint` / `step_checkpoint` groups ([training.md](training.md)).
"""


def help_text(argv: list[str]) -> str:
    """What ``xraydiff ARGV --help`` prints, at a fixed width."""
    from cli import main

    out, previous = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*argv, "--help"])
    finally:
        if previous is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = previous
    return out.getvalue().rstrip()


def render() -> str:
    sections = [HEADER]
    from cli import help_pages

    for argv in help_pages():
        title = " ".join(["xraydiff", *argv]) if argv else "xraydiff"
        sections.append(f"## {title}\n\n```\n{help_text(argv)}\n```\n")
    return "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale instead of writing it")
    text = render()
    if parser.parse_args().check:
        sys.exit(0 if TARGET.is_file() and TARGET.read_text() == text else 1)
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(REPO)}")


if __name__ == "__main__":
    main()
