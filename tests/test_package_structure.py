"""Package structure, in the scanpy manner: the public API is listed, every public function and
class is documented, and the engine never imports Qt or napari (the GUI is one door of three)."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import types
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


def _own_public_objects(module) -> list[str]:
    """Public functions and classes reachable on ``module`` that the package itself defines
    (what a user sees as that namespace's API)."""
    names = []
    for attr in vars(module):
        obj = getattr(module, attr)
        if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if (getattr(obj, "__module__", "") or "").startswith(module.__name__):
            names.append(attr)
    return names


@pytest.mark.parametrize("name", PUBLIC_NAMESPACES)
def test_public_namespace_lists_everything_it_defines(name):
    module = getattr(th, name)
    unlisted = sorted(set(_own_public_objects(module)) - set(module.__all__))
    assert not unlisted, f"th.{name} defines public names missing from __all__: {unlisted}"


@pytest.mark.parametrize("name", PUBLIC_NAMESPACES)
def test_dir_of_a_namespace_is_its_public_api(name):
    """``dir(th.tl)`` (and tab completion) shows the API, not ``np``, ``pd`` or ``time``."""
    module = getattr(th, name)
    listed = dir(module)
    modules = [a for a in listed if isinstance(getattr(module, a), types.ModuleType)]
    assert not modules, f"dir(th.{name}) lists modules: {modules}"
    assert sorted(listed) == sorted(module.__all__)


# -----------------------------------------------------------------------------------------
# Import graph: every module imports, and the package's own imports have no circle
# -----------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = [th.__name__, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


ALL_MODULES = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_imports(name: str, path: Path, lazy: bool = False) -> set[str]:
    """The package modules that importing ``name`` runs: its module-level imports (class bodies,
    if/try/with blocks included; ``if TYPE_CHECKING:`` left out), each with the packages above
    it that are not above ``name`` too (Python runs those first). ``lazy``: imports inside
    function bodies count too (they run as soon as the function is called)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    imported: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lazy:
                    visit(node.body)
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                imported.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = base[:len(base) - node.level + 1]
                    mod = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in ALL_MODULES]
                imported.extend(subs)
                if len(subs) < len(node.names):
                    imported.append(mod)
            for field in ("body", "orelse", "finalbody", "handlers"):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list) and inner and isinstance(inner[0], ast.AST):
                        visit(inner)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    deps = set()
    for target in imported:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            above = ".".join(parts[:i])
            if above in ALL_MODULES and not (name == above or name.startswith(above + ".")):
                deps.add(above)
    return deps


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_package_has_no_import_circle():
    graph = {name: _import_time_imports(name, path) for name, path in ALL_MODULES.items()}
    assert graph[f"{th.__name__}.tissue"] >= {f"{th.__name__}.blocks",
                                               f"{th.__name__}.errors"}  # the graph is read
    assert not _import_cycles(graph), _import_cycles(graph)


def test_no_import_circle_even_through_lazy_imports():
    """An import inside a function is an import too: deferring it hides a circle from Python's
    import machinery, not from the reader."""
    graph = {name: _import_time_imports(name, path, lazy=True)
             for name, path in ALL_MODULES.items()}
    reader = f"{th.__name__}.napari._reader"
    assert f"{th.__name__}.io" in graph[reader]  # the graph is read, function bodies too
    assert not _import_cycles(graph), _import_cycles(graph)
    qt = f"{th.__name__}.napari._qt"
    qt_users = sorted(n for n, deps in graph.items() if not (n == qt or n.startswith(qt + "."))
                      and any(d == qt or d.startswith(qt + ".") for d in deps))
    assert not qt_users, f"Qt-free modules that import napari/_qt: {qt_users}"


def test_the_cycle_check_finds_a_circle():
    assert _import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _import_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(ALL_MODULES))
def test_every_module_imports(name):
    if name.split(".")[1:2] == ["napari"]:  # the napari side needs napari (and Qt for _qt)
        pytest.importorskip("napari")
    importlib.import_module(name)


#: each concept written once: (what, regular expression, the only files that may contain it)
ONE_PLACE = [
    ("file moves into place", r"\bos\.(replace|rename)\(|shutil\.move\(", {"_atomic.py"}),
    ("temporary files", r"tempfile\.(mkstemp|mkdtemp|NamedTemporaryFile)\(", {"_atomic.py"}),
    ("library-size normalisation", r"normalize_total\(", {"pp/__init__.py"}),
    ("log transform of expression", r"\blog1p\(", {"pp/__init__.py", "evaluation.py"}),
    ("block means by reshaping",
     r"reshape\([^()]*\)\s*\\?\s*\.(mean|sum|any|max)\(\s*axis=\(", set()),
    ("the device resolver", r"def resolve_device\(", {"device.py"}),
    ("the per-gene trust columns", r"TRUST_COLUMNS\s*=", {"metrics.py"}),
    ("the per-gene trust table", r"def gene_trust\(", {"metrics.py"}),
    ("the 'pixel sizes disagree' text", r"\.0%\}\s*apart|-fold apart", {"geometry.py"}),
    ("the pixel-size tolerances", r"PIXEL_SIZE_\w+\s*=\s*[\d.]", {"geometry.py"}),
    ("the density factor rule", r"DENSITY_FACTORS\s*=|\(2, 4, 8(, 16)?\)", {"geometry.py"}),
    ("the sample's uns['trihrge'] check", r"no uns\['trihrge'\]", {"io/sample.py"}),
    ("the virtual-spot AnnData", r'f"v\{i:07d\}"', {"tl/_shared.py"}),
]


@pytest.mark.parametrize("what, pattern, allowed", ONE_PLACE, ids=[c[0] for c in ONE_PLACE])
def test_each_concept_is_written_in_one_place(what, pattern, allowed):
    import re

    found = sorted(p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py")
                   if re.search(pattern, p.read_text()))
    assert set(found) <= allowed, f"{what} outside {sorted(allowed)}: {found}"


def test_one_device_resolver():
    """Each concept once: the engine resolves devices in one place."""
    definitions = [p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py")
                   if "def resolve_device(" in p.read_text()]
    assert definitions == ["device.py"]


#: public functions of tl/pp/pl whose first argument is not one AnnData ``adata``, and what it is
FIRST_ARGUMENT_EXCEPTIONS = {
    "tl.transfer": "train_adatas",  # several training sections, then the target
    "tl.train": "adatas",  # one or several training sections
    "tl.transfer_genes": "adatas",  # the sections a cross-section model sees
    "tl.predict": "model",  # a saved model, applied to a target
    "tl.validate_config": "cfg",  # checks a RunConfig before any data is read
    "tl.model_preset": "cfg",
    "tl.trust_summary": "metrics",  # a run's metrics dict
    "tl.check_writable_folder": "path",
    "tl.map_grid": "image",  # steps of the dense maps, on arrays and images
    "tl.predict_maps": "fits",
    "tl.map_spot_consistency": "maps",
    "pl.overview_figure": "image",  # the run overview from arrays
}


def _public_functions():
    for ns in ("tl", "pp", "pl"):
        module = getattr(th, ns)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isfunction(obj):
                yield f"{ns}.{attr}", obj


@pytest.mark.parametrize("name, func", list(_public_functions()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_public_function_signature_convention(name, func):
    """scanpy style: the data first (``adata``, or a documented exception), every option
    (a parameter with a default) keyword-only."""
    params = list(inspect.signature(func).parameters.values())
    assert params[0].name == FIRST_ARGUMENT_EXCEPTIONS.get(name, "adata"), (
        f"{name}: first argument {params[0].name!r}")
    positional_options = [p.name for p in params if p.default is not p.empty
                          and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert not positional_options, f"{name}: options not keyword-only: {positional_options}"


def test_signature_exceptions_are_still_needed():
    names = dict(_public_functions())
    stale = sorted(set(FIRST_ARGUMENT_EXCEPTIONS) - set(names))
    assert not stale, f"exceptions for functions that no longer exist: {stale}"
    assert all(list(inspect.signature(names[n]).parameters)[0] != "adata"
               for n in FIRST_ARGUMENT_EXCEPTIONS)
