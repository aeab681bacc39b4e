"""The augmentation study of Lim et al. (Table 1), end to end and resumable.

1. The autoencoder and the LDM are trained (or taken from checkpoints) on the generators' split: the
   unlabelled pool without the images kept for synthesis (the ``PanoramicDataModule`` splits);
2. for each k, ``xraydiff blend`` pairs every labelled training image with its top-k unlabelled
   partners (latent SSIM) from the synthesis split: a synthetic dataset of (images x k) pairs;
   ``reimpose_k`` adds, for those k, a blend with the structure re-imposed at every step (ablation);
3. the segmenter is trained on real only, and on synthetic only and real + synthetic for each blend,
   all with the same budget (``segmenter_steps`` optimizer steps, no validation during training), and
   tested on the hold-out set from its last checkpoint;
4. ``results.json`` / ``results.md``: precision, recall, DSC mean +- SD per row (the paper's layout),
   with the blend galleries beside them.

Every config of the study must split the data alike (same root, fractions and seed: the ``data``
overrides apply to all of them); the blend refuses partners the generators were trained on.
Each training, blend and test is a step with its own folder (``experiments.steps``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from commands.lightning_cli import data_parser
from experiments.steps import StepRunner, read_experiment
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.errors import DataError
from xraydiff.imageio import atomic_write_bytes

BLEND_KEYS = ("steps", "strength", "dilation", "mask_mode", "batch_size", "seed")


@dataclass
class ModelSpec:
    """A model of the study: its LightningCLI config(s), overrides, and optionally a ready checkpoint."""

    config: list[str]
    args: list[str] = field(default_factory=list)
    ckpt: str | None = None


@dataclass
class BlendStudyConfig:
    autoencoder: ModelSpec | None  # None: the autoencoder inside the given LDM checkpoint
    ldm: ModelSpec
    segmenter: ModelSpec
    top_k: list[int]
    segmenter_steps: int
    data: dict[str, Any] = field(default_factory=dict)  # overrides of every config's data.init_args
    blend: dict[str, Any] = field(default_factory=dict)  # steps, strength, dilation, mask_mode, batch_size, seed
    reimpose_k: list[int] = field(default_factory=list)  # k with an extra re-imposed blend (ablation rows)
    synthetic_only: bool = True  # the paper's "synthetic only" rows
    # of real + synthetic epochs: a fixed half, so that a real image is seen as often whatever k is (null:
    # every pair once per epoch, 83 % synthetic at k = 5 with 22 guides)
    synthetic_share: float | None = 0.5
    precision: str = "auto"  # of the blending


def load_blend_study_config(path: Path) -> BlendStudyConfig:
    """Read and check an ``experiment:`` config of the blend study; errors name the file and line."""
    path = Path(path)
    section, lines = read_experiment(
        path,
        set(BlendStudyConfig.__dataclass_fields__),
        ("ldm", "segmenter", "top_k", "segmenter_steps"),
    )

    def spec(name: str) -> ModelSpec:
        value, where = section[name], ("experiment", name)
        if not isinstance(value, dict):
            raise DataError(path, f"experiment.{name} must be a mapping with config, args, ckpt", lines.get(where))
        unknown = set(value) - {"config", "args", "ckpt"}
        if unknown:
            raise DataError(path, f"unknown key(s) {sorted(unknown)} in experiment.{name}", lines.get(where))
        configs = value.get("config") or []
        configs = [configs] if isinstance(configs, str) else list(configs)
        if not configs and (name == "segmenter" or not value.get("ckpt")):
            raise DataError(path, f"experiment.{name} needs a config or a ckpt", lines.get(where))
        for config in configs:
            if not Path(config).is_file():
                raise DataError(path, f"experiment.{name}: config {config} not found", lines.get((*where, "config")))
        ckpt = value.get("ckpt")
        if ckpt is not None and not Path(ckpt).is_file():
            raise DataError(path, f"experiment.{name}: checkpoint {ckpt} not found", lines.get((*where, "ckpt")))
        args = [str(a) for a in value.get("args") or []]
        if len(args) % 2:
            raise DataError(path, f"experiment.{name}.args must be pairs of option and value", lines.get(where))
        return ModelSpec(configs, args, ckpt)

    top_k = section["top_k"]
    top_k = [top_k] if isinstance(top_k, int) else list(top_k or [])
    if not top_k or any(not isinstance(k, int) or k < 1 for k in top_k) or len(set(top_k)) != len(top_k):
        raise DataError(
            path, "experiment.top_k must list distinct positive integers", lines.get(("experiment", "top_k"))
        )
    steps = section["segmenter_steps"]
    if not isinstance(steps, int) or steps < 1:
        raise DataError(
            path, "experiment.segmenter_steps must be a positive integer", lines.get(("experiment", "segmenter_steps"))
        )
    blend = section.get("blend") or {}
    unknown = set(blend) - set(BLEND_KEYS)
    if unknown:
        raise DataError(
            path, f"experiment.blend: unknown key(s) {sorted(unknown)} (known: {BLEND_KEYS})",
            lines.get(("experiment", "blend")),
        )  # fmt: skip
    reimpose_k = list(section.get("reimpose_k") or [])
    for k in reimpose_k:
        if k not in top_k:
            raise DataError(
                path, f"experiment.reimpose_k: {k} is not one of top_k {top_k}", lines.get(("experiment", "reimpose_k"))
            )
    share = section.get("synthetic_share")
    if share is not None and not 0.0 <= share < 1.0:
        raise DataError(
            path,
            f"experiment.synthetic_share must be in [0, 1), got {share}",
            lines.get(("experiment", "synthetic_share")),
        )
    ldm = spec("ldm")
    if section.get("autoencoder") is None and ldm.ckpt is None:
        raise DataError(
            path,
            "experiment.autoencoder is needed unless experiment.ldm gives a ckpt (whose autoencoder is used)",
            lines.get(("experiment", "ldm")),
        )
    values = {k: v for k, v in section.items() if k not in ("autoencoder", "ldm", "segmenter", "top_k", "reimpose_k")}
    return BlendStudyConfig(
        **{
            **values,
            "autoencoder": None if section.get("autoencoder") is None else spec("autoencoder"),
            "ldm": ldm,
            "segmenter": spec("segmenter"),
            "top_k": top_k,
            "reimpose_k": reimpose_k,
            "blend": dict(blend),
        }
    )


class BlendStudy(StepRunner):
    """Runs the steps of the study into ``out``; see the module docstring."""

    command = "experiment blend"

    def __init__(self, config: BlendStudyConfig, out: Path, log=print):
        super().__init__(out, log)
        self.config = config

    def _common(self, spec: ModelSpec) -> list[str]:
        return [*[a for f in spec.config for a in ("--config", f)], *spec.args, *self.data_args(self.config.data)]

    @staticmethod
    def _record(checkpoint: Path) -> dict:
        saved = read_checkpoint(checkpoint)
        train = saved[CHECKPOINT_KEY].get("train_data", {})
        return {
            "checkpoint": str(Path(checkpoint).resolve()),
            "global_step": int(saved["global_step"]),
            "train_images": int(train.get("train_images", 0)),
            "synthetic_images": int(train.get("synthetic_images", 0)),
        }

    # -- steps

    def fit_generator(self, folder: Path, spec: ModelSpec, extra: list[str]) -> dict:
        """Train the autoencoder or the LDM with its config's own budget (resumes from its last checkpoint)."""
        self.cli(["fit", *self._common(spec), *extra, "--ckpt_path", "last", *self.run_folder_args(folder)])
        return self._record(folder / "checkpoints" / "last.ckpt")

    def blend(self, folder: Path, ldm: str, autoencoder: str | None, k: int, reimpose: bool) -> dict:
        from commands.blend import run_blend

        parser = data_parser("experiment blend", "")
        args = [*[a for f in self.config.segmenter.config for a in ("--config", f)], *self.data_args(self.config.data)]
        datamodule = parser.instantiate_classes(parser.parse_args(args)).data
        options = {key: self.config.blend[key] for key in BLEND_KEYS if key in self.config.blend}
        manifest = run_blend(
            Path(ldm), datamodule, folder / "data", k, reimpose=reimpose,
            autoencoder=None if autoencoder is None else Path(autoencoder),
            precision=self.config.precision, log=self.log, **options,
        )  # fmt: skip
        return {
            "dataset": str((folder / "data").resolve()),
            "count": manifest["count"],
            "top_k": k,
            "skipped_empty_guides": len(manifest["skipped_empty_guides"]),
        }

    def train_segmenter(self, folder: Path, extra: list[str]) -> dict:
        """Exactly ``segmenter_steps`` optimizer steps, no validation, then the test on the hold-out set."""
        c = self.config
        common = self._common(c.segmenter)
        self.cli(
            [
                "fit", *common, *extra,
                "--trainer.max_steps", c.segmenter_steps, "--trainer.max_epochs", "-1", "--trainer.max_time", "null",
                "--trainer.limit_val_batches", "0", "--ckpt_path", "last", *self.run_folder_args(folder),
            ]
        )  # fmt: skip
        checkpoint = folder / "checkpoints" / "last.ckpt"
        self.cli(["test", *common, *extra, "--ckpt_path", checkpoint, *self.run_folder_args(folder)])
        metrics = json.loads((folder / "test_metrics.json").read_text())
        return {**self._record(checkpoint), "metrics": {k: v for k, v in metrics.items() if k != "per_image"}}

    # -- the whole study

    def run(self) -> dict:
        c = self.config
        self.prepare_folder()
        if c.autoencoder is None:  # the LDM checkpoint's own first stage
            autoencoder = {"checkpoint": None, "inside": str(Path(c.ldm.ckpt).resolve()), "given": True}
        elif c.autoencoder.ckpt:
            autoencoder = {**self._record(Path(c.autoencoder.ckpt)), "given": True}
        else:
            autoencoder = self.step(
                self.out / "autoencoder", "autoencoder: train",
                partial(self.fit_generator, spec=c.autoencoder, extra=[]), resumable=True,
            )  # fmt: skip
        if c.ldm.ckpt:
            ldm = {**self._record(Path(c.ldm.ckpt)), "given": True}
        else:
            ldm = self.step(
                self.out / "ldm", "ldm: train",
                partial(self.fit_generator, spec=c.ldm,
                        extra=["--model.init_args.autoencoder_ckpt", autoencoder["checkpoint"]]),
                resumable=True,
            )  # fmt: skip
        blends = {}
        for k in c.top_k:
            for reimpose in (False, True) if k in c.reimpose_k else (False,):
                name = f"k{k}" + ("_reimposed" if reimpose else "")
                blends[name] = self.step(
                    self.out / "blend" / name, f"blend top-{k}{' (re-imposed)' if reimpose else ''}",
                    partial(self.blend, ldm=ldm["checkpoint"], autoencoder=autoencoder["checkpoint"], k=k,
                            reimpose=reimpose),
                )  # fmt: skip
        share = [] if c.synthetic_share is None else ["--data.init_args.synthetic_share", str(c.synthetic_share)]
        rows = {"real": {"real": True, "synthetic": None, "extra": []}}
        for name, made in blends.items():
            extra = ["--data.init_args.extra_train_dirs", json.dumps([made["dataset"]])]
            if c.synthetic_only and not name.endswith("_reimposed"):
                rows[f"synthetic_{name}"] = {
                    "real": False, "synthetic": name, "extra": [*extra, "--data.init_args.train_split", "synthetic"]
                }  # fmt: skip
            rows[f"real+synthetic_{name}"] = {"real": True, "synthetic": name, "extra": [*extra, *share]}
        for name, row in rows.items():
            record = self.step(
                self.out / "segmenter" / name, f"segmenter {name}: train {c.segmenter_steps} steps and test",
                partial(self.train_segmenter, extra=row.pop("extra")),
            )  # fmt: skip
            row.update(record)
        results = {
            "autoencoder": autoencoder,
            "ldm": ldm,
            "blends": blends,
            "segmenter_steps": c.segmenter_steps,
            "synthetic_share": c.synthetic_share,
            "blend": c.blend,
            "rows": rows,
        }
        write_report(self.out, results)
        return results


