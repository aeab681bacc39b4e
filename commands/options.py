"""The options of every plain ``xraydiff`` command (all but LightningCLI's four), one typed object per command.

Each dataclass is the one declaration of its command's options: ``add_options`` derives the command line (type,
choices, default, help, checks) from it, the service function takes it, and the studies read their sections
through the same classes (``experiments.schema``). Nothing heavy is imported, so ``--help`` answers at once and a
test can parse every command the documentation quotes without running it. ``cli.py`` pairs each parser with what
it runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, get_args, get_origin

from jsonargparse import typing as jsonargparse_types

from commands.parsing import ConfigParser, data_parser
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.diffusion.choices import COMPOSITES, DEFAULT_SAMPLER, Sampler, StepSampler
from xraydiff.options import option, required
from xraydiff.precision import AUTO, PRECISIONS

Split = Literal["train", "val", "test"]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
RuleSet = Literal["strict", "paper"]
_BOUNDS = {"min": ">=", "above": ">", "max": "<=", "below": "<"}
# jsonargparse's own restricted types, which it refuses to register twice under another name
_RESTRICTED: dict[tuple, type] = {
    (int, ((">", 0),)): jsonargparse_types.PositiveInt,
    (int, ((">=", 1),)): jsonargparse_types.PositiveInt,
    (int, ((">=", 0),)): jsonargparse_types.NonNegativeInt,
    (float, ((">", 0),)): jsonargparse_types.PositiveFloat,
    (float, ((">=", 0),)): jsonargparse_types.NonNegativeFloat,
    (float, ((">=", 0), ("<=", 1))): jsonargparse_types.ClosedUnitInterval,
    (float, ((">", 0), ("<", 1))): jsonargparse_types.OpenUnitInterval,
}


def restricted(base: type, checks: typing.Mapping) -> type:
    """``base`` (int or float) narrowed by an option's bounds, a jsonargparse restricted type (one per bounds)."""
    conditions = tuple((_BOUNDS[key], checks[key]) for key in _BOUNDS if key in checks)
    if not conditions:
        return base
    if (base, conditions) not in _RESTRICTED:
        words = " and ".join(f"{op} {value}" for op, value in conditions)
        name = f"{base.__name__.title()}_" + "_".join(f"{k}{checks[k]}" for k in _BOUNDS if k in checks)
        _RESTRICTED[base, conditions] = jsonargparse_types.restricted_number_type(
            name.replace(".", "p").replace("-", "m"), base, list(conditions), docstring=f"a number {words}"
        )
    return _RESTRICTED[base, conditions]


def _unwrap_optional(tp) -> tuple[typing.Any, bool]:
    """(X, True) for ``X | None``, else (tp, False)."""
    args = get_args(tp)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def add_options(parser: ConfigParser, cls: type) -> ConfigParser:
    """``--name`` for every field of the dataclass ``cls``: a flag for a bool, choices for a Literal (also
    ``Literal[...] | None``), numbers narrowed by the bounds of ``option`` (one line naming the option when broken)."""
    hints = typing.get_type_hints(cls)
    for field in sorted(dataclasses.fields(cls), key=lambda f: not required(f)):  # the required ones first
        tp, checks, flag = hints[field.name], field.metadata, f"--{field.name}"
        text = checks.get("help") or None
        if tp is bool:
            parser.add_argument(flag, action="store_true", help=text)
            continue
        inner, optional = _unwrap_optional(tp)
        given = {"default": None if required(field) else field.default, "required": required(field), "help": text}
        if get_origin(inner) is Literal:
            parser.add_argument(flag, choices=get_args(inner), **given)
        elif inner in (int, float):
            kind = restricted(inner, checks)
            parser.add_argument(flag, type=kind | None if optional else kind, **given)
        else:
            parser.add_argument(flag, type=tp, **given)
    return parser


Options = TypeVar("Options")


def options_of(cls: type[Options], cfg) -> Options:
    """The ``cls`` of a parsed command line (its other keys, e.g. the data section, are left out)."""
    return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


# ------------------------------------------------------------------------------------------ the options


@dataclass(kw_only=True)
class Output:
    """Where a command writes; it never replaces what it did not write."""

    out: Path = option(help="output folder (new, or an earlier output of this command)")
    overwrite: bool = option(False, help="replace an earlier output of this command in --out")


@dataclass(kw_only=True)
class DataSummaryOptions(Output):
    num_preview: int = option(16, min=0, help="augmented training samples in the preview")


