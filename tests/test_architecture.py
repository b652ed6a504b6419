"""The package graph docs/architecture.md draws: data flows one way, and so do the imports.

Every ``import`` and ``from ... import`` in the three packages is read with :mod:`ast`, the lazy ones
inside functions included, and each must go from a layer to the same or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Layers, lowest first: a module may import its own layer and those listed before it, never one after.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("models",),
    ("dosimetry",),
    ("sct_node", "sct_node.errors", "sct_node.logs", "sct_node.job_folder", "sct_node.config"),
    ("sct_node.dicom",),
    ("sct_node.report",),
    ("sct_node.node",),
    ("sct_node.console", "sct_node.dicomweb"),
    ("sct_node.tools",),
    ("sct_node.cli", "sct_node.__main__"),
)


def _layer(module: str) -> int | None:
    """The layer of a module of ours (by its longest matching prefix); None for a third-party module."""
    best: tuple[int, int] | None = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (index, len(name))
    return None if best is None else best[0]


def _module(path: Path, root: Path = REPO) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, absolute or relative, at the top or inside a function."""
    module = _module(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                name = ".".join(filter(None, (base, node.module)))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _files() -> list[Path]:
    return sorted(p for package in ("models", "dosimetry", "sct_node") for p in (REPO / package).rglob("*.py"))


def test_every_module_of_the_packages_has_a_layer():
    assert _files(), "no package files found"
    for path in _files():
        module = _module(path)
        assert _layer(module) is not None, f"{module} is in no layer of tests/test_architecture.py LAYERS"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_go_down_the_layers_only(path: Path):
    module = _module(path)
    own = _layer(module)
    assert own is not None
    upward = [f"line {line}: {name} (layer {LAYERS[target][0]})" for line, name in _imports(path)
              if (target := _layer(name)) is not None and target > own]
    assert not upward, f"{module} (layer {LAYERS[own][0]}) imports from a higher layer: {'; '.join(upward)}"


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path):
    """The check itself can fail: an import inside a function and a relative one are both found."""
    package = tmp_path / "dosimetry"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("import numpy\n\ndef f():\n    from sct_node.node import state\n"
                                    "    from .qa import run_qa\n    from ..sct_node.cli import main\n")
    found = [name for _, name in _imports(package / "bad.py", tmp_path)]
    assert found == ["numpy", "sct_node.node", "dosimetry.qa", "sct_node.cli"]
    own = _layer("dosimetry.bad")
    assert own is not None
    assert [name for name in found if (layer := _layer(name)) is not None and layer > own] == ["sct_node.node",
                                                                                             "sct_node.cli"]
    assert _layer("sct_node.report.pdf.pages") == _layer("sct_node.report")
