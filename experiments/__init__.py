"""The studies: one module each, found by ``xraydiff experiment NAME`` without an edit of ``cli.py``.

A study module defines ``STUDY = StudyCommand(name, summary, description, run, schema)`` (``experiments.steps``);
``studies`` lists them and ``study_help`` prints one's command line and config schema without importing them
(help stays fast), and ``study`` imports one.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Literal, get_origin

from commands.parsing import ConfigParser


def _study_call(tree: ast.Module) -> ast.Call | None:
    """The ``StudyCommand(...)`` call a module assigns to ``STUDY``, if it does."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STUDY" for t in node.targets):
            return node.value
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _sources() -> dict[str, Path]:
    """name -> source file of every module of this package (on every entry of its ``__path__``)."""
    modules = sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    return {info.name: Path(info.module_finder.path, f"{info.name}.py") for info in modules if not info.ispkg}


def studies() -> dict[str, str]:
    """name -> one-line summary of every module of this package that assigns ``STUDY`` (read by ``ast``)."""
    found = {}
    for name, source in _sources().items():
        call = _study_call(ast.parse(source.read_text()))
        if call is not None:
            summary = _keyword(call, "summary")
            found[name] = ast.literal_eval(summary) if summary is not None else ""
    return found


def study(name: str):
    """The ``StudyCommand`` of the study module ``name``."""
    return importlib.import_module(f"experiments.{name}").STUDY


def study_parser(name: str, description: str) -> ConfigParser:
    """The command line of ``xraydiff experiment NAME``."""
    parser = ConfigParser(prog=f"xraydiff experiment {name}", description=description)
    parser.add_argument("--config", type=Path, required=True, help="YAML with an 'experiment' section")
    parser.add_argument("--out", type=Path, required=True, help="study folder (new, or an earlier run to resume)")
    return parser


def study_help(name: str) -> str:
    """``xraydiff experiment NAME --help``: the command line and the config's schema, without importing the study."""
    description = _keyword(_study_call(ast.parse(_sources()[name].read_text())), "description")
    parser = study_parser(name, ast.literal_eval(description) if description is not None else "")
    return f"{parser.format_help()}\nThe config's 'experiment' section (type, default, checks):\n\n{schema_text(name)}"


def schema_text(name: str) -> str:
    """The ``experiment:`` section a study reads, from its module's source (read, not imported: the help page
    waits for no model): the dataclass named by ``STUDY``'s ``schema`` and every dataclass of the module its
    fields name, one line per key with its type, its default (or "required"), its checks and its comment."""
    tree, classes = ast.parse(_sources()[name].read_text()), _dataclasses(_sources()[name], imported=True)
    schema = _keyword(_study_call(tree), "schema")
    if schema is None:
        return "(the study declares no schema)"
    root = ast.unparse(schema)
    shown, pending, out = set(), [("experiment", root)], []
    while pending:
        title, cls = pending.pop(0)
        if cls in shown:
            continue
        shown.add(cls)
        node, lines = classes[cls]
        out.append(f"{title}:" + (f"  # {cls}" if title != cls else ""))
        for base in (b.id for b in node.bases if isinstance(b, ast.Name) and b.id in classes):
            out.append(f"  (and the keys of {base})")
            pending.append((base, base))
        for item in node.body:
            if not isinstance(item, ast.AnnAssign) or ast.unparse(item.annotation).startswith("ClassVar"):
                continue
            kind = _choices(ast.unparse(item.annotation))
            default, text = _default(item.value)
            comment = lines[item.lineno - 1].partition("  # ")[2].partition("type: ignore")[0].strip()
            comment = comment or _comment_above(lines, item.lineno) or text
            out.append(f"  {item.target.id}: {kind}{default}" + (f"  # {comment}" if comment else ""))
            pending += [(used, used) for used in classes if re.search(rf"\b{used}\b", kind)]
        out.append("")
    return "\n".join(out).rstrip()


def _dataclasses(path: Path, imported: bool = False) -> dict[str, tuple[ast.ClassDef, list[str]]]:
    """name -> (class node, source lines) of the dataclasses of a module's source; with ``imported`` also those
    it imports from the project's other modules (their sources read, not imported), under the names it uses."""
    source = path.read_text()
    tree, lines = ast.parse(source), source.splitlines()
    found = {
        node.name: (node, lines)
        for node in tree.body
        if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list)
    }
    for node in tree.body if imported else ():
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("commands", "xraydiff"):
            module = Path(__file__).resolve().parents[1].joinpath(*node.module.split(".")).with_suffix(".py")
            if module.is_file():
                theirs = _dataclasses(module)
                found |= {a.asname or a.name: theirs[a.name] for a in node.names if a.name in theirs}
    return found


def _default(value: ast.expr | None) -> tuple[str, str]:
    """(`` = DEFAULT (checks)`` of a field's right-hand side, "required" where there is no default; its help)."""
    call = ast.unparse(value.func) if isinstance(value, ast.Call) else None
    if call not in ("option", "field"):
        return (f" = {_value(value)}" if value is not None else " (required)"), ""
    keywords = {k.arg: k.value for k in value.keywords}
    text = keywords.pop("help", None)
    text = ast.literal_eval(text) if isinstance(text, ast.Constant) else ""
    default = value.args[0] if value.args else keywords.pop("default", None)
    factory = keywords.pop("default_factory", None)
    if isinstance(factory, ast.Lambda):
        default = factory.body
    elif factory is not None:  # dict, list
        default = ast.parse({"dict": "{}", "list": "[]"}.get(ast.unparse(factory), "...")).body[0].value
    checks = [key if ast.unparse(v) == "True" else f"{key} {ast.unparse(v)}" for key, v in keywords.items()]
    if default is None:
        return f" (required{''.join(', ' + check for check in checks)})", text
    return f" = {_value(default)}" + (f" ({', '.join(checks)})" if checks else ""), text


def _value(node: ast.expr) -> str:
    """A default as written, a name of ``_named`` by its value."""
    named = _named()
    return repr(named[node.id]) if isinstance(node, ast.Name) and node.id in named else ast.unparse(node)


def _named() -> dict:
    """The named choices and defaults of ``xraydiff.diffusion.choices`` and ``commands.options`` (light imports)."""
    from commands import options
    from xraydiff.diffusion import choices

    return {**vars(options), **vars(choices)}


def _choices(annotation: str) -> str:
    """An annotation with the named choices of ``xraydiff.diffusion.choices`` spelt out."""
    for name, value in _named().items():
        if get_origin(value) is Literal or (name.isupper() and isinstance(value, tuple)):
            spelt = value if get_origin(value) is Literal else Literal[value]
            annotation = re.sub(
                rf"(?<!\w)(Literal\[{name}\]|{name})(?!\w)", repr(spelt).replace("typing.", ""), annotation
            )
    return annotation


def _comment_above(lines: list[str], lineno: int) -> str:
    """The comment lines just above a field (line ``lineno``, 1-based), joined."""
    found, k = [], lineno - 2
    while k >= 0 and lines[k].strip().startswith("#"):
        found.insert(0, lines[k].strip().lstrip("# "))
        k -= 1
    return " ".join(found)
