"""The augmentation study of Lim et al. (Table 1), end to end and resumable.

1. The autoencoder and the LDM are trained (or taken from checkpoints) on the generators' split: the
   unlabelled pool without the images kept for synthesis (the ``PanoramicDataModule`` splits);
2. for each k and each blend variant (``variants``: the strength, the compositing, re-imposition; by
   default the paper's literal strength, steps / T), ``xraydiff blend`` pairs every labelled training image
   with its top-k unlabelled partners (latent SSIM) from the synthesis split: (images x k) pairs, with the
   anatomy-survival check of each pair; ``composite: copy_paste`` is the control without diffusion; the
   share of each blend's images that are near copies of the LDM's training images (``xraydiff novelty``
   against the generators' split, calibrated on the validation split);
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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch

from commands.options import BlendOptions as CommandOptions
from commands.options import BlendSettings, NoveltyOptions, NoveltySettings, Precision
from commands.parsing import data_parser
from experiments.schema import Named, fail, option, read_study_config
from experiments.steps import StepRunner, StudyCommand
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.errors import DataError
from xraydiff.metrics import (
    SEGMENTATION_SCORES,
    common_image_rows,
    describe_paired,
    describe_rate,
    paired_difference,
    seed_spread,
    summarize_segmentation,
)
from xraydiff.options import values
from xraydiff.precision import AUTO


# without ``variants``: one blend of the shared ``blend`` options (its strength, or run_blend's default steps / T,
# Lim et al.'s Appendix A read literally); a variant never overrides what it does not name
@dataclass
class ModelSpec:
    """A model of the study: its LightningCLI config(s), overrides, and optionally a ready checkpoint."""

    config: list[str] = option(default_factory=list, file=True)
    args: list[Any] = option(default_factory=list, pairs=True)
    ckpt: str | None = option(None, file=True)

    def __post_init__(self):
        self.args = [str(a) for a in self.args]


@dataclass(kw_only=True)
class BlendOptions(BlendSettings, Named):
    """The options of ``xraydiff blend`` a study sets (``commands.options.BlendSettings``), shared or per variant."""


@dataclass(kw_only=True)
class Variant(BlendOptions):
    name: str = option(pattern=r"[A-Za-z0-9_.-]+")


@dataclass(kw_only=True)
class LdmNovelty(NoveltySettings):
    """How the blends are compared with the LDM's training images (``xraydiff novelty``)."""

    split: str = option("generator", help="the LDM's training images")


@dataclass
class BlendStudyConfig:
    ldm: ModelSpec
    segmenter: ModelSpec
    top_k: list[int] = option(nonempty=True, distinct=True, min=1)
    segmenter_steps: int = option(min=1)
    autoencoder: ModelSpec | None = None  # None: the autoencoder inside the given LDM checkpoint
    data: dict[str, Any] = field(default_factory=dict)  # overrides of every config's data.init_args
    blend: BlendOptions = field(default_factory=dict)  # shared by every variant
    # one blend per k and variant: its name and the options overriding ``blend``
    variants: list[Variant] = option(default_factory=lambda: [{"name": "blend"}], nonempty=True)
    seeds: list[int] = option(default_factory=lambda: [0], nonempty=True, distinct=True)  # of the segmenter
    synthetic_only: bool = True  # the paper's "synthetic only" rows (not for re-imposed or copy-paste blends)
    # of real + synthetic epochs: a fixed half, so that a real image is seen as often whatever k is (null:
    # every pair once per epoch, 83 % synthetic at k = 5 with 22 guides)
    synthetic_share: float | None = option(0.5, min=0, below=1)
    precision: Precision = AUTO  # of the blending
    novelty: LdmNovelty = field(default_factory=LdmNovelty)  # near copies of the LDM's training images

    retired: ClassVar[dict[str, str]] = {
        "reimpose_k": "is gone: a re-imposed blend is a variant, e.g. "
        "variants: [{name: paper}, {name: reimposed, reimpose: true}] (for every k of top_k)"
    }

    def blend_options(self, variant: dict) -> dict:
        """The ``run_blend`` options of one variant: the shared ``blend`` with what the variant names on top."""
        return {**self.blend, **{key: v for key, v in variant.items() if key != "name"}}


