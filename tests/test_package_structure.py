"""Package structure, in the scanpy manner: the public API is listed, every public function and
class is documented, and the engine never imports Qt or napari (the GUI is one door of three)."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import napari_trihrge as th

PACKAGE_DIR = Path(th.__file__).resolve().parent

#: the modules behind ``th.<name>`` that make up the public Python API
PUBLIC_NAMESPACES = ["io", "pp", "tl", "pl", "datasets", "geometry", "metrics", "features"]

#: napari-side modules (they may import napari or Qt); everything else is engine
NAPARI_SIDE = {"napari"}

GUI_PACKAGES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt",
                "vispy"}


def _engine_files() -> list[Path]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR)
        if rel.parts[0] in NAPARI_SIDE:
            continue
        out.append(path)
    return out


def test_engine_modules_found():
    names = {p.relative_to(PACKAGE_DIR).as_posix() for p in _engine_files()}
    assert {"tl/__init__.py", "metrics.py", "model/network.py", "model/training.py",
            "workflows/cli.py"} <= names
    assert not any(n.startswith("napari/") for n in names)


@pytest.mark.parametrize("path", _engine_files(), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_engine_module_imports_no_gui_package(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & GUI_PACKAGES, f"{path.name} imports {sorted(imported & GUI_PACKAGES)}"


def test_running_the_engine_loads_no_gui_package():
    """Import every engine entry point in a fresh interpreter: no GUI package may come along."""
    code = (
        "import sys\n"
        "import napari_trihrge as th\n"
        "import napari_trihrge.workflows.cli, napari_trihrge.workflows.runs, napari_trihrge.workflows.cohort\n"
        f"for name in {PUBLIC_NAMESPACES!r}: getattr(th, name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(GUI_PACKAGES)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"GUI packages loaded by the engine: {out.stdout.strip()}"


@pytest.mark.parametrize("name", PUBLIC_NAMESPACES)
def test_public_namespace_lists_its_api(name):
    module = getattr(th, name)
    assert hasattr(module, "__all__"), f"th.{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"th.{name}.__all__ names what it does not have: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("name", PUBLIC_NAMESPACES)
def test_every_public_function_and_class_is_documented(name):
    module = getattr(th, name)
    undocumented = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if not (inspect.getdoc(obj) or "").strip():
                undocumented.append(attr)
    assert not undocumented, f"th.{name}: undocumented public API {undocumented}"


def test_top_level_namespaces_are_lazy_and_listed():
    assert set(PUBLIC_NAMESPACES) <= set(th.__all__)
    for name in PUBLIC_NAMESPACES:
        assert importlib.import_module(getattr(th, name).__name__) is getattr(th, name)


def test_one_device_resolver():
    """Each concept once: the engine resolves devices in one place."""
    definitions = [p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py")
                   if "def resolve_device(" in p.read_text()]
    assert definitions == ["device.py"]
