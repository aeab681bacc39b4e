"""LightningCLI with xraydiff's run conventions, and the data-only parser of the plain subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks.run_record import RunRecord, check_config_copy, remove_earlier_run
from commands.parsing import (
    BASE,
    ConciseErrors,
    compose_configs,
    config_paths,
    expand_bases,
    init_parameters,
    key_lines,
    located,
    nearest,
    parsed_arguments,
    read_yaml,
)
from commands.quiet import silence_wandb
from xraydiff.checkpoints import CHECKPOINT_KEY, checkpoint_model_class, read_checkpoint
from xraydiff.errors import DataError
from xraydiff.precision import AUTO, describe_hardware, resolve_precision

DEFAULT_ROOT = "runs/default"


GROUP_TITLES = {
    "trainer": "trainer: Lightning's Trainer (precision 'auto': bf16 where the hardware has it natively, else 32-bit)",
    "model": "model: the LightningModule (xraydiff fit --model.help CLASS lists a model's options)",
    "data": "data: the LightningDataModule (xraydiff fit --data.help CLASS lists a DataModule's options)",
    "checkpoint": "checkpoint: the epoch-end checkpoints (the epoch's and last.ckpt, in checkpoints/)",
    "step_checkpoint": "step_checkpoint: the rolling last-step.ckpt every N training steps",
    "optimizer": "optimizer: a torch optimizer replacing the model's own",
    "lr_scheduler": "lr_scheduler: a learning-rate schedule replacing the model's own",
}


class XrayArgumentParser(ConciseErrors, LightningArgumentParser):
    """LightningCLI's parser without abbreviations, with concise errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class Trainer(L.Trainer):
    """Lightning's Trainer, with ``precision: auto``: bf16 autocast where the hardware has native bf16
    (CPUs with AMX or AVX-512-BF16, GPUs with bf16), 32-bit elsewhere (``xraydiff.precision``).
    The resolved value is printed once at start."""

    def __init__(self, *, precision: Literal["auto"] | _PRECISION_INPUT | None = AUTO, **kwargs):
        resolved = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        if precision == AUTO and _get_rank() in (None, 0):
            print(f"xraydiff: precision auto -> {resolved} ({describe_hardware(kwargs.get('accelerator'))})")
        super().__init__(precision=resolved, **kwargs)


