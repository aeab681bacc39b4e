"""The ``xraydiff`` command: parses the command line and runs ``commands`` and ``experiments``.

* ``xraydiff fit|validate|test|predict --config ...``: LightningCLI over every model and DataModule.
* ``xraydiff data summary --config ... --out DIR``: load every split, write counts, landmarks and a
  preview of augmented training samples.
* ``xraydiff sample --ckpt_path CKPT --num_samples N --out DIR``: generate image/heatmap pairs (or LDM images).
* ``xraydiff acceptance fit|render|run|rate``: the MRF-SSM quality control of generated pairs.
* ``xraydiff blend --ldm CKPT --config DATA --top_k K --out DIR``: synthetic pairs by latent blending.
* ``xraydiff experiment NAME --config ... --out DIR``: the study module ``experiments/NAME.py`` (each
  registers itself with ``STUDY``: augment, landmarks, blend).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

from commands import quiet
from commands.lightning_cli import XrayCLI, data_parser
from commands.parsing import ConfigParser, nearest, parsing
from experiments import studies, study
from xraydiff.errors import DataError, Interrupted
from xraydiff.precision import AUTO

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
PRECISIONS = (AUTO, "32-true", "bf16-mixed", "16-mixed")

USAGE = """usage: xraydiff <command> [options]

commands:
  fit | validate | test | predict   LightningCLI (e.g. xraydiff fit --help)
  data summary                      load a dataset, write summary.json, landmarks.csv, preview.png
  sample                            generate image/heatmap pairs (or LDM images) from a checkpoint
  acceptance fit|render|run|rate    MRF-SSM quality control of generated pairs
  blend                             synthetic image/mask pairs by anatomy-guided latent blending
{experiments}

