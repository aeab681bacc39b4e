"""The ``xraydiff`` command.

* ``xraydiff fit|validate|test|predict --config ...``: LightningCLI over every model and DataModule.
* ``xraydiff data summary --config ... --out DIR``: load every split, write counts, landmarks and a
  preview of augmented training samples.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.cli import LightningCLI

from xraydiff.errors import DataError
from xraydiff.imageio import atomic_directory, atomic_write_bytes
from xraydiff.preview import landmark_grid, mask_grid

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Sections of a full LightningCLI config that the plain subcommands accept and ignore.
OTHER_SECTIONS = ("model", "trainer", "seed_everything", "ckpt_path", "optimizer", "lr_scheduler")

USAGE = """usage: xraydiff <command> [options]

commands:
  fit | validate | test | predict   LightningCLI (xraydiff fit --help)
  data summary                      load a dataset, write summary.json, landmarks.csv, preview.png
"""


class XrayCLI(LightningCLI):
    """LightningCLI in subclass mode for models and DataModules."""

    def __init__(self, args: list[str] | None = None, run: bool = True):
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )


def data_parser(prog: str, description: str) -> ArgumentParser:
    """A parser that takes a config with a ``data`` section (other sections are ignored)."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config with a data section")
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    for key in OTHER_SECTIONS:
        parser.add_argument(f"--{key}", type=Any, default=None, help="(ignored)")
    return parser


def data_summary(argv: list[str]) -> None:
    parser = data_parser("xraydiff data summary", "Load every split and write summary.json, landmarks.csv, preview.png")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--num_preview", type=int, default=16, help="augmented training samples in the preview")
    cfg = parser.parse_args(argv)
    out: Path = cfg.out
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise DataError(out, "output folder exists and is not empty (pass --overwrite to replace it)")
    datamodule = parser.instantiate_classes(cfg).data
    datamodule.setup()
    summary = datamodule.summary()
    train = datamodule.dataset("train")
    previews = [train[k] for k in range(min(cfg.num_preview, len(train)))]
    with atomic_directory(out, overwrite=cfg.overwrite) as staging:
        atomic_write_bytes(staging / "summary.json", json.dumps(summary, indent=2).encode())
        if hasattr(datamodule, "landmark_rows"):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["split", "id", "landmark", "x", "y", "mm_per_px"])
            for split, sample_id, k, x, y, mm in datamodule.landmark_rows():
                writer.writerow([split, sample_id, k, repr(x), repr(y), repr(mm)])
            atomic_write_bytes(staging / "landmarks.csv", buffer.getvalue().encode())
            if previews:
                landmark_grid(
                    previews, staging / "preview.png", title=f"{summary['anatomy']}: augmented training samples"
                )
        elif previews:
            mask_grid(previews, staging / "preview.png", title=f"{summary['anatomy']}: augmented training samples")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}/")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
            XrayCLI(args=argv)
        elif argv[:2] == ["data", "summary"]:
            data_summary(argv[2:])
        else:
            print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
            sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    except DataError as err:
        print(f"xraydiff: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