class XrayCLI(LightningCLI):
    """LightningCLI in subclass mode for models and DataModules, with xraydiff's run conventions.

    * Everything a run writes goes under ``trainer.default_root_dir``: checkpoints in
      ``checkpoints/`` (the epoch's checkpoint and ``last.ckpt`` at every epoch end, a rolling
      ``last-step.ckpt`` every ``step_checkpoint.every_n_train_steps``),
      logger files (relative ``save_dir`` values are resolved under it), galleries, the config copy.
    * ``trainer.precision`` is ``auto`` unless a config says otherwise (see ``Trainer``).
    * The default logger is W&B, offline unless ``WANDB_MODE=online`` or
      ``--trainer.logger.init_args.offline false``; its run id is saved in every checkpoint and
      reused when a run resumes from one.
    * ``--ckpt_path last`` resumes from the newest of ``checkpoints/last*.ckpt`` and the SLURM
      ``hpc_ckpt_N.ckpt`` of this run, exactly (mid-epoch included); a path that does not exist or
      a checkpoint of another model class is refused before any work.
    * Config files are read first: a YAML error or an unknown key names the file, the line and the
      nearest valid key. The data is loaded and checked before the trainer starts.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True):
        from callbacks.resume import PreemptionCheckpoint, RandomStateCheckpoint
        from callbacks.summary import ParameterSummary

        expanded = expand_bases(sys.argv[1:] if args is None else args)
        if args is None:  # LightningCLI reads sys.argv itself (and DDP's processes re-run it)
            sys.argv[1:] = expanded
        check_config_files(expanded)
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            trainer_class=Trainer,
            parser_class=XrayArgumentParser,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            trainer_defaults={
                "callbacks": [RandomStateCheckpoint(), PreemptionCheckpoint(), ParameterSummary(), RunRecord()]
            },
            args=None if args is None else expanded,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(f"--{BASE}", type=Any, default=None, help=argparse.SUPPRESS)  # read by expand_bases
        parser.add_argument(
            "--overwrite_run", type=bool, default=False,
            help="fit: start a new run in a default_root_dir that holds an earlier one: the files xraydiff wrote "
            "there (checkpoints, config copy, logs, galleries, metrics) are removed, every other file stays; "
            "without it such a fit is refused unless it resumes (--ckpt_path last)",
        )  # fmt: skip
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "step_checkpoint")
        parser.set_defaults(
            {
                "trainer.default_root_dir": DEFAULT_ROOT,
                "trainer.enable_model_summary": False,  # callbacks.summary.ParameterSummary prints one line
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

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        for key, group in parser.groups.items():  # titles of their own, not a docstring cut at its first colon
            title = GROUP_TITLES.get(key) or re.split(r"(?<=\.)\s", (group.title or key).rstrip(":"))[0]
            group.title = title.rstrip(".:")
        return parser

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
        if subcommand == "fit":
            check_config_copy(root)
        if subcommand == "fit" and config.ckpt_path is None and not config.get("overwrite_run"):
            _refuse_a_new_run_over(root, Path(config.checkpoint.dirpath))
        if config.ckpt_path is not None and Path(config.ckpt_path).is_file():
            check_model_class(config.ckpt_path, config.model.class_path)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's: the checkpoint's hyperparameters over the config; those of a checkpoint saved before
        the model's option groups are grouped first (``DiffusionModule.upgrade_hparams``)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = dict(read_checkpoint(ckpt_path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None) or self.config[subcommand].model.class_path
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        upgrade = getattr(cls, "upgrade_hparams", None)
        hparams = upgrade(hparams) if upgrade is not None else hparams
        known = init_parameters(cls)  # as load_from_checkpoint: what the class no longer takes is left out
        hparams = {key: value for key, value in hparams.items() if known is None or key in known}
        if hparams:
            model = {"class_path": class_path, "init_args": hparams}
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        config[BASE] = None  # composed already: the saved config.yaml is complete on its own
        root = Path(config.trainer.default_root_dir)
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, Namespace) and "init_args" in logger:
                self._configure_logger(logger, root, config.ckpt_path)

    def instantiate_classes(self) -> None:
        # A config value rejected by a class (e.g. empty radii) surfaces from jsonargparse as a
        # ValueError; report it like every other bad input.
        try:
            super().instantiate_classes()
        except DataError:
            raise
        except ValueError as err:
            raise located(err, parsed_arguments()) from None

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

    def _configure_logger(self, logger: Namespace, root: Path, ckpt_path: str | None) -> None:
        args = logger.init_args
        if "save_dir" in args:
            args.save_dir = str(_under(root, args.save_dir or "."))
        if logger.class_path.endswith("WandbLogger"):
            silence_wandb()
            if os.environ.get("WANDB_MODE") == "online":
                args.offline = False
            if args.get("id") is None:
                resumed = None
                if ckpt_path is not None and Path(ckpt_path).is_file():
                    resumed = read_checkpoint(ckpt_path)[CHECKPOINT_KEY].get("wandb_run_id")
                args.id = resumed or secrets.token_hex(4)

    def _check_data(self, stage: str) -> None:
        setup = getattr(self.datamodule, "setup", None)
        if setup is not None:
            setup(stage)

    def before_fit(self) -> None:
        self._check_data("fit")
        config = self.config[self.subcommand]
        if config.ckpt_path is None and config.get("overwrite_run") and _get_rank() in (None, 0):
            root = Path(config.trainer.default_root_dir)
            removed = remove_earlier_run(root)
            print(f"xraydiff: --overwrite_run: removed the {len(removed)} files of the earlier run in {root}")

    def before_validate(self) -> None:
        self._check_data("validate")

    def before_test(self) -> None:
        self._check_data("test")

    def before_predict(self) -> None:
        self._check_data("predict")


def _refuse_a_new_run_over(root: Path, checkpoint_dir: Path) -> None:
    """DataError when a fresh fit would overwrite another run's checkpoints (``last.ckpt``, the config copy)."""
    earlier = sorted(checkpoint_dir.glob("*.ckpt")) + sorted(root.glob("hpc_ckpt_*.ckpt"))
    if earlier:
        names = ", ".join(p.name for p in earlier[:3]) + (" ..." if len(earlier) > 3 else "")
        raise DataError(
            checkpoint_dir, f"holds the checkpoints of an earlier run ({names}); resume it with --ckpt_path last, "
            "choose a new --trainer.default_root_dir, or pass --overwrite_run true to start over here",
        )  # fmt: skip