Each command has its own --help.
"""


# ------------------------------------------------------------------------------- data summary


def data_summary(argv: list[str]) -> None:
    parser = data_parser("xraydiff data summary", "Load every split and write summary.json, landmarks.csv, preview.png")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of xraydiff in --out")
    parser.add_argument("--num_preview", type=int, default=16, help="augmented training samples in the preview")
    cfg = parser.parse_args(argv)
    from commands.data import write_data_summary

    write_data_summary(parser.instantiate_classes(cfg).data, cfg.out, cfg.overwrite, cfg.num_preview)


# ------------------------------------------------------------------------------------- sample


def sample(argv: list[str]) -> None:
    parser = ConfigParser(
        prog="xraydiff sample",
        description="Generate samples: DIR/<id>.npz (float32 'image' and, for paired generators, 'heatmap', in "
        "[-1, 1]), DIR/<id>.png previews and DIR/manifest.json. Ids are reproducible from the seed.",
    )
    _sampling_arguments(parser)
    parser.add_argument("--num_samples", type=int, required=True, help="number of samples to generate")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be new or an earlier sample run)")
    parser.add_argument("--devices", type=int, default=1, help="processes (DDP when > 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier sample run in --out")
    args = parser.parse_args(argv)
    from commands.sampling import generate_samples

    generate_samples(**args.as_dict())


def _sampling_arguments(parser: ConfigParser) -> None:
    """The options every sampling command shares, spelled alike."""
    from xraydiff.diffusion.engine import Sampler  # imports MONAI: not at start-up

    parser.add_argument(
        "--ckpt_path", type=Path, required=True, help="checkpoint of a PairedDDPM, PairedVAE or LatentDiffusion"
    )
    parser.add_argument(
        "--sampler",
        choices=get_args(Sampler),
        default=None,
        help="ddpm: the full chain of T steps; ddim, dpmpp_2m, dpmpp_2m_sde, unipc: --steps steps "
        "(default: the model's configured sampler)",
    )
    parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: the model's; not for ddpm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--batch_size", type=int, default=16, help="samples per network call")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=AUTO,
        help="auto: bf16 autocast where the hardware has native bf16, else 32-bit",
    )


# -------------------------------------------------------------------------------------- blend


def blend(argv: list[str]) -> None:
    from xraydiff.diffusion.engine import Sampler  # imports MONAI: not at start-up

    parser = data_parser(
        "xraydiff blend",
        "Anatomy-guided latent blending (Lim et al.): for every labelled guide image, its top-k most similar "
        "unlabelled images (latent SSIM) are blended with its structure and denoised by the LDM. Writes DIR/images, "
        "DIR/masks (the panoramic layout, for --data.init_args.extra_train_dirs), DIR/manifest.json, DIR/gallery.png.",
    )
    parser.add_argument("--ldm", type=Path, required=True, help="LatentDiffusion checkpoint (holds its autoencoder)")
    parser.add_argument(
        "--autoencoder", type=Path, default=None, help="LatentAutoencoder checkpoint, checked to be the LDM's own"
    )
    parser.add_argument("--top_k", type=int, required=True, help="partners per labelled image (5, 10, 20, 50)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or an earlier blend output)")
    parser.add_argument("--steps", type=int, default=25, help="reverse steps of the LDM")
    parser.add_argument(
        "--sampler",
        choices=[name for name in get_args(Sampler) if name != "ddpm"],
        default="ddim",
        help="the LDM's step rule (Lim et al.: ddim)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="noise level of z_init as a fraction of T (default: steps / T, Lim et al.'s Appendix A read literally)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--dilation", type=int, default=1, help="latent mask dilation radius in latent cells")
    parser.add_argument("--mask_mode", choices=("max", "area"), default="max", help="mask downsampling")
    parser.add_argument(
        "--reimpose", action="store_true", help="re-impose the structure at every step (Blended Latent Diffusion)"
    )
    from xraydiff.diffusion.blending import COMPOSITES

    parser.add_argument(
        "--composite",
        choices=COMPOSITES,
        default="latent",
        help="latent: the decoded blend (Lim et al.); pixel: it inside the feathered region, the partner outside; "
        "copy_paste: the guide's pixels pasted into the partner, no diffusion (a control)",
    )
    parser.add_argument("--guides", default="train", help="labelled split that guides")
    parser.add_argument("--partners", default="synthesis", help="unlabelled split of partners")
    parser.add_argument("--batch_size", type=int, default=16, help="latents per LDM call")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=AUTO,
        help="autocast precision (auto: bf16 where native, else 32-bit)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier blend output in --out")
    cfg = parser.parse_args(argv)
    datamodule = parser.instantiate_classes(cfg).data  # loads nothing yet: run_blend checks --out first
    from commands.blend import run_blend

    options = ("steps", "strength", "seed", "sampler", "autoencoder", "dilation", "mask_mode", "reimpose", "composite",
               "guides", "partners", "batch_size", "accelerator", "precision", "overwrite")  # fmt: skip
    manifest = run_blend(cfg.ldm, datamodule, cfg.out, cfg.top_k, **{name: cfg[name] for name in options})
    print(f"wrote {manifest['count']} synthetic pairs to {cfg.out}/")


# --------------------------------------------------------------------------------- acceptance


def _acceptance_data_parser(prog: str, description: str) -> ConfigParser:
    from xraydiff.acceptance.config import AcceptanceConfig

    parser = data_parser(prog, description, uses=("acceptance",))
    parser.add_class_arguments(AcceptanceConfig, "acceptance")
    parser.add_argument(
        "--annotations_only",
        action="store_true",
        help="read landmarks without images (see 'Frames and units' in the README)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of xraydiff")
    return parser


def acceptance_fit(argv: list[str]) -> None:
    from commands.acceptance import fit_statistics
    from xraydiff.acceptance.config import AcceptanceConfig

    parser = _acceptance_data_parser(
        "xraydiff acceptance fit",
        "Fit the shape statistics of the MRF-SSM check from the training landmarks and save them (JSON).",
    )
    parser.add_argument("--out", type=Path, required=True, help="statistics file to write (.json)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="train", help="split")
    cfg = parser.parse_args(argv)
    config = AcceptanceConfig(**vars(cfg.acceptance))
    datamodule = parser.instantiate_classes(cfg).data
    fit_statistics(datamodule, cfg.split, config, cfg.out, cfg.overwrite, cfg.annotations_only)


def acceptance_render(argv: list[str]) -> None:
    from commands.acceptance import render_split

    parser = _acceptance_data_parser(
        "xraydiff acceptance render",
        "Write ground-truth samples (sample format plus a 'landmarks' array) of a split: the calibration "
        "set of the check. Calibrate on a split the localizer is not tested on (the default, 'val').",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val", help="split")
    cfg = parser.parse_args(argv)
    datamodule = parser.instantiate_classes(cfg).data
    render_split(datamodule, cfg.split, cfg.acceptance.heatmap_sigma, cfg.out, cfg.overwrite, cfg.annotations_only)


def acceptance_run(argv: list[str]) -> None:
    from commands.acceptance import check_samples

    parser = ConfigParser(
        prog="xraydiff acceptance run",
        description="Check generated samples; write report.json, accepted/, gallery.png.",
    )
    parser.add_argument("--samples", type=Path, required=True, help="folder of .npz samples (xraydiff sample)")
    parser.add_argument("--stats", type=Path, required=True, help="statistics file (xraydiff acceptance fit)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or an earlier acceptance run)")
    parser.add_argument("--rule_set", choices=("strict", "paper"), default=None, help="default: the statistics'")
    parser.add_argument("--batch_size", type=int, default=128, help="heatmaps per MRF call")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier acceptance run in --out")
    check_samples(**parser.parse_args(argv).as_dict())


def acceptance_rate(argv: list[str]) -> None:
    from commands.acceptance import acceptance_rate_of_checkpoint

    parser = ConfigParser(
        prog="xraydiff acceptance rate",
        description="The paper's protocol: acceptance rate mean and SD over independent sampling runs.",
    )
    _sampling_arguments(parser)
    parser.add_argument("--stats", type=Path, required=True, help="statistics file (xraydiff acceptance fit)")
    parser.add_argument("--runs", type=int, default=10, help="runs; run r uses seed + r")
    parser.add_argument("--num_samples", type=int, default=100, help="samples per run")
    parser.add_argument("--out", type=Path, required=True, help="folder for acceptance.json")
    parser.add_argument("--rule_set", choices=("strict", "paper"), default=None, help="default: the statistics'")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier acceptance.json in --out")
    args = parser.parse_args(argv)
    result = acceptance_rate_of_checkpoint(**args.as_dict())
    print(result["table"])


ACCEPTANCE_COMMANDS = {
    "fit": acceptance_fit,
    "render": acceptance_render,
    "run": acceptance_run,
    "rate": acceptance_rate,
}


# --------------------------------------------------------------------------------------- main


def _groups() -> dict:
    from experiments import studies

    return {"data": {"summary": None}, "acceptance": ACCEPTANCE_COMMANDS, "experiment": studies()}


COMMANDS = (*LIGHTNING_SUBCOMMANDS, "data", "sample", "blend", "acceptance", "experiment")


def _unknown(argv: list[str]) -> None:
    """Exit 2 with the subcommands of a group named alone, or the command nearest an unknown one."""
    group = _groups().get(argv[0])
    if group is not None and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        print(
            f"usage: xraydiff {argv[0]} {{{','.join(group)}}} [options]",
            file=sys.stdout if len(argv) > 1 else sys.stderr,
        )
        sys.exit(0 if len(argv) > 1 else 2)
    if group is not None:
        name, known = f"{argv[0]} {argv[1]}", list(group)
        hint = nearest(argv[1], known)
        hint = f"; did you mean 'xraydiff {argv[0]} {hint}'?" if hint else f" (one of: {', '.join(known)})"
    else:
        name, hint = argv[0], nearest(argv[0], COMMANDS)
        hint = f"; did you mean 'xraydiff {hint}'?" if hint else " (xraydiff --help lists the commands)"
    print(f"xraydiff: error: unknown command '{name}'{hint}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parsing(None if from_command_line else argv)
    quiet.silence_third_party()
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
            # args=None lets LightningCLI read sys.argv itself (it warns when given both).
            XrayCLI(args=None if from_command_line else argv)
        elif argv[:2] == ["data", "summary"]:
            data_summary(argv[2:])
        elif argv[:1] == ["sample"]:
            sample(argv[1:])
        elif argv[:1] == ["blend"]:
            blend(argv[1:])
        elif argv[:1] == ["experiment"] and len(argv) > 1 and argv[1] in studies():
            study(argv[1]).main(argv[2:])
        elif argv[:1] == ["acceptance"] and len(argv) > 1 and argv[1] in ACCEPTANCE_COMMANDS:
            ACCEPTANCE_COMMANDS[argv[1]](argv[2:])
        elif not argv or argv[0] in ("-h", "--help"):
            listed = "\n".join(f"  experiment {name:<23}{summary}" for name, summary in studies().items())
            print(USAGE.format(experiments=listed), file=sys.stdout if argv else sys.stderr)
            sys.exit(0 if argv else 2)
        else:
            _unknown(argv)
    except DataError as err:
        print(f"xraydiff: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as stop:
        print(f"xraydiff: stopped by signal {stop.signum}; nothing was written", file=sys.stderr)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
