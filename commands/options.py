"""The command line of every plain ``xraydiff`` command (all but LightningCLI's four): one parser builder each,
importing nothing heavy, so that ``--help`` answers at once and a test can parse every command the
documentation quotes without running it. ``cli.py`` pairs each parser with what it runs."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

from commands.parsing import ConfigParser, data_parser
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.diffusion.choices import COMPOSITES, SAMPLERS, STEP_SAMPLERS
from xraydiff.precision import AUTO, PRECISIONS

SPLITS = ("train", "val", "test")
# a share of the diffusion chain: in (0, 1]
Fraction = restricted_number_type("Fraction", float, [(">", 0), ("<=", 1)], docstring="a number in (0, 1]")


def data_summary_parser() -> ConfigParser:
    """Load a dataset's splits and write summary.json, landmarks.csv, preview.png."""
    parser = data_parser("xraydiff data summary", "Load every split and write summary.json, landmarks.csv, preview.png")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of xraydiff in --out")
    parser.add_argument(
        "--num_preview", type=NonNegativeInt, default=16, help="augmented training samples in the preview"
    )
    return parser


def sampling_arguments(parser: ConfigParser) -> None:
    """The options every sampling command shares, spelt alike."""
    parser.add_argument(
        "--ckpt_path", type=Path, required=True, help="checkpoint of a PairedDDPM, PairedVAE or LatentDiffusion"
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="ddpm: the full chain of T steps; ddim, dpmpp_2m, dpmpp_2m_sde, unipc: --steps steps "
        "(default: the model's configured sampler)",
    )
    parser.add_argument(
        "--steps", type=PositiveInt | None, default=None, help="reverse steps (default: the model's; not for ddpm)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--batch_size", type=PositiveInt, default=16, help="samples per network call")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=AUTO,
        help="auto: bf16 autocast where the hardware has native bf16, else 32-bit",
    )


def sample_parser() -> ConfigParser:
    """Generate image/heatmap pairs (or LDM images) from a checkpoint."""
    parser = ConfigParser(
        prog="xraydiff sample",
        description="Generate samples: DIR/<id>.npz (float32 'image' and, for paired generators, 'heatmap', in "
        "[-1, 1]), DIR/<id>.png previews and DIR/manifest.json. Ids are reproducible from the seed.",
    )
    sampling_arguments(parser)
    parser.add_argument("--num_samples", type=PositiveInt, required=True, help="number of samples to generate")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be new or an earlier sample run)")
    parser.add_argument("--devices", type=PositiveInt, default=1, help="processes (DDP when > 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier sample run in --out")
    return parser


def blend_parser() -> ConfigParser:
    """Synthetic image/mask pairs by anatomy-guided latent blending."""
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
    parser.add_argument("--top_k", type=PositiveInt, required=True, help="partners per labelled image (5, 10, 20, 50)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or an earlier blend output)")
    parser.add_argument("--steps", type=PositiveInt, default=25, help="reverse steps of the LDM")
    parser.add_argument(
        "--sampler",
        choices=STEP_SAMPLERS,
        default="ddim",
        help="the LDM's step rule (Lim et al.: ddim)",
    )
    parser.add_argument(
        "--strength",
        type=Fraction | None,
        default=None,
        help="noise level of z_init as a fraction of T (default: steps / T, Lim et al.'s Appendix A read literally)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument(
        "--dilation", type=NonNegativeInt, default=1, help="latent mask dilation radius in latent cells"
    )
    parser.add_argument("--mask_mode", choices=("max", "area"), default="max", help="mask downsampling")
    parser.add_argument(
        "--reimpose", action="store_true", help="re-impose the structure at every step (Blended Latent Diffusion)"
    )
    parser.add_argument(
        "--composite",
        choices=COMPOSITES,
        default="latent",
        help="latent: the decoded blend (Lim et al.); pixel: it inside the feathered region, the partner outside; "
        "copy_paste: the guide's pixels pasted into the partner, no diffusion (a control)",
    )
    parser.add_argument("--guides", default="train", help="labelled split that guides")
    parser.add_argument("--partners", default="synthesis", help="unlabelled split of partners")
    parser.add_argument("--batch_size", type=PositiveInt, default=16, help="latents per LDM call")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=AUTO,
        help="autocast precision (auto: bf16 where native, else 32-bit)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier blend output in --out")
    return parser


def _acceptance_data_parser(prog: str, description: str) -> ConfigParser:
    parser = data_parser(prog, description, uses=("acceptance",))
    parser.add_class_arguments(AcceptanceConfig, "acceptance")
    parser.add_argument(
        "--annotations_only",
        action="store_true",
        help="read landmarks without images (see 'Frames and units' in docs/hands.md)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of xraydiff")
    return parser


def acceptance_fit_parser() -> ConfigParser:
    """Fit the shape statistics of the check from a split's landmarks (JSON)."""
    parser = _acceptance_data_parser(
        "xraydiff acceptance fit",
        "Fit the shape statistics of the MRF-SSM check from the training landmarks and save them (JSON).",
    )
    parser.add_argument("--out", type=Path, required=True, help="statistics file to write (.json)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split")
    return parser


def acceptance_render_parser() -> ConfigParser:
    """Write a split's ground truth as samples: the calibration set of the check."""
    parser = _acceptance_data_parser(
        "xraydiff acceptance render",
        "Write ground-truth samples (sample format plus a 'landmarks' array) of a split: the calibration "
        "set of the check. Calibrate on a split the localizer is not tested on (the default, 'val').",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=SPLITS, default="val", help="split")
    return parser


def _checking_arguments(parser: ConfigParser) -> None:
    parser.add_argument("--stats", type=Path, required=True, help="statistics file (xraydiff acceptance fit)")
    parser.add_argument("--rule_set", choices=("strict", "paper"), default=None, help="default: the statistics'")


def acceptance_run_parser() -> ConfigParser:
    """Check generated samples: report.json, accepted/, gallery.png."""
    parser = ConfigParser(
        prog="xraydiff acceptance run",
        description="Check generated samples; write report.json, accepted/, gallery.png.",
    )
    parser.add_argument("--samples", type=Path, required=True, help="folder of .npz samples (xraydiff sample)")
    _checking_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or an earlier acceptance run)")
    parser.add_argument("--batch_size", type=PositiveInt, default=128, help="heatmaps per MRF call")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier acceptance run in --out")
    return parser


def acceptance_rate_parser() -> ConfigParser:
    """The paper's protocol: acceptance rate mean and SD over sampling runs."""
    parser = ConfigParser(
        prog="xraydiff acceptance rate",
        description="The paper's protocol: acceptance rate mean and SD over independent sampling runs.",
    )
    sampling_arguments(parser)
    _checking_arguments(parser)
    parser.add_argument("--runs", type=PositiveInt, default=10, help="runs; run r uses seed + r")
    parser.add_argument("--num_samples", type=PositiveInt, default=100, help="samples per run")
    parser.add_argument("--out", type=Path, required=True, help="folder for acceptance.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier acceptance.json in --out")
    return parser
