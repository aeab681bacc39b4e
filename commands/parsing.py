"""Command-line parsers whose errors a user can act on: where (file and line, or the command line), which
key, what was expected, the nearest valid name; a few lines, never the whole usage or a Union dump.
No option may be abbreviated (``--trainer.max_step`` is not ``--trainer.max_steps``)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser as JsonArgumentParser
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from xraydiff.errors import DataError

MAX_LINES = 5


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


def where(key: str, argv: list[str]) -> str:
    """``FILE:LINE`` of the last config file that sets ``key`` (dotted), else "command line"."""
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
    return "command line"


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

    typed = list(re.finditer(r'Parser key "([\w.]+)":\s*\n\s*Expected a (.+?)\. Got value: (.*)', message))
    if typed:
        inner = typed[-1]
        key = inner.group(1) if not prefix or inner.group(1).startswith(prefix) else prefix + inner.group(1)
        expected = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", inner.group(2))
        return f"{where(key, argv)}: {key}: expected {expected}, got {inner.group(3).strip()!r}"

    unrecognized = re.search(r"[Uu]nrecognized arguments: (--?[\w.\-]+)", message)
    if unrecognized:
        option = unrecognized.group(1)
        hint = nearest(option, valid)
        return f"command line: {option}: no such option" + (f"; did you mean {hint}?" if hint else "")

    lines = [line for line in message.strip().splitlines() if line.strip()]
    return "\n".join(lines[:MAX_LINES])


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
        argv = _argv()
        text = explain(str(message), _option_names(self), argv)  # type: ignore[arg-type]
        prog = self.prog.replace(" [options]", "")
        if prog.split()[:1] == ["xraydiff"] and len(prog.split()) == 1 and argv:
            prog = f"xraydiff {argv[0]}"
        print(f"{prog}: error: {text}\n(see {prog} --help)", file=sys.stderr)
        sys.exit(2)


# The argument list being parsed when it is not sys.argv (in-process calls of ``cli.main``).
_ARGV: list[str] | None = None


def _argv() -> list[str]:
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

    def error(self, message: str, ex: Exception | None = None):
        # A misspelt plain option first: jsonargparse would only say that the option it meant is missing.
        # (Dotted keys are left to jsonargparse: a class's arguments are known only once it is resolved.)
        valid = _option_names(self)
        unknown = [
            option
            for option in (a.split("=", 1)[0] for a in _argv() if a.startswith("--"))
            if "." not in option and option not in valid
        ]
        if unknown and getattr(self, "exit_on_error", True):
            message = f"unrecognized arguments: {unknown[0]}"
        super().error(message, ex)


class XrayArgumentParser(ConciseErrors, LightningArgumentParser):
    """LightningCLI's parser without abbreviations, with concise errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
