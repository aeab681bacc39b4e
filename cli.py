"""The ``xraydiff`` command.

* ``xraydiff fit|validate|test|predict --config ...``: LightningCLI over every model and DataModule.
* ``xraydiff data summary --config ... --out DIR``: load every split, write counts, landmarks and a
  preview of augmented training samples.
* ``xraydiff sample --ckpt CKPT --num-samples N --out DIR``: generate image/heatmap pairs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from xraydiff.errors import DataError
from xraydiff.imageio import atomic_directory, atomic_write_bytes
from xraydiff.preview import landmark_grid, mask_grid

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Sections of a full LightningCLI config that the plain subcommands accept and ignore.
OTHER_SECTIONS = (
    "model",
    "trainer",
    "seed_everything",
    "ckpt_path",
    "optimizer",
    "lr_scheduler",
    "checkpoint",
    "step_checkpoint",
)
DEFAULT_ROOT = "runs/default"
WANDB_ID_FILE = "wandb_run_id"

USAGE = """usage: xraydiff <command> [options]

commands:
  fit | validate | test | predict   LightningCLI (e.g. xraydiff fit --help)
  data summary                      load a dataset, write summary.json, landmarks.csv, preview.png
  sample                            generate image/heatmap pairs from a checkpoint
  acceptance fit|render|run|rate    MRF-SSM quality control of generated pairs
  experiment augment                the synthetic-augmentation study, end to end
"""


# ------------------------------------------------------------------------------ LightningCLI


class XrayCLI(LightningCLI):
    """LightningCLI in subclass mode for models and DataModules, with xraydiff's run conventions.

    * Everything a run writes goes under ``trainer.default_root_dir``: checkpoints in
      ``checkpoints/`` (the epoch's checkpoint and ``last.ckpt`` at every epoch end, a rolling
      ``last-step.ckpt`` every ``step_checkpoint.every_n_train_steps``),
      logger files (relative ``save_dir`` values are resolved under it), galleries, the config copy.
    * The default logger is W&B, offline unless ``WANDB_MODE=online`` or
      ``--trainer.logger.init_args.offline false``; its run id is kept in
      ``checkpoints/wandb_run_id`` and reused when a run resumes.
    * ``--ckpt_path last`` resumes from the newest of ``checkpoints/last*.ckpt`` and the SLURM
      ``hpc_ckpt_N.ckpt`` of this run (exactly at epoch ends; from a mid-epoch checkpoint the
      interrupted epoch restarts its data order); a path that does not exist or a checkpoint of another model
      class is refused before any work.
    * The data is loaded and checked before the trainer starts.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True):
        from callbacks.resume import PreemptionCheckpoint, RandomStateCheckpoint

        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            trainer_defaults={"callbacks": [RandomStateCheckpoint(), PreemptionCheckpoint()]},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "step_checkpoint")
        parser.set_defaults(
            {
                "trainer.default_root_dir": DEFAULT_ROOT,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {"project": "xraydiff", "offline": True},
                },
                # At every epoch end: the epoch's checkpoint and last.ckpt.
                "checkpoint.save_last": True,
                "checkpoint.save_on_train_epoch_end": True,
                "checkpoint.enable_version_counter": False,
                "checkpoint.filename": "epoch={epoch:04d}-step={step:07d}",
                "checkpoint.auto_insert_metric_name": False,
                # Every N steps: one rolling last-step.ckpt. (Not save_last: that would also write
                # last.ckpt at train end, after the epoch counter moved on, which resumes into an
                # empty epoch.)
                "step_checkpoint.every_n_train_steps": 1000,
                "step_checkpoint.save_top_k": 1,
                "step_checkpoint.filename": "last-step",
                "step_checkpoint.save_last": False,
                "step_checkpoint.enable_version_counter": False,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # Before LightningCLI reads the checkpoint's hyperparameters (which would silently replace
        # the configured model by the checkpoint's class): resolve 'last', refuse a missing file or
        # a checkpoint of another model class.
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        root = Path(config.trainer.default_root_dir or DEFAULT_ROOT)
        config.trainer.default_root_dir = str(root)
        for group in ("checkpoint", "step_checkpoint"):
            dirpath = config[group].dirpath
            config[group].dirpath = str(root / "checkpoints" if dirpath is None else _under(root, dirpath))
        config.ckpt_path = self._resolve_ckpt_path(subcommand, config.ckpt_path, root, config.checkpoint.dirpath)
        if config.ckpt_path is not None and Path(config.ckpt_path).is_file():
            _check_model_class(config.ckpt_path, config.model.class_path)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        root = Path(config.trainer.default_root_dir)
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, Namespace) and "init_args" in logger:
                self._configure_logger(logger, root, Path(config.checkpoint.dirpath), config.ckpt_path is not None)

    def instantiate_classes(self) -> None:
        # A config value rejected by a class (e.g. empty radii) surfaces from jsonargparse as a
        # ValueError; report it like every other bad input.
        try:
            super().instantiate_classes()
        except DataError:
            raise
        except ValueError as err:
            raise DataError(None, f"invalid configuration: {err}") from None

    @staticmethod
    def _resolve_ckpt_path(subcommand: str, ckpt_path: str | None, root: Path, checkpoint_dir: str) -> str | None:
        if ckpt_path is None or ckpt_path in ("best", "hpc", "registry"):
            return ckpt_path
        if ckpt_path == "last":
            candidates = list(Path(checkpoint_dir).glob("last*.ckpt")) + list(root.glob("hpc_ckpt_*.ckpt"))
            if not candidates:
                if subcommand != "fit":
                    raise DataError(checkpoint_dir, "--ckpt_path last: no checkpoint found for this run")
                print(f"xraydiff: no checkpoint in {checkpoint_dir} yet, starting a new run", file=sys.stderr)
                return None
            return str(max(candidates, key=lambda p: p.stat().st_mtime))
        if not Path(ckpt_path).is_file():
            raise DataError(ckpt_path, "checkpoint not found")
        return ckpt_path

    def _configure_logger(self, logger: Namespace, root: Path, checkpoint_dir: Path, resuming: bool) -> None:
        args = logger.init_args
        if "save_dir" in args:
            args.save_dir = str(_under(root, args.save_dir or "."))
        if logger.class_path.endswith("WandbLogger"):
            if os.environ.get("WANDB_MODE") == "online":
                args.offline = False
            id_file = checkpoint_dir / WANDB_ID_FILE
            if args.get("id") is None:
                if resuming and id_file.is_file():
                    args.id = id_file.read_text().strip()
                else:
                    args.id = secrets.token_hex(4)
            if self.subcommand == "fit" and _get_rank() in (None, 0):
                atomic_write_bytes(id_file, args.id.encode())

    def _check_data(self, stage: str) -> None:
        setup = getattr(self.datamodule, "setup", None)
        if setup is not None:
            setup(stage)

    def before_fit(self) -> None:
        self._check_data("fit")

    def before_validate(self) -> None:
        self._check_data("validate")

    def before_test(self) -> None:
        self._check_data("test")

    def before_predict(self) -> None:
        self._check_data("predict")