@dataclass(kw_only=True)
class SamplingSettings:
    """How a generator is sampled (``sample``, ``acceptance rate`` and the augmentation study)."""

    sampler: Sampler | None = option(
        None, help="the reverse process (xraydiff.diffusion.choices); default: the model's configured sampler"
    )
    steps: int | None = option(None, min=1, help="reverse steps (default: the model's; not for the full chain)")
    seed: int = option(0, help="seed of the samples")
    batch_size: int = option(16, min=1, help="samples per network call")
    accelerator: str = option("auto", help="cpu, gpu or auto")
    precision: Precision = option(AUTO, help="auto: bf16 autocast where the hardware has native bf16, else 32-bit")


@dataclass(kw_only=True)
class SamplingOptions(SamplingSettings):
    ckpt_path: Path = option(help="checkpoint of a PairedDDPM, PairedVAE or LatentDiffusion")


@dataclass(kw_only=True)
class SampleOptions(SamplingOptions, Output):
    num_samples: int = option(min=1, help="number of samples to generate")
    devices: int = option(1, min=1, help="processes (DDP when > 1)")


@dataclass(kw_only=True)
class BlendSettings:
    """How a blend is made: what a study sets, shared or per variant (``experiments.blend``)."""

    steps: int = option(25, min=1, help="reverse steps of the LDM")
    strength: float | None = option(
        None,
        above=0,
        max=1,
        help="noise level of z_init as a fraction of T (default: steps / T, Lim et al.'s Appendix A read literally)",
    )
    sampler: StepSampler = option(DEFAULT_SAMPLER, help="the LDM's step rule (Lim et al.: DDIM)")
    seed: int = option(0, help="seed of the noise")
    dilation: int = option(1, min=0, help="latent mask dilation radius in latent cells")
    mask_mode: Literal["max", "area"] = option("max", help="mask downsampling")
    reimpose: bool = option(False, help="re-impose the structure at every step (Blended Latent Diffusion)")
    composite: Literal[COMPOSITES] = option(  # type: ignore[valid-type]
        "latent",
        help="latent: the decoded blend (Lim et al.); pixel: it inside the feathered region, the partner outside; "
        "copy_paste: the guide's pixels pasted into the partner, no diffusion (a control)",
    )
    batch_size: int = option(16, min=1, help="latents per LDM call")


@dataclass(kw_only=True)
class BlendOptions(BlendSettings, Output):
    ldm: Path = option(help="LatentDiffusion checkpoint (holds its autoencoder)")
    autoencoder: Path | None = option(None, help="LatentAutoencoder checkpoint, checked to be the LDM's own")
    top_k: int = option(min=1, help="partners per labelled image (5, 10, 20, 50)")
    guides: str = option("train", help="labelled split that guides")
    partners: str = option("synthesis", help="unlabelled split of partners")
    accelerator: str = option("auto", help="cpu, gpu or auto")
    precision: Precision = option(AUTO, help="autocast precision (auto: bf16 where native, else 32-bit)")


@dataclass(kw_only=True)
class AcceptanceDataOptions(Output):
    annotations_only: bool = option(
        False, help="read landmarks without images (see 'Frames and units' in docs/hands.md)"
    )


@dataclass(kw_only=True)
class AcceptanceFitOptions(AcceptanceDataOptions):
    out: Path = option(help="statistics file to write (.json)")
    split: Split = option("train", help="split")


@dataclass(kw_only=True)
class AcceptanceRenderOptions(AcceptanceDataOptions):
    split: Split = option("val", help="split")


@dataclass(kw_only=True)
class Checking:
    """Which statistics judge the samples."""

    stats: Path = option(help="statistics file (xraydiff acceptance fit)")
    rule_set: RuleSet | None = option(None, help="strict or paper; default: the statistics'")


@dataclass(kw_only=True)
class AcceptanceRunOptions(Checking, Output):
    samples: Path = option(help="folder of .npz samples (xraydiff sample)")
    batch_size: int = option(128, min=1, help="heatmaps per MRF call")
    novelty: Path | None = option(
        None, help="report.json of xraydiff novelty on these samples: accepted near copies counted and marked"
    )


@dataclass(kw_only=True)
class AcceptanceRateOptions(SamplingOptions, Checking, Output):
    out: Path = option(help="folder for acceptance.json")
    runs: int = option(10, min=1, help="runs; run r uses seed + r")
    num_samples: int = option(100, min=1, help="samples per run")


