"""Options declared once: a dataclass field made by ``option`` carries its default, its help and its constraints,
and every reader is derived from it: the command line (``commands.options.add_options``), the studies' YAML
schema (``experiments.schema``) and the service functions, which take the dataclass itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, help: str = "", **checks) -> Any:
    """A dataclass field with its ``help`` and constraints: ``min`` / ``max`` (inclusive), ``above`` / ``below``
    (exclusive), ``nonempty``, ``distinct``, ``pairs`` (even length: option, value), ``file`` (strings name
    existing files), ``pattern`` (strings match the regular expression)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **checks})


def required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def values(options: Any, of: type | None = None, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of an options dataclass (those the dataclass ``of`` declares) as keyword arguments."""
    names = [f.name for f in dataclasses.fields(of or options) if f.name not in exclude]
    return {name: getattr(options, name) for name in names}
