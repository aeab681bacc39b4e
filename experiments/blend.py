"""The augmentation study of Lim et al. (Table 1), end to end and resumable.

1. The autoencoder and the LDM are trained (or taken from checkpoints) on the generators' split: the
   unlabelled pool without the images kept for synthesis (the ``PanoramicDataModule`` splits);
2. for each k and each blend variant (``variants``: the strength, the compositing, re-imposition; by
   default the paper's literal strength, steps / T), ``xraydiff blend`` pairs every labelled training image
   with its top-k unlabelled partners (latent SSIM) from the synthesis split: (images x k) pairs, with the
   anatomy-survival check of each pair; ``composite: copy_paste`` is the control without diffusion;
3. the segmenter is trained on real only, and on synthetic only and real + synthetic for each blend,
   all with the same budget (``segmenter_steps`` optimizer steps, no validation during training, real +
   synthetic epochs ``synthetic_share`` synthetic), once per seed of ``seeds``, and tested on the hold-out
   set from its last checkpoint;
4. ``results.json`` / ``results.md``: precision, recall, DSC mean +- SD over images (per image averaged
   over the seeds; the paper's layout), each row's paired per-image DSC difference against real only with
   its bootstrap 95 % interval ("beats" only where it excludes 0), the survival check, the galleries.

Every config of the study must split the data alike (same root, fractions and seed: the ``data``
overrides apply to all of them); the blend refuses partners the generators were trained on.
Each training, blend and test is a step with its own folder (``experiments.steps``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from commands.lightning_cli import data_parser
from experiments.steps import StepRunner, StudyCommand, read_experiment
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.diffusion.blending import COMPOSITES
from xraydiff.errors import DataError
from xraydiff.metrics import SEGMENTATION_SCORES, paired_difference, summarize_segmentation

# options of ``commands.blend.run_blend`` a study sets, shared (``blend``) or per variant (``variants``)
BLEND_KEYS = ("steps", "strength", "dilation", "mask_mode", "batch_size", "seed", "composite", "reimpose")
# without ``variants``: one blend of the shared ``blend`` options (its strength, or run_blend's default steps / T,
# Lim et al.'s Appendix A read literally); a variant never overrides what it does not name
DEFAULT_VARIANTS = ({"name": "blend"},)


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
    blend: dict[str, Any] = field(default_factory=dict)  # BLEND_KEYS shared by every variant
    # one blend per k and variant: {name, BLEND_KEYS overriding ``blend``}
    variants: list[dict[str, Any]] = field(default_factory=lambda: [dict(v) for v in DEFAULT_VARIANTS])
    seeds: list[int] = field(default_factory=lambda: [0])  # of the segmenter (seed_everything), one run each
    synthetic_only: bool = True  # the paper's "synthetic only" rows (not for re-imposed or copy-paste blends)
    # of real + synthetic epochs: a fixed half, so that a real image is seen as often whatever k is (null:
    # every pair once per epoch, 83 % synthetic at k = 5 with 22 guides)
    synthetic_share: float | None = 0.5
    precision: str = "auto"  # of the blending

    def blend_options(self, variant: dict) -> dict:
        """The ``run_blend`` options of one variant: the shared ``blend`` with what the variant names on top."""
        return {**self.blend, **{key: v for key, v in variant.items() if key != "name"}}


def check_blend_options(options: dict, path: Path, line: int | None, where: str) -> None:
    """DataError naming the file and line for an unknown or ill-typed blend option of the study config."""
    if not isinstance(options, dict):
        raise DataError(path, f"{where} must be a mapping of {BLEND_KEYS}", line)
    unknown = set(options) - set(BLEND_KEYS)
    if unknown:
        raise DataError(path, f"{where}: unknown key(s) {sorted(unknown)} (known: {BLEND_KEYS})", line)
    strength = options.get("strength")
    if strength is not None and (
        isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1
    ):
        raise DataError(path, f"{where}: strength must be in (0, 1] or null (steps / T), got {strength!r}", line)
    if options.get("composite", "latent") not in COMPOSITES:
        raise DataError(path, f"{where}: composite must be one of {COMPOSITES}, got {options['composite']!r}", line)


def load_blend_study_config(path: Path) -> BlendStudyConfig:
    """Read and check an ``experiment:`` config of the blend study; errors name the file and line."""
    path = Path(path)
    fields = set(BlendStudyConfig.__dataclass_fields__)
    section, lines = read_experiment(path, fields | {"reimpose_k"}, ("ldm", "segmenter", "top_k", "segmenter_steps"))
    if "reimpose_k" in section:
        raise DataError(
            path,
            "experiment.reimpose_k is gone: a re-imposed blend is a variant, e.g. "
            "variants: [{name: paper}, {name: reimposed, reimpose: true}] (for every k of top_k)",
            lines.get(("experiment", "reimpose_k")),
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
    check_blend_options(blend, path, lines.get(("experiment", "blend")), "experiment.blend")
    variants = section.get("variants", [dict(v) for v in DEFAULT_VARIANTS])
    if not isinstance(variants, list) or not variants:
        raise DataError(path, "experiment.variants must list mappings", lines.get(("experiment", "variants")))
    for i, variant in enumerate(variants):
        line = lines.get(("experiment", "variants", i))
        name = variant.get("name") if isinstance(variant, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise DataError(path, "every experiment.variants entry needs a name of letters, digits, . _ -", line)
        check_blend_options({k: v for k, v in variant.items() if k != "name"}, path, line, f"variant {name}")
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise DataError(path, f"experiment.variants: names repeat ({names})", lines.get(("experiment", "variants")))
    seeds = section.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise DataError(path, "experiment.seeds must list distinct integers", lines.get(("experiment", "seeds")))
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
    values = {k: v for k, v in section.items() if k not in ("autoencoder", "ldm", "segmenter", "top_k")}
    return BlendStudyConfig(
        **{
            **values,
            "autoencoder": None if section.get("autoencoder") is None else spec("autoencoder"),
            "ldm": ldm,
            "segmenter": spec("segmenter"),
            "top_k": top_k,
            "blend": dict(blend),
            "variants": [dict(v) for v in variants],
            "seeds": list(seeds),
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

    def blend(self, folder: Path, ldm: str, autoencoder: str | None, k: int, variant: dict) -> dict:
        from commands.blend import run_blend

        parser = data_parser("experiment blend", "")
        args = [*[a for f in self.config.segmenter.config for a in ("--config", f)], *self.data_args(self.config.data)]
        datamodule = parser.instantiate_classes(parser.parse_args(args)).data
        options = self.config.blend_options(variant)
        manifest = run_blend(
            Path(ldm), datamodule, folder / "data", k,
            autoencoder=None if autoencoder is None else Path(autoencoder),
            precision=self.config.precision, log=self.log, **options,
        )  # fmt: skip
        return {
            "dataset": str((folder / "data").resolve()),
            "count": manifest["count"],
            "top_k": k,
            "variant": variant["name"],
            **{key: manifest[key] for key in ("composite", "strength", "t_start", "reimpose", "survival")},
            "skipped_empty_guides": len(manifest["skipped_empty_guides"]),
        }

    def train_segmenter(self, folder: Path, extra: list[str], seed: int) -> dict:
        """Exactly ``segmenter_steps`` optimizer steps, no validation, then the test on the hold-out set."""
        c = self.config
        common = [*self._common(c.segmenter), *extra, "--seed_everything", seed]
        self.cli(
            [
                "fit", *common,
                "--trainer.max_steps", c.segmenter_steps, "--trainer.max_epochs", "-1", "--trainer.max_time", "null",
                "--trainer.limit_val_batches", "0", "--ckpt_path", "last", *self.run_folder_args(folder),
            ]
        )  # fmt: skip
        checkpoint = folder / "checkpoints" / "last.ckpt"
        self.cli(["test", *common, "--ckpt_path", checkpoint, *self.run_folder_args(folder)])
        metrics = json.loads((folder / "test_metrics.json").read_text())
        return {**self._record(checkpoint), "seed": seed, "metrics": metrics}

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
            for variant in c.variants:
                name = f"k{k}_{variant['name']}"
                blends[name] = self.step(
                    self.out / "blend" / name, f"blend top-{k} {variant['name']}",
                    partial(self.blend, ldm=ldm["checkpoint"], autoencoder=autoencoder["checkpoint"], k=k,
                            variant=variant),
                )  # fmt: skip
        share = [] if c.synthetic_share is None else ["--data.init_args.synthetic_share", str(c.synthetic_share)]
        rows = {"real": {"real": True, "synthetic": None, "extra": []}}
        for name, made in blends.items():
            extra = ["--data.init_args.extra_train_dirs", json.dumps([made["dataset"]])]
            if c.synthetic_only and not made["reimpose"] and made["composite"] != "copy_paste":
                rows[f"synthetic_{name}"] = {
                    "real": False, "synthetic": name, "extra": [*extra, "--data.init_args.train_split", "synthetic"]
                }  # fmt: skip
            rows[f"real+synthetic_{name}"] = {"real": True, "synthetic": name, "extra": [*extra, *share]}
        for name, row in rows.items():
            extra = row.pop("extra")
            row["runs"] = [
                self.step(
                    self.out / "segmenter" / name / f"seed{seed}",
                    f"segmenter {name} seed {seed}: train {c.segmenter_steps} steps and test",
                    partial(self.train_segmenter, extra=extra, seed=seed),
                )  # fmt: skip
                for seed in c.seeds
            ]
            row.update({key: row["runs"][0][key] for key in ("train_images", "synthetic_images")})
            row.update(seed_average(row["runs"]))
        for name, row in rows.items():
            if name != "real":
                row["paired_dsc"] = paired_difference(*common_images(row, rows["real"]))
        results = {
            "autoencoder": autoencoder,
            "ldm": ldm,
            "blends": blends,
            "segmenter_steps": c.segmenter_steps,
            "seeds": c.seeds,
            "synthetic_share": c.synthetic_share,
            "blend": c.blend,
            "variants": c.variants,
            "rows": rows,
        }
        write_report(self.out, results)
        return results


def seed_average(runs: list[dict]) -> dict:
    """Per test image the scores averaged over the segmenter's seeds, and their mean +- SD over images
    (``metrics``), beside each seed's own mean DSC (``dsc_by_seed``)."""
    ids = sorted(set.intersection(*(set(r["metrics"]["per_image"]) for r in runs)))
    if not ids:
        raise DataError(None, "the segmenter runs of a row share no test image")
    per_image = {
        i: {s: float(sum(r["metrics"]["per_image"][i][s] for r in runs) / len(runs)) for s in SEGMENTATION_SCORES}
        for i in ids
    }
    scores = torch.tensor([[per_image[i][s] for s in SEGMENTATION_SCORES] for i in ids], dtype=torch.float64)
    return {
        "metrics": summarize_segmentation(scores),
        "per_image": per_image,
        "dsc_by_seed": [r["metrics"]["dsc"] for r in runs],
    }


