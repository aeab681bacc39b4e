"""The comparison study of the landmark-diffusion paper (Table 1), end to end and resumable.

Does iterative diffusion localize better than the same network without diffusion? The study

1. trains the no-diffusion baseline and the diffusion model from one LightningCLI config, with the
   same budget by construction: the same network, loss, data, augmentation, batch size and number
   of optimizer steps (``max_steps``; a time cap would give the faster model more steps), and no
   validation during training (the evaluation sets never choose a checkpoint), once per training seed
   of ``seeds`` (one, 0, unless configured);
2. evaluates the baseline once and the diffusion model in every configured inference mode
   (single-step, the T-step chain, DDIM with k steps, ensembles of M members) on each evaluation
   split that holds images (Test1 and Test2 for ISBI 2015), from the last checkpoint of each;
3. writes ``results.json`` and ``results.md``: the paper's Table 1 layout (MRE +- SD, SDR per
   radius and test set, means over the seeds, with the seeds' SD) plus network calls and seconds per
   image, for ensembles the Spearman correlation between a landmark's spread and its error, and each
   row's paired per-image MRE difference from the baseline over images and seeds
   (``xraydiff.metrics.paired_difference``).

Each training and each evaluation is a step with its own folder (see ``experiments.steps``); seed 0 keeps
the folders of a one-seed study (``baseline/``, ``eval/ddim5/``), seed s adds ``_seed{s}``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import yaml

from commands.parsing import compose_configs, data_parser
from experiments.schema import Named, fail, option, read_study_config
from experiments.steps import StepRunner, StudyCommand, seeded
from lightning_modules.landmark_diffusion import LandmarkDiffusion
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.diffusion import choices
from xraydiff.diffusion.landmark import LandmarkInference, check_blur, check_decoding, check_inference
from xraydiff.errors import DataError
from xraydiff.metrics import common_image_rows, describe_paired, paired_difference, seed_spread

MODELS = {"baseline": False, "diffusion": True}  # model name -> LandmarkDiffusion's ``diffusion``


@dataclass(frozen=True, kw_only=True)
class Mode(LandmarkInference, Named):
    """A row of the table: inference options of LandmarkDiffusion (``LandmarkInference``; the model's own where
    not named), and how many evaluation images an expensive mode (the T-step chain on a CPU) runs on."""

    max_images: int = option(None, min=1)

    retired: ClassVar[dict[str, str]] = {
        old: f"is now '{new.split('.')[-1]}'" for old, new in LandmarkDiffusion.earlier_names.items()
    }


@dataclass
class LandmarkStudyConfig:
    # LightningCLI config(s) of the LandmarkDiffusion model, its data and trainer
    config: list[str] = option(nonempty=True, file=True)
    max_steps: int = option(min=1)  # the common training budget: optimizer steps of each model
    modes: dict[str, Mode] = option(nonempty=True)  # row name -> inference options of the diffusion model
    seeds: list[int] = option(default_factory=lambda: [0], nonempty=True, distinct=True)  # training seeds
    args: list[Any] = option(default_factory=list, pairs=True)  # extra CLI overrides of both models
    data: dict[str, Any] = field(default_factory=dict)  # overrides of data.init_args (root, ...)
    # table column -> split of the DataModule; a split without images is left out
    test_sets: dict[str, Literal["val", "test"]] = field(default_factory=lambda: {"Test1": "val", "Test2": "test"})
    sdr_radii: list[float] = option(default_factory=lambda: [2.0, 2.5, 4.0], nonempty=True, above=0)

    def __post_init__(self):
        self.args = [str(a) for a in self.args]


def init_args(group: str, configs: list[str], args: list[str], defaults: dict | None = None) -> dict:
    """A config group's ``init_args`` (``model`` or ``data``) as the configs, then the
    ``--GROUP.init_args.KEY[.OPTION] VALUE`` overrides, give them, on top of ``defaults`` (an option group's
    mapping merged key by key, as jsonargparse merges a typed group)."""

    def put(values: dict, key: str, value) -> None:
        head, _, rest = key.partition(".")
        if rest:
            values[head] = {**(values.get(head) or {})}
            put(values[head], rest, value)
        elif isinstance(values.get(head), dict) and isinstance(value, dict):
            values[head] = {**values[head], **value}
        else:
            values[head] = value

    values = {key: dict(v) if isinstance(v, dict) else v for key, v in (defaults or {}).items()}
    for key, value in ((compose_configs(configs).get(group) or {}).get("init_args") or {}).items():
        put(values, key, value)
    prefix = f"--{group}.init_args."
    for key, value in zip(args[::2], args[1::2], strict=False):
        if key.startswith(prefix):
            put(values, key.removeprefix(prefix), yaml.safe_load(str(value)))
    return values


def _model_init_args(configs: list[str], args: list[str]) -> dict:
    """The LandmarkDiffusion constructor arguments the configs and overrides give (defaults filled in)."""
    from lightning_modules.landmark_diffusion import LandmarkDiffusion

    defaults = {
        name: dataclasses.asdict(p.default) if dataclasses.is_dataclass(p.default) else p.default
        for name, p in inspect.signature(LandmarkDiffusion.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return init_args("model", configs, args, defaults)


def load_landmark_study_config(path: Path) -> LandmarkStudyConfig:
    """Read and check an ``experiment:`` config of the landmark study (``experiments.schema``); then every
    mode against the model's T (k <= T, M >= 1, sigma_max >= sigma_min), before any training starts."""
    config, lines = read_study_config(path, LandmarkStudyConfig)
    hparams = _model_init_args(config.config, config.args)
    T = int(hparams["schedule"]["num_train_timesteps"])
    for name, given in config.modes.items():
        mode = {**hparams["inference"], **given}  # the model's own where the mode does not say
        try:
            check_inference(mode["sampler"], mode["sampling_steps"], mode["ensemble"], T, mode["ddim_eta"])
            check_blur(float(mode["sigma_max"]), float(mode["sigma_min"]), mode["blur_scaling"])
            check_decoding(mode["x0_estimate"], mode["chain_decoding"])
        except DataError as err:
            fail(path, lines, ("experiment", "modes", name), f"experiment.modes.{name}: {err.reason}")
    return config


