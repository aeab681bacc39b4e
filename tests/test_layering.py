"""Dependencies point one way: cli -> experiments -> commands -> lightning_modules / datamodules / callbacks
-> xraydiff -> libraries (DEVELOPERS.md); no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"cli": 5, "experiments": 4, "commands": 3, "lightning_modules": 2, "datamodules": 2, "callbacks": 2,
          "xraydiff": 1}  # fmt: skip


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
