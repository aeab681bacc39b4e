"""Dependencies point one way: cli -> experiments -> commands -> lightning_modules / datamodules / callbacks
-> xraydiff -> libraries (DEVELOPERS.md); no two modules import each other. Inside the core, packages by
concern: xraydiff.acceptance, xraydiff.diffusion -> xraydiff.data -> xraydiff.landmarks -> the core's
top-level modules (errors, precision, checkpoints, metrics, networks, options)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"cli": 5, "experiments": 4, "commands": 3, "lightning_modules": 2, "datamodules": 2, "callbacks": 2,
          "xraydiff": 1}  # fmt: skip
# Inside xraydiff: a package imports only from lower ones (and itself); acceptance and diffusion are siblings
# that never import each other; the top-level modules (layer 0) import only each other.
CORE_LAYERS = {"acceptance": 3, "diffusion": 3, "data": 2, "landmarks": 1}


def core_layer(module: str) -> tuple[str, int]:
    """(package or top-level module, layer) of a module of xraydiff; top-level modules are layer 0."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in CORE_LAYERS:  # a module of a package, or the package itself
        return parts[1], CORE_LAYERS[parts[1]]
    return module, 0


def project_imports() -> dict[str, set[str]]:
    """Module name -> project modules it imports (anywhere in the file, lazy imports included)."""
    graph = {}
    for path in [REPO / "cli.py", *(p for top in LAYERS if top != "cli" for p in (REPO / top).rglob("*.py"))]:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        graph[module] = {n for n in names if n.split(".")[0] in LAYERS}
    return graph


def test_every_import_points_down_the_layers():
    wrong = [
        f"{module} imports {name}"
        for module, names in project_imports().items()
        for name in names
        if LAYERS[name.split(".")[0]] > LAYERS[module.split(".")[0]]
    ]
    assert not wrong, wrong


def test_core_packages_import_only_lower_ones():
    wrong = []
    for module, names in project_imports().items():
        if module.split(".")[0] != "xraydiff":
            continue
        package, layer = core_layer(module)
        for name in names:
            other, other_layer = core_layer(name)
            if other != package and (other_layer > layer or other_layer == layer > 0):
                wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


def test_the_core_is_organised_by_concern():
    """Every core module lives in a package except the few shared by all of them."""
    top = {p.stem for p in (REPO / "xraydiff").glob("*.py")} - {"__init__"}
    assert top <= {"errors", "precision", "checkpoints", "metrics", "networks", "options"}, top
    assert {p.name for p in (REPO / "xraydiff").iterdir() if (p / "__init__.py").exists()} >= set(CORE_LAYERS)


def test_the_core_never_imports_lightning():
    for path in (REPO / "xraydiff").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in names), path


def test_no_two_modules_import_each_other():
    graph = project_imports()
    # a package's __init__ re-exporting its modules is not a cycle of logic
    cycles = [
        (a, b)
        for a, names in graph.items()
        for b in names
        if a < b and a in graph.get(b, set()) and not (a == b.rsplit(".", 1)[0] or b == a.rsplit(".", 1)[0])
    ]
    assert not cycles, cycles


def test_the_check_sees_a_wrong_import(tmp_path, monkeypatch):
    """The layering test can fail: a core module importing a LightningModule is reported."""
    fake = tmp_path / "xraydiff"
    fake.mkdir()
    (fake / "bad.py").write_text("from lightning_modules.generative import load_model\n")
    (tmp_path / "cli.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    graph = project_imports()
    assert graph["xraydiff.bad"] == {"lightning_modules.generative"}


def test_the_check_sees_an_upward_import_inside_the_core(tmp_path, monkeypatch):
    """A landmarks module importing from xraydiff.data (a higher package) is reported."""
    for package in ("landmarks", "data"):
        (tmp_path / "xraydiff" / package).mkdir(parents=True)
        (tmp_path / "xraydiff" / package / "__init__.py").write_text("")
    (tmp_path / "xraydiff" / "landmarks" / "bad.py").write_text("from xraydiff.data.readers import read\n")
    (tmp_path / "cli.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    with pytest.raises(AssertionError, match="xraydiff.landmarks.bad imports xraydiff.data.readers"):
        test_core_packages_import_only_lower_ones()
