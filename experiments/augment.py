"""The synthetic-augmentation study of Hadzic et al., end to end and resumable.

For each training-set size (FullDataset and the 10 % ReducedDataset):

1. every generator (paired DDPM, VAE) is trained on that training set, or taken from a checkpoint;
2. shape statistics are fitted from the training set at the generator's size;
3. the acceptance rate is measured by the paper's protocol (runs x samples, Table 1);
4. ``num_samples`` pairs are sampled; their near copies of the generator's training set are counted
   (``xraydiff novelty``, calibrated on the validation split); the pairs are checked and the accepted ones
   become a dataset;
5. the localizer is trained on real only and on real + each generator's accepted pairs, then
   tested (Table 2: point error mean +- SD and outlier counts).

Each step writes its outputs into its own folder under ``--out`` and a ``done.json`` marker last;
a step whose marker exists is not recomputed, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from commands.acceptance import acceptance_rate_of_checkpoint
from commands.options import AcceptanceRateOptions, NoveltyOptions, NoveltySettings, SampleOptions, SamplingSettings
from commands.parsing import data_parser
from commands.sampling import generate_samples
from experiments.schema import fail, option, read_study_config
from experiments.steps import StepRunner, StudyCommand, seeded
from xraydiff.checkpoints import CHECKPOINT_KEY, read_checkpoint
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.diffusion import choices
from xraydiff.diffusion.choices import DEFAULT_SAMPLER, Sampler
from xraydiff.errors import DataError
from xraydiff.metrics import (
    common_image_rows,
    describe_paired,
    describe_rate,
    paired_difference,
    rate_difference,
    seed_spread,
)
from xraydiff.options import values
from xraydiff.precision import resolve_precision

# What identifies a training set: a generator row's checkpoint must agree with its row on all of these.
# (The data's location may differ between machines, so it is recorded but not compared.)
TRAIN_SET_KEYS = ("anatomy", "split", "train_fraction", "seed", "train_images")


# --------------------------------------------------------------------------------------- config


@dataclass
class GeneratorSpec:
    """A generator of the study: a fit config (and overrides), and optionally ready checkpoints.

    ``ckpt`` maps a training-set name to a checkpoint trained on exactly that training set (the
    checkpoint records its training set, which the study checks); sets without one are trained here.
    """

    config: list[str] = option(nonempty=True, file=True)  # its data section is the study's
    args: list[Any] = option(default_factory=list, pairs=True)
    ckpt: dict[str, str] | str = option(default_factory=dict, file=True)
    sets: list[str] | None = None  # the training sets this generator is run on (default: all)

    def __post_init__(self):
        self.args = [str(a) for a in self.args]


@dataclass(kw_only=True)
class StudyConfig(SamplingSettings):
    data: dict[str, Any]  # overrides of every sub-config's data.init_args (root, split_dir, ...)
    generators: dict[str, GeneratorSpec] = option(nonempty=True)
    localizer: GeneratorSpec = option()
    # training seeds of each localizer row: Table 2 compares the rows over test images and these seeds
    localizer_seeds: list[int] = option(default_factory=lambda: [0], nonempty=True, distinct=True)
    training_sets: dict[str, float] = option(
        default_factory=lambda: {"full": 1.0, "reduced": 0.1}, nonempty=True, above=0, max=1
    )
    num_samples: int = option(400, min=1)
    # DDIM 10 (at the generator's eta): the cheapest sampler whose acceptance overlaps DDIM 100's (docs/hands.md)
    sampler: Sampler | None = DEFAULT_SAMPLER
    steps: int | None = option(10, min=1)
    rate_runs: int = option(10, min=1)
    rate_samples: int = option(100, min=1)
    # "runs": the paper's protocol, rate_runs separate draws of rate_samples; "augmentation": the
    # augmentation draw's verdicts split into rate_runs consecutive runs of rate_samples (no extra
    # sampling; each batch has its own seed, so the runs are still independent draws)
    rate_source: Literal["runs", "augmentation"] = "runs"
    synthetic_share: float | None = None
    acceptance: dict[str, Any] = field(default_factory=dict)
    # how the augmentation draw is compared with its generator's training set (near copies, Table 1)
    novelty: NoveltySettings = field(default_factory=NoveltySettings)
    outlier_radii: list[float] = option(default_factory=lambda: [2.0, 4.0, 10.0, 20.0], nonempty=True, above=0)


def load_study_config(path: Path) -> StudyConfig:
    """Read and check an ``experiment:`` config (``experiments.schema``), then what relates its keys: the
    training sets a generator's checkpoints and sets name, and the augmentation draw's size."""
    config, lines = read_study_config(path, StudyConfig)
    for name, spec in [
        *(((("generators", n), g) for n, g in config.generators.items())),
        (("localizer",), config.localizer),
    ]:
        key = ("experiment", *name)
        where = ".".join(key)
        if isinstance(spec.ckpt, str):
            if len(config.training_sets) != 1:
                fail(
                    path, lines, (*key, "ckpt"),
                    f"{where}.ckpt: a checkpoint is trained on one training set; map each training set to its own "
                    f"checkpoint ({{{', '.join(f'{s}: ...' for s in config.training_sets)}}})",
                )  # fmt: skip
            spec.ckpt = {next(iter(config.training_sets)): spec.ckpt}
        for field_name, names in (("ckpt", spec.ckpt), ("sets", spec.sets or [])):
            for set_name in names:
                if set_name not in config.training_sets:
                    fail(path, lines, (*key, field_name), f"{where}.{field_name}: no training set '{set_name}'")
    if config.rate_source == "augmentation" and config.rate_runs * config.rate_samples > config.num_samples:
        fail(
            path, lines, ("experiment", "rate_source"),
            f"rate_source 'augmentation' splits the {config.num_samples} augmentation samples into runs: "
            f"rate_runs x rate_samples ({config.rate_runs} x {config.rate_samples}) must not exceed num_samples",
        )  # fmt: skip
    return config


# ---------------------------------------------------------------------------------------- steps


class Study(StepRunner):
    """Runs the steps of the study into ``out``; see the module docstring."""

    command = "experiment augment"

    def __init__(self, config: StudyConfig, out: Path, log=print):
        super().__init__(out, log)
        self.config = config

    def _data_args(self, fraction: float, extra: dict | None = None) -> list[str]:
        return self.data_args({**self.config.data, "train_fraction": fraction, **(extra or {})})

    # -- generators

    def train_generator(self, folder: Path, name: str, spec: GeneratorSpec, set_name: str, fraction: float) -> dict:
        """Train the generator on the training set (or take its checkpoint); record what it was trained on."""
        expected = self._datamodule(spec, fraction, annotations_only=True).training_set_description()
        if set_name in spec.ckpt:
            checkpoint = str(Path(spec.ckpt[set_name]).resolve())
            trained = False
        else:
            args = [
                "fit",
                *[a for c in spec.config for a in ("--config", c)],
                *spec.args,
                *self._data_args(fraction),
                *self.run_folder_args(folder / "run"),
            ]
            self.cli(args)
            checkpoint, trained = str((folder / "run/checkpoints/last.ckpt").resolve()), True
        saved = read_checkpoint(checkpoint)
        train_data = saved[CHECKPOINT_KEY].get("train_data")
        if train_data is None:
            raise DataError(checkpoint, "checkpoint does not record the training set it was trained on")
        mismatch = {k: (train_data.get(k), expected[k]) for k in TRAIN_SET_KEYS if train_data.get(k) != expected[k]}
        if mismatch:
            raise DataError(
                checkpoint,
                f"{name} was trained on another training set than '{set_name}' "
                f"({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in mismatch.items())}); "
                "each row needs a generator trained on exactly its training set",
            )
        self.log(
            f"       {name}/{set_name}: {'trained here' if trained else f'checkpoint {checkpoint}'}, "
            f"{saved['global_step']} steps on {train_data['train_images']} real images of {train_data['source']}"
        )
        return {
            "checkpoint": checkpoint,
            "trained": trained,
            "global_step": int(saved["global_step"]),
            "train_images": int(train_data["train_images"]),
            "train_data": train_data,
        }

    def fit_statistics(self, folder: Path, spec: GeneratorSpec, fraction: float, checkpoint: str) -> dict:
        from lightning_modules.generative import load_model
        from xraydiff.acceptance.config import AcceptanceConfig
        from xraydiff.acceptance.statistics import ShapeStatistics

        model = load_model(checkpoint)
        # Annotations only: the true image sizes still frame the landmarks where the images are present.
        datamodule = self._datamodule(spec, fraction, model.image_size, annotations_only=True)
        shapes, spacing, frame = datamodule.shape_table("train")
        config = AcceptanceConfig(**self.config.acceptance)
        stats = ShapeStatistics.fit(shapes, spacing, model.image_size, datamodule.anatomy, config, frame)
        stats.save(folder / "stats.json")
        return {"stats": str(folder / "stats.json"), "shapes": int(stats.num_shapes)}

    def _datamodule(self, spec: GeneratorSpec, fraction: float, image_size=None, annotations_only: bool = False):
        """The real data of a sub-config (its data section with the study's overrides)."""
        parser = data_parser("study", "")
        extra: dict = {"annotations_only": annotations_only}
        if image_size is not None:
            extra["image_size"] = list(image_size)
        args = [a for c in spec.config for a in ("--config", c)] + self._data_args(fraction, extra)
        datamodule = parser.instantiate_classes(parser.parse_args(args)).data
        datamodule.setup()
        return datamodule

    def acceptance_rate(self, folder: Path, checkpoint: str, stats: str) -> dict:
        c = self.config
        sampler, steps = self._sampling(checkpoint)
        options = AcceptanceRateOptions(
            **values(c, SamplingSettings, ("sampler", "steps")), sampler=sampler, steps=steps,
            ckpt_path=Path(checkpoint), stats=Path(stats), out=folder, runs=c.rate_runs, num_samples=c.rate_samples,
        )  # fmt: skip
        result = acceptance_rate_of_checkpoint(options, cache=self.out / "cache")
        self.log(result["table"])
        return {"mean": result["mean"], "sd": result["sd"], "by_rule_set": result["by_rule_set"]}

    def rate_from_samples(self, folder: Path, report: Path) -> dict:
        """The acceptance rate of ``rate_runs`` consecutive runs of ``rate_samples`` of the augmentation
        draw's verdicts (``rate_source: augmentation``): mean and SD over the runs, per rule set."""
        from xraydiff.acceptance.config import RULE_SETS
        from xraydiff.acceptance.rate import rate_statistics

        c = self.config
        verdicts = json.loads(Path(report).read_text())["samples"]
        runs = [verdicts[r * c.rate_samples : (r + 1) * c.rate_samples] for r in range(c.rate_runs)]
        rule_set = self.config.acceptance.get("rule_set", "strict")
        per_run = [
            {name: float(np.mean([v["accepted_by_rule_set"][name] for v in run])) for name in RULE_SETS} for run in runs
        ]
        by_rule_set = {
            name: dict(zip(("mean", "sd"), rate_statistics([r[name] for r in per_run]), strict=True))
            for name in RULE_SETS
        }
        mean, sd = by_rule_set[rule_set]["mean"], by_rule_set[rule_set]["sd"]
        rates = ", ".join(f"{r[rule_set]:.1%}" for r in per_run)
        self.log(
            f"acceptance rate ({rule_set}): {mean:.1%} (+-{sd:.1%} SD) over {c.rate_runs} runs of {c.rate_samples} "
            f"of the augmentation samples ({rates})"
        )
        return {"mean": mean, "sd": sd, "by_rule_set": by_rule_set, "per_run": per_run, "source": "augmentation"}

    def _sampling(self, checkpoint: str) -> tuple[str | None, int | None]:
        """(sampler, steps) of the study for this generator: none for a VAE (it samples its prior),
        steps only for DDIM (the DDPM chain always runs T steps)."""
        from lightning_modules.generative import load_model

        if load_model(checkpoint).sampling_description(None, None)[0] == "prior":
            return None, None
        return self.config.sampler, self.config.steps if choices.spec(self.config.sampler).grid else None

    def near_copies(self, out: Path, samples: Path, spec: GeneratorSpec, fraction: float) -> dict:
        """``xraydiff novelty`` of the samples against the generator's training set, at the samples' size."""
        from commands.novelty import check_novelty, summary

        size = json.loads((samples / "manifest.json").read_text())["image_size"]
        options = NoveltyOptions(**values(self.config.novelty), samples=samples, out=out, overwrite=True)
        return summary(check_novelty(options, self._datamodule(spec, fraction, size), log=self.log), out)

    def sample_and_accept(
        self, folder: Path, checkpoint: str, stats: str, spec: GeneratorSpec, fraction: float
    ) -> dict:
        from xraydiff.acceptance.rate import file_digest, sample_cache_key
        from xraydiff.acceptance.run import run_acceptance

        c = self.config
        sampler, steps = self._sampling(checkpoint)
        seed = c.seed + 1000
        # Samples depend only on the generator and the sampling settings: a cached folder is reused
        # only when every one of them is the same (judged here by this row's statistics).
        key = sample_cache_key(
            file_digest(Path(checkpoint)), str(sampler), steps, c.num_samples, c.batch_size, seed,
            resolve_precision(c.precision),
        )  # fmt: skip
        samples = self.out / "cache" / f"samples-{key}"
        if not (samples / "manifest.json").is_file():
            options = SampleOptions(
                **values(c, SamplingSettings, ("sampler", "steps", "seed")), sampler=sampler, steps=steps, seed=seed,
                ckpt_path=Path(checkpoint), num_samples=c.num_samples, out=samples, overwrite=True,
            )  # fmt: skip
            generate_samples(options)
        copies = self.near_copies(folder / "novelty", samples, spec, fraction)
        report = run_acceptance(samples, Path(stats), folder / "acceptance", novelty=Path(copies["report"]))
        copies["accepted"] = report["accepted_near_copies"]
        return {
            "accepted": report["accepted"],
            "n": report["n"],
            "acceptance_rate": report["acceptance_rate"],
            "accepted_dir": str(folder / "acceptance" / "accepted"),
            "gallery": str(folder / "acceptance" / "gallery.png"),
            "near_copies": copies,
        }

    # -- localizer

    def train_localizer(self, folder: Path, fraction: float, synthetic: list[str], seed: int) -> dict:
        spec = self.config.localizer
        extra = {"extra_train_dirs": synthetic}
        if synthetic and self.config.synthetic_share is not None:
            extra["synthetic_share"] = self.config.synthetic_share
        common = [
            *[a for c in spec.config for a in ("--config", c)],
            *spec.args,
            *self._data_args(fraction, extra),
            *self.run_folder_args(folder),
        ]
        self.cli(["fit", *common, "--seed_everything", seed])
        self.cli(["test", *common, "--ckpt_path", str(folder / "checkpoints/last.ckpt")])
        metrics = json.loads((folder / "test_metrics.json").read_text())
        return {"metrics": metrics}

    # -- the whole study

    def run(self) -> dict:
        c = self.config
        self.prepare_folder()
        torch.manual_seed(c.seed)
        results: dict = {"training_sets": {}, "generators": list(c.generators)}
        for set_name, fraction in c.training_sets.items():
            base = self.out / set_name
            entry: dict = {"fraction": fraction, "generators": {}, "localizer": {}}
            for name, spec in c.generators.items():
                if spec.sets is not None and set_name not in spec.sets:
                    entry["generators"][name] = None  # not run on this training set: "n/a" in the tables
                    continue
                g = base / name
                trained = self.step(
                    g / "train",
                    f"{set_name}/{name}: generator",
                    partial(self.train_generator, name=name, spec=spec, set_name=set_name, fraction=fraction),
                )
                checkpoint = trained["checkpoint"]
                stats = self.step(
                    g / "stats",
                    f"{set_name}/{name}: shape statistics",
                    partial(self.fit_statistics, spec=spec, fraction=fraction, checkpoint=checkpoint),
                )["stats"]
                # the rate of separate runs comes first; the rate of the augmentation draw needs its verdicts
                rate_label = f"{set_name}/{name}: acceptance rate"
                if c.rate_source == "runs":
                    rate = self.step(
                        g / "rate", rate_label, partial(self.acceptance_rate, checkpoint=checkpoint, stats=stats)
                    )
                accepted = self.step(
                    g / "samples",
                    f"{set_name}/{name}: sample and accept",
                    partial(self.sample_and_accept, checkpoint=checkpoint, stats=stats, spec=spec, fraction=fraction),
                )
                if c.rate_source == "augmentation":
                    report = g / "samples/acceptance/report.json"
                    rate = self.step(
                        g / "rate",
                        f"{rate_label} (augmentation samples)",
                        partial(self.rate_from_samples, report=report),
                    )
                entry["generators"][name] = {
                    "checkpoint": checkpoint,
                    "trained": trained["trained"],
                    "global_step": trained.get("global_step"),
                    "train_images": trained["train_images"],
                    "train_data": trained["train_data"],
                    "acceptance": rate,
                    "accepted": accepted,
                }
            variants = {"real": []} | {
                f"real+{name}": [info["accepted"]["accepted_dir"]]
                for name, info in entry["generators"].items()
                if info is not None and info["accepted"]["accepted"] > 0
            }
            by_seed: dict[str, list[dict]] = {}
            for variant, synthetic in variants.items():
                by_seed[variant] = [
                    self.step(
                        seeded(base / "localizer" / variant.replace("+", "_"), seed),
                        f"{set_name}/localizer {variant}" + (f" seed {seed}" if seed else ""),
                        partial(self.train_localizer, fraction=fraction, synthetic=synthetic, seed=seed),
                    )["metrics"]
                    for seed in c.localizer_seeds
                ]
                entry["localizer"][variant] = by_seed[variant][0]
            entry["localizer_seeds"] = {
                variant: [{k: m[k] for k in ("mre_mm", "mre_sd_mm")} for m in runs] for variant, runs in by_seed.items()
            }
            entry["paired"] = {
                variant: paired_difference(
                    *common_image_rows(
                        [m["per_image_mre_mm"] for m in runs], [m["per_image_mre_mm"] for m in by_seed["real"]]
                    )
                )
                for variant, runs in by_seed.items()
                if variant != "real"
            }
            for name in c.generators:
                # "/" in Table 2: no accepted pairs; "n/a": the generator was not run on this set
                entry["localizer"].setdefault(f"real+{name}", None if entry["generators"][name] else "n/a")
            results["training_sets"][set_name] = entry
        write_report(self.out, results, c)
        return results


# --------------------------------------------------------------------------------------- report

LOCALIZER_VERDICTS = {
    "lower": "better than real only",
    "higher": "worse than real only",
    "no difference shown": "no difference shown",
}


def tables(results: dict, config: StudyConfig) -> tuple[str, str]:
    """Table 1 (acceptance rates under both rule sets: the paper's two rules and the strict four) and Table 2
    (localizer errors) in Markdown."""
    sets = list(results["training_sets"])
    head = " | ".join(f"{g} {s}" for g in results["generators"] for s in sets)
    rows1 = []
    for rule_set, label in (("paper", "paper rules (i, ii)"), ("strict", "strict rules (i-iv)")):
        cells = []
        for g in results["generators"]:
            for s in sets:
                info = results["training_sets"][s]["generators"][g]
                rate = None if info is None else info["acceptance"].get("by_rule_set", {}).get(rule_set)
                cells.append("n/a" if rate is None else f"{rate['mean']:.0%} (+-{rate['sd']:.0%} SD)")
        rows1.append(f"| mean acceptance rate, {label} | {' | '.join(cells)} |")
    steps = {
        (g, s): (results["training_sets"][s]["generators"][g] or {}).get("global_step")
        for g in results["generators"]
        for s in sets
    }
    copies = {key: (draw.get("near_copies"), draw.get("accepted")) for key, draw in _draws(results).items()}
    rows1 += [
        "| near copies of its training set, all samples [95 % CI] | "
        + " | ".join("n/a" if c is None else describe_rate(c["near_copies"], c["n"]) for c, _ in copies.values())
        + " |",
        "| near copies among the accepted | "
        + " | ".join("n/a" if c is None else f"{c['accepted']} of {accepted}" for c, accepted in copies.values())
        + " |",
        f"| training steps | {' | '.join('n/a' if steps[key] is None else str(steps[key]) for key in steps)} |",
    ]
    table1 = f"| metric | {head} |\n|---|{'---|' * (len(sets) * len(results['generators']))}\n" + "\n".join(rows1)
    # a generator trained for under a tenth of the steps of the best-trained one on its set says nothing of its class
    for s in sets:
        most = max((steps[g, s] or 0 for g in results["generators"]), default=0)
        for g in results["generators"]:
            if steps[g, s] is not None and steps[g, s] * 10 < most:
                table1 += f"\n\n{g} {s}: not comparable, {steps[g, s]} training steps against {most}."
    table1 += "".join(f"\n\n{line}" for line in set_comparisons(results))
    radii = [f"{r:g}" for r in config.outlier_radii]
    rows = [
        f"| training set | PE mean +- SD (mm) | {' | '.join(f'O r={r}mm' for r in radii)} | seeds | "
        "PE - real only (mm) [95 % CI] |",
        f"|---|---|{'---|' * len(radii)}---|---|",
    ]
    for s in sets:
        entry = results["training_sets"][s]
        for variant, metrics in entry["localizer"].items():
            label = f"{s} ({variant})"
            if metrics is None or metrics == "n/a":
                mark = "/" if metrics is None else "n/a"
                rows.append(f"| {label} | {mark} | {' | '.join(mark for _ in radii)} | {mark} | {mark} |")
                continue
            seeds = entry.get("localizer_seeds", {}).get(variant, [metrics])
            mre, sd = (float(np.mean([m[k] for m in seeds])) for k in ("mre_mm", "mre_sd_mm"))
            paired = entry.get("paired", {}).get(variant)
            counts = " | ".join(str(metrics["outliers"].get(r, "-")) for r in radii)
            cells = [f"{mre:.2f} +- {sd:.2f}", counts, seed_spread([m["mre_mm"] for m in seeds])]
            cells.append("-" if paired is None else describe_paired(paired, LOCALIZER_VERDICTS, digits=2))
            rows.append(f"| {label} | {' | '.join(cells)} |")
    return table1, "\n".join(rows)


def _draws(results: dict) -> dict[tuple[str, str], dict]:
    """(generator, training set) -> the record of its augmentation draw (``accepted``, ``n``, ``near_copies``), in
    the tables' column order; {} where the generator was not run on the set."""
    return {
        (g, s): (results["training_sets"][s]["generators"][g] or {}).get("accepted") or {}
        for g in results["generators"]
        for s in results["training_sets"]
    }


def set_comparisons(results: dict) -> list[str]:
    """For each generator run on several training sets: each set's acceptance and near-copy rates of the
    augmentation draw against the first set's, each difference with its 95 % interval (independent draws:
    ``rate_difference``) and a verdict only where it excludes 0. One generator per set: the intervals cover the
    draw of samples, not the generator's training (one training seed)."""
    draws, lines = _draws(results), []
    for g in results["generators"]:
        drawn = [(s, draws[g, s]) for s in results["training_sets"] if "near_copies" in draws[g, s]]
        for s, a in drawn[1:]:
            first, b = drawn[0]
            parts = []
            for what, count_a, count_b in (
                ("acceptance", a["accepted"], b["accepted"]),
                ("near copies", a["near_copies"]["near_copies"], b["near_copies"]["near_copies"]),
            ):
                d = rate_difference(count_a, a["n"], count_b, b["n"])
                low, high = d["ci95"]
                parts.append(f"{what} {d['difference']:+.1%} [{low:+.1%}, {high:+.1%}] ({d['verdict']})")
            lines.append(f"{g} {s} - {g} {first}: {'; '.join(parts)}; one generator per training set.")
    return lines


def write_report(out: Path, results: dict, config: StudyConfig) -> None:
    table1, table2 = tables(results, config)
    lines = [
        "# Synthetic augmentation study (Hadzic et al.)",
        "",
        "## Table 1: DDPM and VAE comparison (MRF-SSM acceptance)",
        "",
        table1,
        "",
        f"{config.rate_runs} runs of {config.rate_samples} samples each; "
        f"{config.num_samples} samples drawn for augmentation"
        + (" (the runs are the first of them)." if config.rate_source == "augmentation" else ".")
        + " Near copies: samples of the augmentation draw closer to an image of their generator's training set than"
        f" all but {config.novelty.level:.0%} of the real {config.novelty.held_out} images are (`xraydiff novelty`:"
        f" 1 - max normalised cross-correlation over shifts of up to {config.novelty.max_shift} px at"
        f" {config.novelty.size} px; each row's threshold and how it was found in results.json); Wilson 95 %"
        " intervals.",
        "",
        "## Table 2: localizer trained with and without synthetic images (test set)",
        "",
        table2,
        "",
        f"PE averaged over the localizer's training seeds ({', '.join(map(str, config.localizer_seeds))}); the "
        "last column is the mean per-image PE difference against real only with its 95 % interval over the test "
        "images and the seeds (Student t, Welch-Satterthwaite degrees of freedom; one seed: a bootstrap over "
        "images, marked 'one training seed'), a verdict only where it excludes 0.",
        "",
        "## Galleries (green: accepted, red: rejected, orange: accepted near copy)",
        "",
    ]
    for s, entry in results["training_sets"].items():
        for g, info in entry["generators"].items():
            if info is None:
                lines.append(f"### {s} / {g}: not run (no generator trained on this training set)\n")
                continue
            gallery = Path(info["accepted"]["gallery"])
            lines.append(
                f"### {s} / {g}: {info['accepted']['accepted']} of {info['accepted']['n']} accepted "
                f"({_provenance(info)})"
            )
            lines.append(f"![{s} {g}]({gallery.relative_to(out)})")
            lines.append("")
    atomic_write_bytes(out / "results.md", "\n".join(lines).encode())
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, default=_jsonable).encode())


def _provenance(info: dict) -> str:
    where = "trained here" if info["trained"] else f"checkpoint {info['checkpoint']}"
    return f"{where}, {info['global_step']} steps on {info['train_images']} real training images"


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def _run(config_path: Path, out: Path) -> str:
    config = load_study_config(config_path)
    table1, table2 = tables(Study(config, out).run(), config)
    return (
        "\nTable 1: acceptance rate\n" + table1 + "\n\nTable 2: localizer on the test set\n" + table2
        + f"\n\nreport: {out / 'results.md'}"
    )  # fmt: skip


STUDY = StudyCommand(
    name="augment",
    summary="the synthetic-augmentation study, end to end",
    description="The synthetic-augmentation study of Hadzic et al.: generators, acceptance, localizer; resumable.",
    schema=StudyConfig,
    run=_run,
)
