"""What the studies share: an output folder of resumable steps, and LightningCLI runs inside it.

Each step writes its outputs into its own folder and a ``done.json`` marker last; a step whose
marker exists is not recomputed, so an interrupted study resumes where it stopped, and a step
interrupted before its marker starts over from an empty folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from commands.lightning_cli import XrayCLI
from experiments import study_parser
from xraydiff.data.imageio import atomic_write_bytes, check_output_folder, mark_output

MARKER = "done.json"
# Sub-runs of a study log to CSV inside their step folder (no W&B run per step).
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}}'


def seeded(folder: Path, seed: int) -> Path:
    """The folder of a step of training seed ``seed``: ``folder`` itself for seed 0 (a one-seed study's, so that
    studies written before seeds existed resume), ``folder_seed{seed}`` beside it otherwise."""
    return folder if seed == 0 else folder.with_name(f"{folder.name}_seed{seed}")


@dataclass(frozen=True)
class StudyCommand:
    """What ``xraydiff experiment NAME --config YAML --out DIR`` runs: ``run(config, out)`` runs (or resumes)
    the study and returns the report to print."""

    name: str
    summary: str
    description: str
    run: Callable[[Path, Path], str]
    schema: type | None = None  # the dataclass of the config's ``experiment:`` section

    def main(self, argv: list[str]) -> None:
        args = study_parser(self.name, self.description).parse_args(argv)
        print(self.run(args.config, args.out))


class StepRunner:
    """Runs named steps into ``out``; ``command`` names the study in the folder's marker."""

    command = "experiment"

    def __init__(self, out: Path, log=print):
        self.out = Path(out)
        self.log = log
        self.timings: dict[str, float] = {}

    def prepare_folder(self) -> None:
        """A new or empty folder becomes this study's; an earlier xraydiff output resumes; anything else is refused."""
        check_output_folder(self.out, command=self.command, resume=True)
        self.out.mkdir(parents=True, exist_ok=True)
        mark_output(self.out, self.command)

    def step(self, folder: Path, name: str, work, resumable: bool = False) -> dict:
        """Run ``work(folder)`` unless ``folder/done.json`` exists; return the step's record.

        An interrupted step starts over from an empty folder, unless it is ``resumable`` (a training
        that continues from the checkpoints in its folder)."""
        marker = folder / MARKER
        if marker.is_file():
            self.log(f"[skip] {name}: done before")
            return json.loads(marker.read_text())
        resumed = resumable and folder.exists()
        if folder.exists() and not resumable:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[run ] {name}{' (resumed)' if resumed else ''}")
        start = time.perf_counter()
        record = work(folder) or {}
        record["seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_bytes(marker, json.dumps(record, indent=1).encode())
        return record

    @staticmethod
    def data_args(overrides: dict) -> list[str]:
        """``--data.init_args.KEY VALUE`` for every override (values as JSON unless strings)."""
        return [
            arg
            for key, value in overrides.items()
            for arg in (f"--data.init_args.{key}", json.dumps(value) if not isinstance(value, str) else value)
        ]

    @staticmethod
    def run_folder_args(folder: Path) -> list[str]:
        """A sub-run's root directory and its CSV logger."""
        return ["--trainer.default_root_dir", str(folder), "--trainer.logger", CSV_LOGGER]

    def cli(self, args: list[str]) -> None:
        XrayCLI(args=[str(a) for a in args])
