"""Command-line parsers whose errors a user can act on: where (file and line, or the command line), which
key, what was expected, the nearest valid name; a few lines, never the whole usage or a Union dump.
No option may be abbreviated (``--trainer.max_step`` is not ``--trainer.max_steps``)."""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, DefaultHelpFormatter
from jsonargparse import ArgumentParser as JsonArgumentParser

from xraydiff.errors import DataError

MAX_LINES = 5
# Sections of a full LightningCLI config that the plain subcommands accept and ignore.
LIGHTNING_SECTIONS = (
    "model",
    "trainer",
    "seed_everything",
    "ckpt_path",
    "optimizer",
    "lr_scheduler",
    "checkpoint",
    "step_checkpoint",
)


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to ``name`` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(name, sorted(set(valid)), n=1, cutoff=0.6)
    return found[0] if found else None


def config_paths(argv: list[str]) -> list[Path]:
    """The files named by ``--config PATH`` / ``--config=PATH`` / ``-c PATH`` in an argument list, in order."""
    paths = []
    for k, arg in enumerate(argv):
        value = argv[k + 1] if arg in ("--config", "-c") and k + 1 < len(argv) else None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is not None and not value.lstrip().startswith(("{", "[")):
            paths.append(Path(value))
    return paths


BASE = "base"  # a config's key naming the config(s) it holds the difference from