def load_blend_study_config(path: Path) -> BlendStudyConfig:
    """Read and check an ``experiment:`` config of the blend study (``experiments.schema``), then what relates
    its keys: which models need a config, variant names, the autoencoder's source."""
    config, lines = read_study_config(path, BlendStudyConfig)
    specs = {"ldm": config.ldm, "segmenter": config.segmenter, "autoencoder": config.autoencoder}
    for name, spec in specs.items():
        if spec is not None and not spec.config and (name == "segmenter" or spec.ckpt is None):
            fail(path, lines, ("experiment", name), f"experiment.{name} needs a config or a ckpt")
    names = [v["name"] for v in config.variants]
    if len(set(names)) != len(names):
        fail(path, lines, ("experiment", "variants"), f"experiment.variants: names repeat ({names})")
    if config.autoencoder is None and config.ldm.ckpt is None:
        fail(
            path, lines, ("experiment", "ldm"),
            "experiment.autoencoder is needed unless experiment.ldm gives a ckpt (whose autoencoder is used)",
        )  # fmt: skip
    return config


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

    def _datamodule(self):
        """The study's data (the segmenter config's data section with the study's overrides), not set up."""
        parser = data_parser("experiment blend", "")
        args = [*[a for f in self.config.segmenter.config for a in ("--config", f)], *self.data_args(self.config.data)]
        return parser.instantiate_classes(parser.parse_args(args)).data

    def blend(self, folder: Path, ldm: str, autoencoder: str | None, k: int, variant: dict) -> dict:
        from commands.blend import run_blend

        datamodule = self._datamodule()
        options = CommandOptions(
            ldm=Path(ldm), out=folder / "data", top_k=k, autoencoder=None if autoencoder is None else Path(autoencoder),
            precision=self.config.precision, **self.config.blend_options(variant),
        )  # fmt: skip
        manifest = run_blend(options, datamodule, log=self.log)
        return {
            "dataset": str((folder / "data").resolve()),
            "count": manifest["count"],
            "top_k": k,
            "variant": variant["name"],
            **{key: manifest[key] for key in ("composite", "strength", "t_start", "reimpose", "survival")},
            "skipped_empty_guides": len(manifest["skipped_empty_guides"]),
        }

    def near_copies(self, folder: Path, dataset: str) -> dict:
        """``xraydiff novelty`` of a blend's images against the LDM's training images, at the images' size."""
        from commands.novelty import check_novelty, summary

        options = NoveltyOptions(**values(self.config.novelty), samples=Path(dataset), out=folder / "report")
        return summary(check_novelty(options, self._datamodule(), log=self.log), options.out)

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
        copies = {
            name: self.step(
                self.out / "novelty" / name,
                f"near copies of the LDM's training images: {name}",
                partial(self.near_copies, dataset=made["dataset"]),
            )  # fmt: skip
            for name, made in blends.items()
        }
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
                row["paired_dsc"] = paired_difference(*seed_scores(row, rows["real"]))
        results = {
            "autoencoder": autoencoder,
            "ldm": ldm,
            "blends": blends,
            "near_copies": copies,
            "novelty": values(c.novelty),
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


def seed_scores(row: dict, reference: dict) -> tuple[list[list[float]], list[list[float]]]:
    """Per-image DSC (seeds, images) of ``row`` and of ``reference`` (``common_image_rows``)."""

    def dsc(runs: list[dict]) -> list[dict[str, float]]:
        return [{i: scores["dsc"] for i, scores in r["metrics"]["per_image"].items()} for r in runs]

    return common_image_rows(dsc(row["runs"]), dsc(reference["runs"]))


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
        "| latent selection | blend | real | synthetic | n synthetic | survival r in / out, median (IQR) | near copies "
        "[95 % CI] | precision | recall | DSC | seeds (seed SD of DSC) | DSC - real only [95 % CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    near = results.get("near_copies", {})  # absent in studies run before the near-copy check
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
            describe_rate(copies["near_copies"], copies["n"]) if (copies := near.get(row["synthetic"])) else "-",
            *[f"{m[s]:.3f} +- {m[f'{s}_sd']:.3f}" for s in SEGMENTATION_SCORES],
            seed_spread(row["dsc_by_seed"]),
            "-" if paired is None else describe_paired(paired, VERDICTS),
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
    novelty = results.get("novelty") or values(LdmNovelty())
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
        + ". The last column is the mean per-image DSC difference against real only with its 95 % interval over "
        "the test images (paired) and each row's training seeds (Student t with Welch-Satterthwaite degrees of "
        "freedom, `xraydiff.metrics.paired_difference`; with one seed a bootstrap over images, marked 'one "
        "training seed'); a row beats real only only where the interval excludes 0. "
        "Survival: median (interquartile range) over the pairs of Pearson's r between the synthetic image and the "
        "guide's reconstruction (the guide itself for copy-paste) inside the guide's mask / outside the blended region "
        f"(`survival` in each blend's manifest.json). Near copies: the blend's images closer to an image of the "
        f"'{novelty['split']}' split (what the LDM trained on) than all but {novelty['level']:.0%} of the real "
        f"'{novelty['held_out']}' images are (`xraydiff novelty`; each blend's threshold, and how it was found, in "
        "results.json), with Wilson 95 % intervals. "
        f"Generators: {first_stage}, "
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
    schema=BlendStudyConfig,
    run=_run,
)