class LandmarkStudy(StepRunner):
    """Runs the steps of the study into ``out``; see the module docstring."""

    command = "experiment landmarks"

    def __init__(self, config: LandmarkStudyConfig, out: Path, log=print):
        super().__init__(out, log)
        self.config = config
        self._splits: dict[str, int] | None = None

    def _common(self) -> list[str]:
        c = self.config
        return [*[a for f in c.config for a in ("--config", f)], *c.args, *self.data_args(c.data)]

    def split_sizes(self) -> dict[str, int]:
        """Images per evaluation split (read once, annotations only)."""
        if self._splits is None:
            parser = data_parser("experiment landmarks", "")
            args = [a for f in self.config.config for a in ("--config", f)]
            args += self.data_args({**self.config.data, "annotations_only": True})
            datamodule = parser.instantiate_classes(parser.parse_args(args)).data
            datamodule.setup()
            self._splits = {split: len(datamodule.items[split]) for split in ("val", "test")}
        return self._splits

    def batch_size(self) -> int:
        """Images per optimizer step and per evaluation batch (the data config's ``batch_size``)."""
        c = self.config
        # the study's data overrides come after the configs' args on the command line (see _common)
        return int({**init_args("data", c.config, c.args), **c.data}.get("batch_size", 1))

    # -- steps

    def train(self, folder: Path, name: str, seed: int) -> dict:
        """Fit one model for exactly ``max_steps`` optimizer steps from training seed ``seed``, without validation."""
        self.cli(
            [
                "fit",
                *self._common(),
                "--seed_everything",
                seed,
                "--model.init_args.diffusion",
                str(MODELS[name]).lower(),
                "--trainer.max_steps",
                self.config.max_steps,
                "--trainer.max_epochs",
                "-1",
                "--trainer.max_time",
                "null",
                "--trainer.limit_val_batches",
                "0",
                "--ckpt_path",
                "last",  # a training interrupted within its step continues from its last checkpoint
                *self.run_folder_args(folder),
            ]
        )
        checkpoint = folder / "checkpoints/last.ckpt"
        saved = read_checkpoint(checkpoint)
        return {
            "checkpoint": str(checkpoint.resolve()),
            "global_step": int(saved["global_step"]),
            "train_images": int(saved[CHECKPOINT_KEY]["train_data"]["train_images"]),
            "batch_size": self.batch_size(),
        }

    def evaluate(self, folder: Path, checkpoint: str, mode: dict) -> dict:
        """Validate / test the checkpoint in one inference mode on every evaluation split with images."""
        options = [
            a
            for key, value in mode.items()
            if key != "max_images"
            for a in (f"--model.init_args.inference.{key}", str(value))
        ]
        batch_size = self.batch_size()
        results = {}
        for label, split in self.config.test_sets.items():
            if not self.split_sizes()[split]:
                continue
            stage, limit_key = ("validate", "limit_val_batches") if split == "val" else ("test", "limit_test_batches")
            size, limit = self.split_sizes()[split], []
            if "max_images" in mode and mode["max_images"] < size:
                # The first ceil(max_images / batch) batches, given as a fraction: on the command line
                # Lightning's int 1 (one batch) and float 1.0 (all batches) cannot be told apart.
                wanted, batches = math.ceil(mode["max_images"] / batch_size), math.ceil(size / batch_size)
                limit = ["--trainer." + limit_key, str((wanted + 0.5) / batches)]
            self.cli(
                [stage, *self._common(), *options, *limit, "--ckpt_path", checkpoint, *self.run_folder_args(folder)]
            )
            results[label] = json.loads((folder / f"{split}_metrics.json").read_text())
        return {"metrics": results}

    # -- the whole study

    def run(self) -> dict:
        c = self.config
        self.prepare_folder()
        models = {
            (name, seed): self.step(
                seeded(self.out / name, seed),
                f"{name} seed {seed}: train {c.max_steps} steps",
                partial(self.train, name=name, seed=seed),
                resumable=True,
            )
            for name in MODELS
            for seed in c.seeds
        }
        budgets = {
            f"{n} seed {s}": (m["global_step"], m["batch_size"], m["train_images"]) for (n, s), m in models.items()
        }
        if len(set(budgets.values())) != 1:
            raise DataError(
                self.out, f"the models were trained with different budgets (steps, batch, images): {budgets}; "
                "remove the study folder of the one that differs and rerun",
            )  # fmt: skip
        rows = {"baseline": {"model": "baseline", "mode": {"sampler": "baseline"}}}
        rows.update({name: {"model": "diffusion", "mode": dict(mode)} for name, mode in c.modes.items()})
        for name, row in rows.items():
            mode = {} if row["model"] == "baseline" else row["mode"]
            row["by_seed"] = {
                str(seed): self.step(
                    seeded(self.out / "eval" / name, seed),
                    f"{name} seed {seed}: evaluate",
                    partial(self.evaluate, checkpoint=models[row["model"], seed]["checkpoint"], mode=mode),
                )["metrics"]
                for seed in c.seeds
            }
            row["metrics"] = row["by_seed"][str(c.seeds[0])]
        first = models["diffusion", c.seeds[0]]
        results = {
            "budget": {"max_steps": c.max_steps, "batch_size": first["batch_size"],
                       "train_images": first["train_images"], "seeds": c.seeds},
            "models": {f"{name} seed {seed}": m for (name, seed), m in models.items()},
            "test_sets": {label: split for label, split in c.test_sets.items() if self.split_sizes()[split]},
            "rows": rows,
        }  # fmt: skip
        write_report(self.out, results, c)
        return results


