"""The studies: one module each, found by ``xraydiff experiment NAME`` without an edit of ``cli.py``.

A study module defines ``STUDY = StudyCommand(name, summary, description, run)`` (``experiments.steps``);
``studies`` lists them without importing (so ``xraydiff --help`` stays fast) and ``study`` imports one.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path


def studies() -> dict[str, str]:
    """name -> one-line summary of every module of this package that assigns ``STUDY`` (read by ``ast``)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        tree = ast.parse(Path(info.module_finder.path, f"{info.name}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STUDY" for t in node.targets):
                summary = next((k.value for k in node.value.keywords if k.arg == "summary"), None)
                found[info.name] = ast.literal_eval(summary) if summary is not None else ""
    return found


def study(name: str):
    """The ``StudyCommand`` of the study module ``name``."""
    return importlib.import_module(f"experiments.{name}").STUDY