def common_images(row: dict, reference: dict) -> tuple[list[float], list[float]]:
    """Per-image DSC of ``row`` and of ``reference`` on the test images both hold, in one order."""
    ids = [i for i in row["per_image"] if i in reference["per_image"]]
    return [row["per_image"][i]["dsc"] for i in ids], [reference["per_image"][i]["dsc"] for i in ids]


# --------------------------------------------------------------------------------------- report


VERDICTS = {"higher": "beats real only", "lower": "below real only", "no difference shown": "no difference shown"}


def blend_label(blend: dict) -> str:
    if blend["composite"] == "copy_paste":
        return "copy-paste (no diffusion)"
    where = "latent" if blend["composite"] == "latent" else "pixel composite"
    return f"LDM from t = {blend['t_start']} ({where}{', re-imposed' if blend['reimpose'] else ''})"


def table(results: dict) -> str:
    """Lim et al.'s Table 1 layout (latent selection, real / synthetic, precision, recall, DSC mean +- SD over
    images) with the blend, its anatomy survival and the paired DSC difference against real only."""
    lines = [
        "| latent selection | blend | real | synthetic | n synthetic | survival r in / out, median (IQR) | precision "
        "| recall | DSC | DSC - real only [95 % CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"].values():
        blend = results["blends"].get(row["synthetic"]) if row["synthetic"] else None
        survival = (blend or {}).get("survival") or {}
        m = row["metrics"]
        paired = row.get("paired_dsc")
        cells = [
            "-" if blend is None else f"SSIM top {blend['top_k']}",
            "-" if blend is None else blend_label(blend),
            "yes" if row["real"] else "",
            "yes" if row["synthetic"] else "",
            str(blend["count"]) if blend else "-",
            " / ".join(
                f"{q['median']:.2f} ({q['q25']:.2f}-{q['q75']:.2f})" for q in (survival["inside"], survival["outside"])
            )
            if survival.get("inside")
            else "-",
            *[f"{m[s]:.3f} +- {m[f'{s}_sd']:.3f}" for s in SEGMENTATION_SCORES],
            "-"
            if paired is None
            else f"{paired['mean_difference']:+.3f} [{paired['ci95'][0]:+.3f}, "
            f"{paired['ci95'][1]:+.3f}] {VERDICTS[paired['verdict']]}",
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
        f"- top {b['top_k']}, {blend_label(b)}: blend/{name}/data/gallery.png"
        + (f" ({b['skipped_empty_guides']} guides skipped: empty mask)" if b.get("skipped_empty_guides") else "")
        for name, b in results["blends"].items()
    ]
    seeds = results["seeds"]
    text = [
        "# Anatomy-guided latent blending: segmentation with synthetic pairs (Lim et al., Table 1 layout)",
        "",
        table(results),
        "",
        f"Every segmenter: {results['segmenter_steps']} optimizer steps, last checkpoint, once per seed "
        f"({', '.join(map(str, seeds))}), tested on {first['metrics']['n_images']} hold-out images; scores per "
        f"image averaged over the {len(seeds)} seed{'s' if len(seeds) > 1 else ''}, then mean +- SD over images. "
        "Real + synthetic rows draw "
        + (
            "every pair once per epoch"
            if results["synthetic_share"] is None
            else f"{results['synthetic_share']:.0%} of each epoch from the synthetic pairs"
        )
        + ". The last column is the mean per-image DSC difference against real only with its 95 % bootstrap "
        "interval (images resampled with their pair); a row beats real only only where the interval excludes 0. "
        "Survival: median (interquartile range) over the pairs of Pearson's r between the synthetic image and the "
        "guide's reconstruction (the guide itself for copy-paste) inside the guide's mask / outside the blended region "
        f"(`survival` in each blend's manifest.json). Generators: {first_stage}, "
        f"LDM {results['ldm']['global_step']} steps on "
        f"{results['ldm']['train_images']} images that exclude every synthesis partner.",
        "",
        "Galleries (labelled | unlabelled partner | synthetic):",
        *galleries,
        "",
    ]
    atomic_write_bytes(out / "results.md", "\n".join(text).encode())
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())


def _run(config_path: Path, out: Path) -> str:
    results = BlendStudy(load_blend_study_config(config_path), out).run()
    return table(results) + f"\nwrote {out}/results.md and results.json"


STUDY = StudyCommand(
    name="blend",
    summary="latent-blending augmentation of a segmenter (Lim et al., Table 1)",
    description="Lim et al.'s Table 1: generators, latent blending for each k, the segmenter on real, "
    "synthetic and real + synthetic pairs, tested on the hold-out set. Resumable: finished steps are kept.",
    run=_run,
)