# --------------------------------------------------------------------------------------- report


def row_label(name: str, row: dict) -> str:
    mode = row["mode"]
    if row["model"] == "baseline":
        return "baseline (no diffusion)"
    label = choices.spec(mode["sampler"]).label.format(k=mode.get("sampling_steps"))
    if int(mode.get("ensemble", 1)) > 1:
        label += f", ensemble M={mode['ensemble']}"
    return f"{label} [{name}]"


def by_seed(row: dict, label: str) -> list[dict]:
    """The row's metrics on test set ``label``, one per training seed (rows of older results: one)."""
    runs = row.get("by_seed") or {"0": row["metrics"]}
    return [m[label] for m in runs.values() if m.get(label)]


def table(results: dict, config: LandmarkStudyConfig) -> str:
    """The paper's Table 1 layout: MRE +- SD over images and SDR per test set (means over the training seeds,
    with the seeds' count and SD of the MRE), plus cost and uncertainty."""
    sets = list(results["test_sets"])
    radii = [f"{r:g}" for r in config.sdr_radii]
    head = ["model", "calls / image", "s / image"]
    for label in sets:
        head += [f"{label} n", f"{label} MRE (mm)", f"{label} seeds", *[f"{label} SDR {r} mm" for r in radii]]
    head += ["rho(spread, error)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["rows"].items():
        metrics = row["metrics"]
        first = next(iter(metrics.values()), None)
        inference = (first or {}).get("inference", {})
        cells = [
            row_label(name, row),
            str(inference.get("network_calls_per_image", "-")),
            f"{inference['seconds_per_image']:.2f}" if "seconds_per_image" in inference else "-",
        ]
        for label in sets:
            runs = by_seed(row, label)
            if not runs:
                cells += ["-"] * (3 + len(radii))
                continue
            mre, sd = (float(np.mean([m[key] for m in runs])) for key in ("mre_mm", "mre_sd_mm"))
            cells += [str(runs[0]["n_images"]), f"{mre:.2f} +- {sd:.2f}"]
            cells.append(seed_spread([m["mre_mm"] for m in runs]))
            cells += [f"{np.mean([m['sdr'][r] for m in runs]):.1f}" if r in runs[0]["sdr"] else "-" for r in radii]
        rho = [f"{m['uncertainty']['spearman']:.2f}" for m in metrics.values() if "uncertainty" in m]
        cells.append(" / ".join(rho) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_comparisons(results: dict) -> dict:
    """Per test set and diffusion row: the paired difference of per-image MRE (row - baseline) on the images
    every seed of both rows evaluated, over images and training seeds (``xraydiff.metrics.paired_difference``)."""
    comparisons: dict = {}
    baseline = results["rows"]["baseline"]
    for label in results["test_sets"]:
        reference = [m["per_image_mre_mm"] for m in by_seed(baseline, label) if m.get("per_image_mre_mm")]
        if not reference:
            continue
        for name, row in results["rows"].items():
            values = [m["per_image_mre_mm"] for m in by_seed(row, label) if m.get("per_image_mre_mm")]
            if name == "baseline" or not values:
                continue
            rows = common_image_rows(values, reference)
            if len(rows[0][0]) >= 2:
                comparisons.setdefault(label, {})[name] = paired_difference(*rows)
    return comparisons


COMPARISON_VERDICTS = {
    "lower": "diffusion better",
    "higher": "baseline better",
    "no difference shown": "no difference shown",
}


def comparison_table(results: dict) -> str:
    lines = ["| test set | row | n | MRE - baseline (mm) [95 % interval], verdict |", "|---|---|---|---|"]
    for label, rows in results.get("paired", {}).items():
        for name, c in rows.items():
            cells = [label, row_label(name, results["rows"][name]), str(c["n_images"]),
                     describe_paired(c, COMPARISON_VERDICTS, digits=2)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def observer_table(results: dict) -> str:
    """Two doctors and prediction QC per row and test set (from the metrics JSON of each row)."""
    head = "| test set | row | MRE to each doctor (mm) | within inter-observer (%) | QC flagged | "
    head += "MRE flagged / unflagged (mm) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        for label, m in row["metrics"].items():
            observers, qc = m.get("observers"), m.get("plausibility")
            doctors = " / ".join(f"{k} {v:.2f}" for k, v in (observers or {}).get("mre_mm_to", {}).items()) or "-"
            within = f"{observers['within_inter_observer']:.1f}" if observers else "-"
            flagged, split = "-", "-"
            if qc:
                flagged = f"{qc['implausible']} of {qc['checked']}"
                per_image, bad = m.get("per_image_mre_mm") or {}, set(qc["implausible_ids"])
                inside = [v for k, v in per_image.items() if k in bad]
                outside = [v for k, v in per_image.items() if k not in bad]
                mean = lambda v: f"{sum(v) / len(v):.2f}" if v else "-"  # noqa: E731
                split = f"{mean(inside)} / {mean(outside)}"
            cells = [label, row_label(name, row), doctors, within, flagged, split]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict, config: LandmarkStudyConfig) -> None:
    budget = results["budget"]
    results["paired"] = paired_comparisons(results)
    text = [
        "# Landmark diffusion vs. the same network without diffusion (Table 1 layout)",
        "",
        table(results, config),
        "",
        f"Both models: {budget['max_steps']} optimizer steps of {budget['batch_size']} images on "
        f"{budget['train_images']} training images, last checkpoint, no validation during training. "
        "SDR in %; rho is the Spearman correlation between a landmark's ensemble spread and its error "
        "(per test set). A row with fewer images (n) ran on the first n of the set (whole evaluation batches).",
        "",
        "## Paired comparison with the baseline",
        "",
        "Per test image, the row's MRE minus the baseline's on the same image; the mean and its 95 % interval over "
        "the images and each model's training seeds (Student t, Welch-Satterthwaite degrees of freedom; with one "
        "seed a percentile bootstrap over images, 10 000 resamples, marked 'one training seed': it says whether "
        "these images would disagree, not whether a rerun would). 'better' only where the interval excludes 0.",
        "",
        comparison_table(results),
        "",
        "## Two doctors and prediction QC",
        "",
        "MRE to each annotator; share of predicted landmarks within the inter-observer distance of the nearer "
        "doctor; configurations the shape-model QC (fitted on the training annotations) flags, and the MRE of "
        "the flagged against the unflagged images.",
        "",
        observer_table(results),
        "",
    ]
    atomic_write_bytes(out / "results.md", "\n".join(text).encode())
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())


def _run(config_path: Path, out: Path) -> str:
    LandmarkStudy(load_landmark_study_config(config_path), out).run()
    return "\n" + (out / "results.md").read_text() + f"\nreport: {out / 'results.md'}"


STUDY = StudyCommand(
    name="landmarks",
    summary="landmark diffusion vs. the same network without diffusion",
    description="Landmark diffusion vs. the same network without diffusion at equal budget (the paper's "
    "Table 1): train both, evaluate every inference mode; resumable.",
    schema=LandmarkStudyConfig,
    run=_run,
)