def expand_bases(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config X`` preceded by ``--config B`` for each config B that X names as its ``base``
    (a path or a list, relative to X's folder; recursively, bases first): configs compose in order, later keys
    over earlier ones, so a config holds only what differs from its base."""
    out: list[str] = []
    k = 0
    while k < len(argv):
        arg = str(argv[k])
        if arg in ("--config", "-c") and k + 1 < len(argv):
            value, step = str(argv[k + 1]), 2
        elif arg.startswith("--config="):
            value, step = arg.split("=", 1)[1], 1
        else:
            out.append(arg)
            k += 1
            continue
        if not value.lstrip().startswith(("{", "[")):
            out += [a for base in config_bases(Path(value)) for a in ("--config", str(base))]
        out += [str(a) for a in argv[k : k + step]]
        k += step
    return out


def config_bases(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """The configs ``path`` builds on, bases of bases first; DataError naming the file and line of a base that
    is missing or names a config it is itself a base of."""
    document = read_yaml(path) if path.is_file() else None
    names = document.get(BASE) if isinstance(document, dict) else None
    if names is None:
        return []
    line = key_lines(path).get((BASE,))
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(path, f"{BASE} must be a config file or a list of them, got {names!r}", line)
    found: list[Path] = []
    for name in names:
        base = Path(os.path.normpath(path.parent / name))
        if not base.is_file():
            raise DataError(path, f"{BASE}: {name} not found (relative to {path.parent}/)", line)
        if base.resolve() in (*seen, path.resolve()):
            raise DataError(path, f"{BASE}: {name} is built on this config (a cycle)", line)
        found += [*config_bases(base, (*seen, path.resolve())), base]
    return found


def compose_configs(paths: Iterable[str | Path]) -> dict:
    """The YAML document that ``--config`` files give the parser, read without it: each file's bases, then the
    file, later over earlier (sections, class specs and ``init_args`` merged key by key, an option's value
    replaced whole, as jsonargparse composes them); ``base`` dropped."""
    document: dict = {}
    for path in paths:
        for layer in [*config_bases(Path(path)), Path(path)]:
            document = _over(document, read_yaml(layer) or {}, ())
    document.pop(BASE, None)
    return document


def _over(below: Any, above: Any, key: tuple) -> Any:
    merges = len(key) < 2 or key[-1] == "init_args"  # sections, class specs, init_args; not an option's value
    if merges and isinstance(below, dict) and isinstance(above, dict):
        return {**below, **{k: _over(below.get(k), v, (*key, k)) for k, v in above.items()}}
    return above


def read_yaml(path: Path) -> Any:
    """A YAML file's content; DataError naming the file and line for a missing file or a syntax error."""
    if not path.is_file():
        raise DataError(path, "config file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DataError(path, f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None


def key_lines(path: Path) -> dict[tuple, int]:
    """Line numbers (1-based) of the mapping keys (and list items, by index) of a YAML file, by key path."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*prefix, key.value)] = key.start_mark.line + 1
                walk(value, (*prefix, key.value))
        elif isinstance(node, yaml.SequenceNode):  # list items by index
            for index, value in enumerate(node.value):
                lines[(*prefix, index)] = value.start_mark.line + 1
                walk(value, (*prefix, index))

    walk(yaml.compose(path.read_text()), ())
    return lines


def init_parameters(cls: type) -> set[str] | None:
    """Named parameters of ``cls.__init__`` and of the ``__init__`` its ``**kwargs`` reach (None: any)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
        if klass.__module__.split(".")[0] in ("lightning", "torch"):
            return None
    return names


def given_at(key: str, argv: list[str]) -> str | None:
    """Where ``key`` (dotted) was given: "command line", ``FILE:LINE`` of the last config file that sets it,
    or None."""
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in argv):
        return "command line"
    parts = tuple(key.split("."))
    for path in reversed(config_paths(argv)):
        try:
            line = key_lines(path).get(parts)
        except Exception:  # an unreadable file is reported by its own check
            line = None
        if line is not None:
            return f"{path}:{line}"
    return None


def given_value(key: str, argv: list[str]) -> str | None:
    """The value given to ``--key`` on the command line, if it was."""
    for k, arg in enumerate(argv):
        if arg == f"--{key}" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


def where(key: str, argv: list[str]) -> str:
    """``given_at``, "command line" when the key was not given at all (its default)."""
    return given_at(key, argv) or "command line"


def _class_parameters(class_path: str) -> set[str]:
    module, _, name = class_path.rpartition(".")
    try:
        return init_parameters(getattr(importlib.import_module(module), name)) or set()
    except (ImportError, AttributeError, ValueError):
        return set()


def explain(message: str, valid: Iterable[str], argv: list[str]) -> str:
    """A jsonargparse or argparse error message, in at most ``MAX_LINES`` lines a user can act on."""
    valid = set(valid)
    class_path = re.search(r"Problem with given class_path '([\w.]+)'", message)
    outer = re.match(r'Parser key "([\w.]+)"', message)
    prefix = f"{outer.group(1)}.init_args." if class_path and outer else ""
    options = _class_parameters(class_path.group(1)) if class_path else set()

    unknown = re.search(r"Option '([\w.]+)' is not accepted", message) or re.search(
        r"does not accept option '([\w.]+)'", message
    )
    if unknown:
        key = prefix + unknown.group(1)
        hint = nearest(unknown.group(1), options) if prefix else nearest(key, valid)
        hint = prefix + hint if prefix and hint else hint
        return f"{where(key, argv)}: {key}: no such option" + (f"; did you mean {hint}?" if hint else "")

    def in_class(key: str) -> str:  # a key of the class being resolved, as the user spells it
        return key if not prefix or key.startswith(prefix) else prefix + key

    typed = list(re.finditer(r'Parser key "([\w.]+)":\s*\n\s*Expected a (.+?)\. Got value: (.*)', message))
    if typed:
        inner = typed[-1]
        key = in_class(inner.group(1))
        expected = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", inner.group(2))
        return f"{where(key, argv)}: {key}: expected {expected}, got {inner.group(3).strip()!r}"

    keyed = re.findall(r'Parser key "([\w.]+)"', message)
    key = in_class(keyed[-1]) if keyed else None
    restricted = re.search(r"Not of type (\w+):.*?does not conform to restriction (.+)", message)
    union = re.search(r"Errors:\s*\n\s*- (.+)", message)
    if key and (restricted or union):
        value = given_value(key, argv)
        # "v>0 and v<=1" reads "must be > 0 and <= 1"
        rule = re.sub(r"v\s*([<>=!]+)\s*", r"\1 ", restricted.group(2).strip()) if restricted else None
        reason = f"must be {rule}" if rule else union.group(1).strip()
        return f"{where(key, argv)}: {key}: {reason}" + (f", got {value!r}" if value is not None else "")

    unrecognized = re.search(r"[Uu]nrecognized arguments: (--?[\w.\-]+)", message)
    if unrecognized:
        option = unrecognized.group(1)
        hint = nearest(option, valid)
        return f"command line: {option}: no such option" + (f"; did you mean {hint}?" if hint else "")

    lines = [line for line in message.strip().splitlines() if line.strip()]
    return "\n".join(lines[:MAX_LINES])


def located(error: Exception, argv: list[str], groups: tuple[str, ...] = ("data", "model")) -> DataError:
    """A value a class refused when it was instantiated from a config (jsonargparse wraps the class's DataError
    in a many-line Union report), as one line naming the key and where it was set: ``FILE:LINE`` of the config
    that sets it, or "command line"."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return DataError(None, f"invalid configuration: {str(error).strip().splitlines()[0]}")
    if cause.path is not None:  # it names its file already
        return cause
    # the option the message names: the first of its words that was given as a key of a group
    keys = [f"{group}.init_args.{word}" for word in re.findall(r"[A-Za-z_]\w*", cause.reason) for group in groups]
    key = next((key for key in keys if given_at(key, argv)), None)
    return DataError(None, f"{given_at(key, argv)}: {key}: {cause.reason}" if key else cause.reason)


def instantiate(parser: JsonArgumentParser, cfg):
    """``parser.instantiate_classes(cfg)``; a value a class refuses stops in one line (``located``)."""
    try:
        return parser.instantiate_classes(cfg)
    except ValueError as err:
        raise located(err, parsed_arguments()) from None


def _option_names(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string and every dotted key a parser (and its subcommand parsers) accepts."""
    names: set[str] = set()
    for action in parser._actions:
        names.update(action.option_strings)
        if isinstance(action.dest, str) and action.dest not in (argparse.SUPPRESS, "help"):
            names.add(action.dest)
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            names |= _option_names(sub)
    return names


class ConciseErrors:
    """Mixin for argparse-style parsers: ``error`` prints one short message and exits with code 2."""

    prog: str

    def error(self, message: str, ex: Exception | None = None):
        if not getattr(self, "exit_on_error", True):  # a parser jsonargparse nests: the error goes up
            return super().error(message, ex)  # type: ignore[misc]
        argv = parsed_arguments()
        text = explain(str(message), _option_names(self), argv)  # type: ignore[arg-type]
        prog = self.prog.replace(" [options]", "")
        if prog.split()[:1] == ["xraydiff"] and len(prog.split()) == 1 and argv:
            prog = f"xraydiff {argv[0]}"
        print(f"{prog}: error: {text}\n(see {prog} --help)", file=sys.stderr)
        sys.exit(2)


# The argument list being parsed when it is not sys.argv (in-process calls of ``cli.main``).
_ARGV: list[str] | None = None


def parsed_arguments() -> list[str]:
    """The argument list being parsed: ``sys.argv[1:]`` unless ``parsing`` named another."""
    return sys.argv[1:] if _ARGV is None else _ARGV


def parsing(argv: list[str] | None) -> None:
    """Tell the parsers which argument list they parse (None: ``sys.argv``)."""
    global _ARGV
    _ARGV = None if argv is None else [str(a) for a in argv]


class _HelpFormatter(DefaultHelpFormatter):
    """A plain option's help with its default where there is one to show (not for required options and
    flags); jsonargparse's type and default for the nested keys of classes (``--data.init_args...``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "." in action.dest or not action.option_strings or action.dest == "help":
            return super()._get_help_string(action)
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help or ""
        return f"{action.help} (default: %(default)s)"


class ConfigParser(ConciseErrors, JsonArgumentParser):
    """jsonargparse without abbreviations, with concise errors: the parser of every command but LightningCLI's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, *rest, **kwargs):
        return super().parse_args(expand_bases(sys.argv[1:] if args is None else list(args)), *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        # A misspelt plain option first: jsonargparse would only say that the option it meant is missing.
        # (Dotted keys are left to jsonargparse: a class's arguments are known only once it is resolved.)
        valid = _option_names(self)
        unknown = [
            option
            for option in (a.split("=", 1)[0] for a in parsed_arguments() if a.startswith("--"))
            if "." not in option and option not in valid
        ]
        if unknown and getattr(self, "exit_on_error", True):
            message = f"unrecognized arguments: {unknown[0]}"
        super().error(message, ex)


def asks_for_help() -> bool:
    """Whether the argument list being parsed asks for a help page (which must not wait for Lightning)."""
    return any(arg in ("-h", "--help") for arg in parsed_arguments())


def datamodule_names() -> list[str]:
    """The DataModules ``datamodules`` exports (its ``__all__``, read without importing Lightning)."""
    tree = ast.parse((Path(__file__).parents[1] / "datamodules" / "__init__.py").read_text())
    found = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    ]
    return ast.literal_eval(found[0]) if found else []


def data_parser(prog: str, description: str, uses: tuple[str, ...] = ()) -> ConfigParser:
    """A parser that takes a config with a ``data`` section; the other sections of a LightningCLI
    config are accepted and ignored (hidden from the help) unless in ``uses``. For a help page the data
    section is described, not resolved, so that Lightning is not imported to print it."""
    parser = ConfigParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config with a data section")
    parser.add_argument(f"--{BASE}", type=Any, default=None, help=argparse.SUPPRESS)  # read by expand_bases
    if asks_for_help():
        parser.add_argument(
            "--data",
            metavar="DATAMODULE",
            help=f"the dataset: a DataModule ({', '.join(datamodule_names())}), usually the data section of "
            "--config configs/data/NAME.yaml; any of its options as --data.init_args.NAME VALUE "
            f"(listed by {prog} --data.help CLASS)",
        )
    else:
        import lightning as L

        parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    for key in LIGHTNING_SECTIONS:
        if key not in uses:
            parser.add_argument(f"--{key}", type=Any, default=None, help=argparse.SUPPRESS)
    return parser