@dataclass(kw_only=True)
class NoveltySettings:
    """How samples are compared with the training images (``novelty`` and the studies)."""

    split: str = option("train", help="the training images (a split of the data config; the LDM's: generator)")
    held_out: str = option("val", help="the real held-out images that calibrate the threshold")
    level: float = option(0.01, above=0, below=0.5, help="a near copy is closer than all but this share of held-out")
    space: Literal["pixel", "latent"] = option(
        "pixel", help="pixel: the images at --size; latent: the posterior means of --autoencoder"
    )
    size: int = option(32, min=8, help="longer side of the compared images (area averaging; pixel space)")
    max_shift: int = option(2, min=0, help="relative shifts tolerated, in pixels (latent cells) of what is compared")
    autoencoder: Path | None = option(None, help="LatentAutoencoder or LatentDiffusion checkpoint (--space latent)")
    batch_size: int = option(64, min=1, help="samples per matrix product (and per encoder call)")
    gallery_size: int = option(8, min=1, help="closest samples shown with their nearest training images")


@dataclass(kw_only=True)
class NoveltyOptions(NoveltySettings, Output):
    samples: Path = option(help="folder of samples (xraydiff sample, acceptance render or blend)")


# ------------------------------------------------------------------------------------------ the parsers


def data_summary_parser() -> ConfigParser:
    """Load a dataset's splits and write summary.json, landmarks.csv, preview.png."""
    parser = data_parser("xraydiff data summary", "Load every split and write summary.json, landmarks.csv, preview.png")
    return add_options(parser, DataSummaryOptions)


def sample_parser() -> ConfigParser:
    """Generate image/heatmap pairs (or LDM images) from a checkpoint."""
    parser = ConfigParser(
        prog="xraydiff sample",
        description="Generate samples: DIR/<id>.npz (float32 'image' and, for paired generators, 'heatmap', in "
        "[-1, 1]), DIR/<id>.png previews and DIR/manifest.json. Ids are reproducible from the seed.",
    )
    return add_options(parser, SampleOptions)


def blend_parser() -> ConfigParser:
    """Synthetic image/mask pairs by anatomy-guided latent blending."""
    parser = data_parser(
        "xraydiff blend",
        "Anatomy-guided latent blending (Lim et al.): for every labelled guide image, its top-k most similar "
        "unlabelled images (latent SSIM) are blended with its structure and denoised by the LDM. Writes DIR/images, "
        "DIR/masks (the panoramic layout, for --data.init_args.extra_train_dirs), DIR/manifest.json, DIR/gallery.png.",
    )
    return add_options(parser, BlendOptions)


def _acceptance_data_parser(prog: str, description: str, cls: type) -> ConfigParser:
    parser = data_parser(prog, description, uses=("acceptance",))
    parser.add_class_arguments(AcceptanceConfig, "acceptance")
    return add_options(parser, cls)


def acceptance_fit_parser() -> ConfigParser:
    """Fit the shape statistics of the check from a split's landmarks (JSON)."""
    return _acceptance_data_parser(
        "xraydiff acceptance fit",
        "Fit the shape statistics of the MRF-SSM check from the training landmarks and save them (JSON).",
        AcceptanceFitOptions,
    )


def acceptance_render_parser() -> ConfigParser:
    """Write a split's ground truth as samples: the calibration set of the check."""
    return _acceptance_data_parser(
        "xraydiff acceptance render",
        "Write ground-truth samples (sample format plus a 'landmarks' array) of a split: the calibration "
        "set of the check. Calibrate on a split the localizer is not tested on (the default, 'val').",
        AcceptanceRenderOptions,
    )


def acceptance_run_parser() -> ConfigParser:
    """Check generated samples: report.json, accepted/, gallery.png."""
    parser = ConfigParser(
        prog="xraydiff acceptance run",
        description="Check generated samples; write report.json, accepted/, gallery.png.",
    )
    return add_options(parser, AcceptanceRunOptions)


def acceptance_rate_parser() -> ConfigParser:
    """The paper's protocol: acceptance rate mean and SD over sampling runs."""
    parser = ConfigParser(
        prog="xraydiff acceptance rate",
        description="The paper's protocol: acceptance rate mean and SD over independent sampling runs.",
    )
    return add_options(parser, AcceptanceRateOptions)


def novelty_parser() -> ConfigParser:
    """Near copies: each sample's nearest training image, a threshold calibrated on held-out images."""
    parser = data_parser(
        "xraydiff novelty",
        "How many samples are near copies of training images: each sample's nearest image of --split (1 - max "
        "normalised cross-correlation over small shifts, at a reduced size or in an autoencoder's latent space), "
        "flagged when closer than all but --level of the real --held_out images are. Writes report.json and "
        "gallery.png; the data config's images are taken at the samples' size.",
    )
    return add_options(parser, NoveltyOptions)