# --------------------------------------------------------------------------------------- report


def table(results: dict) -> str:
    """Lim et al.'s Table 1 layout: latent selection, real / synthetic, precision, recall, DSC (mean +- SD)."""
    lines = [
        "| latent selection | real | synthetic | n synthetic | precision | recall | DSC |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"].values():
        blend = results["blends"].get(row["synthetic"]) if row["synthetic"] else None
        selection = "-" if blend is None else f"SSIM top {blend['top_k']}"
        if row["synthetic"] and row["synthetic"].endswith("_reimposed"):
            selection += " (re-imposed)"
        m = row["metrics"]
        cells = [
            selection,
            "yes" if row["real"] else "",
            "yes" if row["synthetic"] else "",
            str(blend["count"]) if blend else "-",
            *[f"{m[s]:.3f} +- {m[f'{s}_sd']:.3f}" for s in ("precision", "recall", "dsc")],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict) -> None:
    first = next(iter(results["rows"].values()))
    autoencoder = results["autoencoder"]
    first_stage = (
        "the autoencoder inside the LDM checkpoint"
        if autoencoder["checkpoint"] is None
        else f"autoencoder {autoencoder['global_step']} steps"
    )
    galleries = [
        f"- top {b['top_k']}: blend/{name}/data/gallery.png"
        + (f" ({b['skipped_empty_guides']} guides skipped: empty mask)" if b.get("skipped_empty_guides") else "")
        for name, b in results["blends"].items()
    ]
    text = [
        "# Anatomy-guided latent blending: segmentation with synthetic pairs (Lim et al., Table 1 layout)",
        "",
        table(results),
        "",
        f"Every segmenter: {results['segmenter_steps']} optimizer steps, last checkpoint, tested on "
        f"{first['metrics']['n_images']} hold-out images (mean +- SD over images); real + synthetic rows draw "
        + (
            "every pair once per epoch"
            if results["synthetic_share"] is None
            else f"{results['synthetic_share']:.0%} of each epoch from the synthetic pairs"
        )
        + f". Generators: {first_stage}, "
        f"LDM {results['ldm']['global_step']} steps on "
        f"{results['ldm']['train_images']} images that exclude every synthesis partner.",
        "",
        "Galleries (labelled | unlabelled partner | synthetic):",
        *galleries,
        "",
    ]
    atomic_write_bytes(out / "results.md", "\n".join(text).encode())
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