def _under(root: Path, path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else root / path


def _check_model_class(ckpt_path: str, model_class_path: str) -> None:
    from lightning_modules.generative import checkpoint_model_class

    saved = checkpoint_model_class(ckpt_path)
    if saved.rsplit(".", 1)[-1] != model_class_path.rsplit(".", 1)[-1]:
        raise DataError(ckpt_path, f"checkpoint holds a {saved}, but the config's model is {model_class_path}")


# ------------------------------------------------------------------------------- data summary


def data_parser(prog: str, description: str, uses: tuple[str, ...] = ()) -> ArgumentParser:
    """A parser that takes a config with a ``data`` section; other sections are ignored unless in ``uses``."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config with a data section")
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    for key in OTHER_SECTIONS:
        if key not in uses:
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


# ------------------------------------------------------------------------------------- sample


def sample(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="xraydiff sample",
        description="Generate image/heatmap pairs: DIR/<id>.npz (float32 'image' and 'heatmap' in [-1, 1]), "
        "DIR/<id>.png previews and DIR/manifest.json. Ids are reproducible from the seed.",
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint of a PairedDDPM or PairedVAE")
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sampler",
        choices=("ddpm", "ddim"),
        default=None,
        help="DDPM chain (T steps) or DDIM; default: the model's configured sampler",
    )
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on recent GPUs")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder that already holds samples")
    args = parser.parse_args(argv)
    generate_samples(**{k.replace("-", "_"): v for k, v in vars(args).items()})


def generate_samples(
    ckpt: Path,
    num_samples: int,
    out: Path,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    devices: int = 1,
    accelerator: str = "auto",
    precision: str = "32-true",
    overwrite: bool = False,
) -> Path:
    """Sample ``num_samples`` pairs from the model in ``ckpt`` into ``out`` (see ``xraydiff sample``)."""
    from callbacks.sample_writer import SampleWriter
    from datamodules.sampling import SampleIndexDataModule
    from lightning_modules.generative import PairedGenerativeModule, class_path, load_model
    from xraydiff.samples import holds_samples

    if num_samples < 1:
        raise DataError(None, f"--num-samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise DataError(None, f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out)
    if holds_samples(out) and not overwrite:
        raise DataError(out, "folder already holds samples (pass --overwrite to replace them)")
    model = load_model(ckpt, expected=PairedGenerativeModule)
    if model.sampling_description(None, None)[0] == "prior" and sampler is not None:
        raise DataError(None, f"--sampler {sampler}: a {type(model).__name__} samples from its prior")
    sampler_name, sampler_steps = model.sampling_description(sampler, steps)
    staging = out.with_name(f".{out.name}.partial")
    if _get_rank() in (None, 0):  # DDP children re-run this command; only the launcher prepares folders
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    manifest = {
        "checkpoint": str(Path(ckpt).resolve()),
        "model": class_path(model),
        "sampler": sampler_name,
        "steps": sampler_steps,
        "seed": seed,
        "count": num_samples,
        "batch_size": batch_size,
        "image_size": list(model.image_size),
        "devices": devices,
    }
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        callbacks=[SampleWriter(staging, out, manifest, num_samples)],
        default_root_dir=str(staging),
        enable_model_summary=False,
    )
    datamodule = SampleIndexDataModule(num_samples, batch_size, seed, sampler, steps)
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return out


# --------------------------------------------------------------------------------- acceptance


def _acceptance_data_parser(prog: str, description: str) -> ArgumentParser:
    from xraydiff.acceptance import AcceptanceConfig

    parser = data_parser(prog, description, uses=("acceptance",))
    parser.add_class_arguments(AcceptanceConfig, "acceptance")
    parser.add_argument(
        "--annotations-only",
        action="store_true",
        help="read landmarks without images (see 'Frames and units' in the README)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    return parser


def _load_landmark_data(parser: ArgumentParser, cfg) -> Any:
    datamodule = parser.instantiate_classes(cfg).data
    if not hasattr(datamodule, "shape_table"):
        raise DataError(None, f"{type(datamodule).__name__} has no landmarks; acceptance needs a landmark DataModule")
    if cfg.annotations_only:
        datamodule.annotations_only = True
    datamodule.setup()
    return datamodule


def acceptance_fit(argv: list[str]) -> None:
    from xraydiff.acceptance import AcceptanceConfig, ShapeStatistics

    parser = _acceptance_data_parser(
        "xraydiff acceptance fit",
        "Fit the shape statistics of the MRF-SSM check from the training landmarks and save them (JSON).",
    )
    parser.add_argument("--out", type=Path, required=True, help="statistics file to write (.json)")
    parser.add_argument("--split", default="train")
    cfg = parser.parse_args(argv)
    if cfg.out.exists() and not cfg.overwrite:
        raise DataError(cfg.out, "statistics file exists (pass --overwrite to replace it)")
    datamodule = _load_landmark_data(parser, cfg)
    shapes, spacing, frame = datamodule.shape_table(cfg.split)
    config = AcceptanceConfig(**vars(cfg.acceptance))
    stats = ShapeStatistics.fit(shapes, spacing, datamodule.image_size, datamodule.anatomy, config, frame)
    stats.save(cfg.out)
    print(
        f"{cfg.out}: {stats.num_shapes} shapes, {stats.num_landmarks} landmarks, {len(stats.edges)} MRF edges "
        f"({stats.config.topology}), {len(stats.ssm.eigenvalues)} SSM modes, mm per pixel "
        f"{stats.mm_per_px.round(4).tolist()} (x, y)"
    )


def acceptance_render(argv: list[str]) -> None:
    import numpy as np
    import torch

    from xraydiff.heatmaps import gaussian_heatmaps
    from xraydiff.samples import write_manifest, write_sample

    parser = _acceptance_data_parser(
        "xraydiff acceptance render",
        "Write ground-truth samples (sample format "
        "plus a 'landmarks' array) of a split: the calibration set of the check.",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="test")
    cfg = parser.parse_args(argv)
    if cfg.out.exists() and any(cfg.out.iterdir()) and not cfg.overwrite:
        raise DataError(cfg.out, "output folder exists and is not empty (pass --overwrite to replace it)")
    datamodule = _load_landmark_data(parser, cfg)
    items = datamodule.items[cfg.split]
    if not items:
        raise DataError(datamodule.root, f"the {cfg.split} split is empty")
    sigma = cfg.acceptance.heatmap_sigma
    with atomic_directory(cfg.out, overwrite=cfg.overwrite) as staging:
        for item in items:
            heatmap = gaussian_heatmaps(
                torch.from_numpy(item.landmarks), datamodule.image_size, sigma, combine=True, normalize=True
            )[0].numpy()
            image = item.image if item.image is not None else np.zeros(datamodule.image_size, np.float32)
            write_sample(staging, item.id, image, heatmap, landmarks=item.landmarks)
        write_manifest(
            staging,
            {
                "source": "ground truth",
                "data": datamodule.source,
                "split": cfg.split,
                "annotations_only": datamodule.annotations_only,
                "sigma": sigma,
                "image_size": list(datamodule.image_size),
                "count": len(items),
                "ids": [item.id for item in items],
            },
        )
    print(f"wrote {len(items)} ground-truth samples to {cfg.out}/")


def acceptance_run(argv: list[str]) -> None:
    from xraydiff.acceptance_run import run_acceptance

    parser = argparse.ArgumentParser(
        prog="xraydiff acceptance run",
        description="Check generated samples; write report.json, accepted/, gallery.png.",
    )
    parser.add_argument("--samples", type=Path, required=True, help="folder of .npz samples (xraydiff sample)")
    parser.add_argument("--stats", type=Path, required=True, help="statistics file (xraydiff acceptance fit)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rule-set", choices=("strict", "paper"), default=None, help="default: the statistics'")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    report = run_acceptance(args.samples, args.stats, args.out, args.rule_set, args.overwrite, args.batch_size)
    by_set = ", ".join(f"{k} {v:.1%}" for k, v in report["acceptance_rate_by_rule_set"].items())
    print(
        f"{report['accepted']} of {report['n']} accepted: {report['acceptance_rate']:.1%} "
        f"({report['rule_set']} rules; {by_set}); failed rules {report['failed_rule_counts']}"
    )
    print(f"wrote {args.out}/report.json, {args.out}/accepted/, {args.out}/gallery.png")


def acceptance_rate(argv: list[str]) -> None:
    from xraydiff.acceptance_rate import measure_acceptance_rate

    parser = argparse.ArgumentParser(
        prog="xraydiff acceptance rate",
        description="The paper's protocol: acceptance rate mean and SD over independent sampling runs.",
    )
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="run r samples with seed + r")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rule-set", choices=("strict", "paper"), default=None)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    result = measure_acceptance_rate(
        args.ckpt,
        args.stats,
        args.out,
        args.runs,
        args.num_samples,
        args.sampler,
        args.steps,
        args.seed,
        args.batch_size,
        args.rule_set,
        args.device,
        args.overwrite,
        precision=args.precision,
    )
    print(result["table"])


def experiment_augment(argv: list[str]) -> None:
    from experiments.augment import Study, load_study_config, tables

    parser = argparse.ArgumentParser(
        prog="xraydiff experiment augment",
        description="The synthetic-augmentation study of Hadzic et al.: generators, acceptance, localizer; resumable.",
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML with an 'experiment' section")
    parser.add_argument("--out", type=Path, required=True, help="study folder (rerun to resume)")
    args = parser.parse_args(argv)
    config = load_study_config(args.config)
    results = Study(config, args.out).run()
    table1, table2 = tables(results, config)
    print("\nTable 1: acceptance rate\n" + table1 + "\n\nTable 2: localizer on the test set\n" + table2)
    print(f"\nreport: {args.out / 'results.md'}")


ACCEPTANCE_COMMANDS = {
    "fit": acceptance_fit,
    "render": acceptance_render,
    "run": acceptance_run,
    "rate": acceptance_rate,
}


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
            # args=None lets LightningCLI read sys.argv itself (it warns when given both).
            XrayCLI(args=None if from_command_line else argv)
        elif argv[:2] == ["data", "summary"]:
            data_summary(argv[2:])
        elif argv[:1] == ["sample"]:
            sample(argv[1:])
        elif argv[:2] == ["experiment", "augment"]:
            experiment_augment(argv[2:])
        elif argv[:1] == ["acceptance"] and len(argv) > 1 and argv[1] in ACCEPTANCE_COMMANDS:
            ACCEPTANCE_COMMANDS[argv[1]](argv[2:])
        else:
            print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
            sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    except DataError as err:
        print(f"xraydiff: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
