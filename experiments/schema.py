"""The one validator of study configs: a study declares its ``experiment:`` section as a dataclass whose
field types and ``option(...)`` constraints say what is valid; ``read_study_config`` checks a YAML file
against it and names the file and line of the first problem.

Types understood: int, float, str, bool, Any, ``X | None``, unions (first that fits), ``Literal[...]``,
``list[X]`` (a single X is read as a one-item list), ``dict[str, X]`` and nested dataclasses (their
unknown and missing keys are refused too; a class's ``retired`` maps old keys to what to say of them). A
dataclass deriving from ``Named`` is read as the dict of the keys it names (a variant that overrides only
what it names). Constraints apply to every number or string inside a field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from commands.parsing import BASE, config_bases, key_lines, read_yaml
from xraydiff.errors import DataError
from xraydiff.options import option

__all__ = ["Named", "fail", "option", "read_study_config"]

Key = tuple  # the YAML path of a value, e.g. ("experiment", "modes", "multi")


def _name(key: Key) -> str:
    """experiment.variants[1].strength"""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")


class Named:
    """Base of option sets that are read as a dict of only the keys given, each checked."""


class _Reader:
    def __init__(self, path: Path, lines: dict):
        self.path, self.lines = path, lines

    def fail(self, key: Key, message: str) -> typing.NoReturn:
        line = next((self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None)
        raise DataError(self.path, message, line)

    def build(self, cls: type, value: Any, key: Key) -> Any:
        """An instance of the dataclass ``cls`` from the mapping ``value`` at ``key``."""
        name = _name(key)
        if not isinstance(value, dict):
            self.fail(key, f"{name} must be a mapping of {[f.name for f in dataclasses.fields(cls)]}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        retired = getattr(cls, "retired", {})
        for old in sorted(value.keys() & retired.keys()):
            self.fail((*key, old), f"{name}.{old} {retired[old]}")
        for unknown in value.keys() - fields.keys():
            self.fail((*key, unknown), f"unknown key {name}.{unknown} (known: {sorted(fields)})")
        hints = typing.get_type_hints(cls)
        values = {}
        for field in fields.values():
            if field.name not in value:
                if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                    self.fail(key, f"{name}.{field.name} is required")
                continue
            values[field.name] = self.convert(value[field.name], hints[field.name], (*key, field.name))
            self.check(values[field.name], field.metadata, (*key, field.name))
        return {k: values[k] for k in value} if issubclass(cls, Named) else cls(**values)

    def convert(self, value: Any, tp: Any, key: Key) -> Any:
        """``value`` read as the type ``tp``; DataError naming the key otherwise."""
        name, origin, args = _name(key), get_origin(tp), get_args(tp)
        if tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            errors = []
            for alternative in (a for a in args if a is not type(None)):
                try:
                    return self.convert(value, alternative, key)
                except DataError as err:
                    errors.append(err)
            raise errors[-1]
        if origin is Literal:
            if value not in args:
                self.fail(key, f"{name} must be one of {list(args)}, got {value!r}")
            return value
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key)
        if origin is list:
            items = value if isinstance(value, list) else [value]
            return [self.convert(item, args[0], (*key, i)) for i, item in enumerate(items)]
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(key, f"{name} must be a mapping, got {value!r}")
            return {str(k): self.convert(v, args[1], (*key, k)) for k, v in value.items()}
        if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        self.fail(key, f"{name} must be {getattr(tp, '__name__', tp)}, got {value!r}")

    def check(self, value: Any, checks: typing.Mapping, key: Key) -> None:
        """The ``option`` constraints of a field on its value (every number or string inside it)."""
        if not checks or value is None:
            return
        name = _name(key)
        collection = isinstance(value, list | dict)
        if checks.get("nonempty") and collection and not value:
            self.fail(key, f"{name} must not be empty")
        if checks.get("distinct") and isinstance(value, list) and len(set(map(repr, value))) != len(value):
            self.fail(key, f"{name} must not repeat a value, got {value}")
        if checks.get("pairs") and isinstance(value, list) and len(value) % 2:
            self.fail(key, f"{name} must be pairs of option and value")
        items = value.items() if isinstance(value, dict) else enumerate(value) if collection else [(None, value)]
        for sub, item in items:
            where = key if sub is None else (*key, sub)
            label = _name(where)
            if isinstance(item, int | float) and not isinstance(item, bool) and not _inside(item, checks):
                self.fail(where, f"{label} must be {_interval(checks)}, got {item}")
            if isinstance(item, str):
                if checks.get("file") and not Path(item).is_file():
                    self.fail(where, f"{label}: {item} not found")
                if "pattern" in checks and not re.fullmatch(checks["pattern"], item):
                    self.fail(where, f"{label} must match {checks['pattern']}, got {item!r}")


def _inside(number: float, checks: typing.Mapping) -> bool:
    return not (
        ("min" in checks and number < checks["min"]) or ("above" in checks and number <= checks["above"])
        or ("max" in checks and number > checks["max"]) or ("below" in checks and number >= checks["below"])
    )  # fmt: skip


def _interval(checks: typing.Mapping) -> str:
    if checks.keys() & {"min", "above", "max", "below"} == {"min"}:
        return f"at least {checks['min']}"
    if checks.keys() & {"min", "above", "max", "below"} == {"above"}:
        return f"above {checks['above']}"
    left = f"[{checks['min']}" if "min" in checks else f"({checks['above']}" if "above" in checks else "(-inf"
    right = f"{checks['max']}]" if "max" in checks else f"{checks['below']})" if "below" in checks else "inf)"
    return f"in {left}, {right}"


def read_study_config(path: Path, schema: type) -> tuple[Any, dict]:
    """(the ``experiment:`` section of ``path`` as a ``schema`` instance, the line of every key); DataError
    naming the file and line for a missing file, a missing section, an unknown, missing or ill-typed key or
    a broken constraint."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "config not found")
    document, lines = {}, key_lines(path)
    for layer in [*config_bases(path), path]:  # a config holds only what differs from its base
        document = merged(document, read_yaml(layer))
    document.pop(BASE, None)
    if not isinstance(document, dict) or "experiment" not in document:
        raise DataError(path, "needs a top-level 'experiment' section")
    section = document["experiment"] or {}
    return _Reader(path, lines).build(schema, section, ("experiment",)), lines


def merged(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key (recursively), anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in over.items()}}
    return over


def fail(path: Path, lines: dict, key: Key, message: str) -> typing.NoReturn:
    """DataError naming ``path`` and the line of ``key`` (or of its nearest parent that has one)."""
    _Reader(Path(path), lines).fail(key, message)
