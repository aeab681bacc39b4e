"""The ``xraydiff`` command: parses the command line and dispatches; nothing more.

* ``xraydiff fit|validate|test|predict --config ...``: LightningCLI over every model and DataModule.
* ``xraydiff data summary``, ``sample``, ``blend``, ``novelty``, ``acceptance fit|render|run|rate``: the parsers
  of ``commands.options``, each paired here with the ``commands`` function it runs.
* ``xraydiff experiment NAME --config ... --out DIR``: the study module ``experiments/NAME.py`` (each
  registers itself with ``STUDY``: augment, landmarks, blend).

Lightning, torch and MONAI are imported by the command that runs, never at start-up: help stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from commands import options, quiet
from commands.parsing import ConfigParser, config_paths, instantiate, nearest, parsed_arguments, parsing
from experiments import studies, study, study_help
from xraydiff.errors import DataError, Interrupted

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: xraydiff <command> [options]

commands:
  fit | validate | test | predict   LightningCLI (e.g. xraydiff fit --help)
  data summary                      load a dataset, write summary.json, landmarks.csv, preview.png
  sample                            generate image/heatmap pairs (or LDM images) from a checkpoint
  acceptance fit|render|run|rate    MRF-SSM quality control of generated pairs
  blend                             synthetic image/mask pairs by anatomy-guided latent blending
  novelty                           near copies: each sample's nearest training image, calibrated
{experiments}

Each command has its own --help.
"""


def run_data_summary(parser: ConfigParser, cfg) -> None:
    from commands.data import write_data_summary

    write_data_summary(instantiate(parser, cfg).data, options.options_of(options.DataSummaryOptions, cfg))


def run_sample(parser: ConfigParser, cfg) -> None:
    from commands.sampling import generate_samples

    generate_samples(options.options_of(options.SampleOptions, cfg))


def run_blend(parser: ConfigParser, cfg) -> None:
    from commands.blend import run_blend

    datamodule = instantiate(parser, cfg).data  # loads nothing yet: run_blend checks --out first
    manifest = run_blend(options.options_of(options.BlendOptions, cfg), datamodule)
    print(f"wrote {manifest['count']} synthetic pairs to {cfg.out}/")


def run_acceptance_fit(parser: ConfigParser, cfg) -> None:
    from commands.acceptance import fit_statistics
    from xraydiff.acceptance.config import AcceptanceConfig

    config = AcceptanceConfig(**vars(cfg.acceptance))
    fit_statistics(instantiate(parser, cfg).data, config, options.options_of(options.AcceptanceFitOptions, cfg))


def run_acceptance_render(parser: ConfigParser, cfg) -> None:
    from commands.acceptance import render_split

    datamodule, settings = instantiate(parser, cfg).data, options.options_of(options.AcceptanceRenderOptions, cfg)
    render_split(datamodule, cfg.acceptance.heatmap_sigma, settings)


def run_acceptance_run(parser: ConfigParser, cfg) -> None:
    from commands.acceptance import check_samples

    check_samples(options.options_of(options.AcceptanceRunOptions, cfg))


def run_acceptance_rate(parser: ConfigParser, cfg) -> None:
    from commands.acceptance import acceptance_rate_of_checkpoint

    print(acceptance_rate_of_checkpoint(options.options_of(options.AcceptanceRateOptions, cfg))["table"])
    print(f"wrote {cfg.out}/acceptance.json")


def run_novelty(parser: ConfigParser, cfg) -> None:
    from commands.novelty import check_novelty

    config = next(reversed(config_paths(parsed_arguments())), None)  # named by the errors of the data's splits
    check_novelty(options.options_of(options.NoveltyOptions, cfg), instantiate(parser, cfg).data, config)


Runner = Callable[[ConfigParser, object], None]
# command words -> (its parser, what it runs)
COMMANDS: dict[tuple[str, ...], tuple[Callable[[], ConfigParser], Runner]] = {
    ("data", "summary"): (options.data_summary_parser, run_data_summary),
    ("sample",): (options.sample_parser, run_sample),
    ("blend",): (options.blend_parser, run_blend),
    ("novelty",): (options.novelty_parser, run_novelty),
    ("acceptance", "fit"): (options.acceptance_fit_parser, run_acceptance_fit),
    ("acceptance", "render"): (options.acceptance_render_parser, run_acceptance_render),
    ("acceptance", "run"): (options.acceptance_run_parser, run_acceptance_run),
    ("acceptance", "rate"): (options.acceptance_rate_parser, run_acceptance_rate),
}


def command_of(argv: list[str]) -> tuple[str, ...] | None:
    """The words of the plain command ``argv`` starts with, if it names one."""
    return next((words for words in COMMANDS if tuple(argv[: len(words)]) == words), None)


def parse(argv: list[str]):
    """(parser, parsed options) of a plain command line, without running it."""
    words = command_of(argv)
    parsing(argv)
    parser = COMMANDS[words][0]()
    return parser, parser.parse_args(argv[len(words) :])


# ------------------------------------------------------------------------------------- groups, main


def _groups() -> dict[str, dict[str, str]]:
    """group -> {subcommand: summary line} of the commands named by two words."""
    groups: dict[str, dict[str, str]] = {"experiment": studies()}
    for words, (build, _) in COMMANDS.items():
        if len(words) == 2:
            line = (build.__doc__ or "").strip().splitlines()[0].rstrip(".")
            groups.setdefault(words[0], {})[words[1]] = line[:1].lower() + line[1:]
    return groups


def help_pages() -> list[list[str]]:
    """Every command line with a help page of xraydiff's own (LightningCLI's four are Lightning's), in the order
    of ``xraydiff --help``: the top level, the groups, the plain commands, the studies."""
    groups = sorted(_groups())
    return [[], *[[g] for g in groups], *map(list, COMMANDS), *(["experiment", name] for name in studies())]


TOP_LEVEL = (*LIGHTNING_SUBCOMMANDS, *dict.fromkeys(words[0] for words in COMMANDS), "experiment")


def _unknown(argv: list[str]) -> None:
    """A group named alone lists its subcommands (exit 0 with --help, 2 without); an unknown command exits 2
    naming the nearest one."""
    group = _groups().get(argv[0])
    if group is not None and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        lines = [f"usage: xraydiff {argv[0]} {{{','.join(group)}}} [options]", "", "commands:"]
        lines += [f"  {name:<12}{summary}" for name, summary in group.items()]
        lines += ["", f"Each has its own --help (xraydiff {argv[0]} {next(iter(group))} --help)."]
        print("\n".join(lines), file=sys.stdout if len(argv) > 1 else sys.stderr)
        sys.exit(0 if len(argv) > 1 else 2)
    if group is not None:
        name, known = f"{argv[0]} {argv[1]}", list(group)
        hint = nearest(argv[1], known)
        hint = f"; did you mean 'xraydiff {argv[0]} {hint}'?" if hint else f" (one of: {', '.join(known)})"
    else:
        name, hint = argv[0], nearest(argv[0], TOP_LEVEL)
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
            from commands.lightning_cli import XrayCLI

            # args=None lets LightningCLI read sys.argv itself (it warns when given both).
            XrayCLI(args=None if from_command_line else argv)
        elif words := command_of(argv):
            parser, cfg = parse(argv)
            COMMANDS[words][1](parser, cfg)
        elif argv[:1] == ["experiment"] and len(argv) > 1 and argv[1] in studies():
            if any(arg in ("-h", "--help") for arg in argv[2:]):
                print(study_help(argv[1]))
            else:
                study(argv[1]).main(argv[2:])
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