def _under(root: Path, path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else root / path


def check_model_class(ckpt_path: str, model_class_path: str) -> None:
    """DataError unless the checkpoint holds a model of the configured class."""
    saved = checkpoint_model_class(ckpt_path)
    if saved.rsplit(".", 1)[-1] != model_class_path.rsplit(".", 1)[-1]:
        raise DataError(ckpt_path, f"checkpoint holds a {saved}, but the config's model is {model_class_path}")


# ----------------------------------------------------------------------------- config files


SECTIONS = ("model", "data")


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config`` file before jsonargparse does: YAML errors and unknown ``init_args`` keys
    of ``model`` / ``data`` classes become DataErrors with file, line and the nearest valid key."""
    import importlib

    flags = [
        arg.split("=", 1)[0].removeprefix("--model.init_args.") for arg in argv if arg.startswith("--model.init_args.")
    ]
    models = _models() if flags else []
    valid_somewhere = {name for cls in models for name in init_parameters(cls) or ()}  # e.g. the localizer's
    for cls in (c for c in models if getattr(c, "renamed_parameters", None)):
        for key in flags:
            if key in cls.renamed_parameters and key.split(".")[0] not in valid_somewhere:
                raise DataError(None, f"--model.init_args.{key} is now --model.init_args.{cls.renamed_parameters[key]}")
    for key in (k for k in flags if k.count(".") == 1):
        group, option = key.split(".")
        fields = {f.name for c in models for g, spec in getattr(c, "GROUPS", {}).items() if g == group
                  for f in dataclasses.fields(spec)}  # fmt: skip
        if fields and option not in fields:
            close = nearest(option, fields)
            hint = f"; did you mean '{group}.{close}'?" if close else f" (valid: {', '.join(sorted(fields))})"
            raise DataError(None, f"--model.init_args.{key}: {group} has no option '{option}'{hint}")
    paths = config_paths(argv)
    for index, path in enumerate(paths):
        document = read_yaml(path)
        if not isinstance(document, dict):
            continue
        composed = (
            compose_configs(paths[: index + 1]) if any(isinstance(document.get(s), dict) for s in SECTIONS) else {}
        )
        for section in SECTIONS:
            spec = document.get(section)
            class_path = (composed.get(section) or {}).get("class_path")
            if not isinstance(spec, dict) or not isinstance(class_path, str):
                continue
            spec = {**spec, "class_path": class_path}
            module_name, _, name = spec["class_path"].rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), name)
            except (ImportError, AttributeError, ValueError):
                lines = key_lines(path)
                raise DataError(
                    path, f"{section}.class_path: no class {spec['class_path']}", lines.get((section, "class_path"))
                ) from None
            valid = init_parameters(cls)
            if valid is None:
                continue
            renamed = getattr(cls, "renamed_parameters", {})
            for key in spec.get("init_args") or {}:
                if key in renamed and renamed[key].split(".")[0] in valid:
                    raise DataError(
                        path,
                        f"{section}.init_args.{key} is now '{renamed[key]}' ({name})",
                        key_lines(path).get((section, "init_args", key)),
                    )
                _refuse_unknown(path, (section, "init_args", key), valid, f"{name} has no parameter")
                group = getattr(cls, "GROUPS", {}).get(key)
                given = (spec.get("init_args") or {}).get(key)
                for option in given if group is not None and isinstance(given, dict) else ():
                    fields = {f.name for f in dataclasses.fields(group)}
                    _refuse_unknown(path, (section, "init_args", key, option), fields, f"{name}'s {key} has no option")


def _refuse_unknown(path: Path, key: tuple, valid: set[str], what: str) -> None:
    """DataError naming the file, the line and the nearest valid name when ``key``'s last part is not in ``valid``."""
    if key[-1] in valid:
        return
    close = nearest(key[-1], valid)
    hint = f"; did you mean '{close}'?" if close else f" (valid: {', '.join(sorted(valid))})"
    raise DataError(path, f"{'.'.join(key)}: {what} '{key[-1]}'{hint}", key_lines(path).get(key))


def _models() -> list[type]:
    """The model classes ``lightning_modules`` exports (some declare ``renamed_parameters``: old key -> new)."""
    import lightning_modules

    classes = (getattr(lightning_modules, name) for name in dir(lightning_modules))
    return [c for c in classes if isinstance(c, type) and issubclass(c, L.LightningModule)]


# ------------------------------------------------------------------------------- data parser
