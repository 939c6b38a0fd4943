"""Imports flow one way (docs/design.md): a module imports only its own package and lower layers.

Every module under src/dsd2 is parsed with ``ast``; module-level, function-local and
``TYPE_CHECKING`` imports all count, so a cycle cannot hide behind an import inside a function.
"""

import ast
from pathlib import Path

import pytest

import dsd2

SRC = Path(dsd2.__file__).parent

# The layers, lowest first: the one list of them. A unit is a top-level module or package of
# dsd2 ("dsd2" itself is the package root, which holds only the version). The sweep is being split
# into a package; sitting just below the CLI it may import any layer, so for now only what
# imports it is checked.
LAYERS = [
    {"dsd2", "errors", "units", "progress"},
    {"file_schemas", "safe_read"},  # what every reader goes through (docs/reading_files.md)
    {"plugins"},
    {"registry"},
    {"layer_defaults"},
    {"config", "store", "threads", "distributed", "memory_bound"},
    {"data", "noise", "models", "prune", "checkpoint", "shrink", "export_format"},
    {"train", "entropy", "flops", "phases"},
    {"rundir"},
    {"outdir"},
    {"compare", "runs"},
    {"verdict"},
    {"distill"},
    {"imp"},
    {"study", "report", "bank", "exporting"},
    {"inference"},
    {"fused"},  # K runs trained as one (dsd2.sweep.fuse groups a sweep's cells for it)
    {"sweep"},
    {"api"},
    {"cli"},
    {"__main__"},  # python -m dsd2
]
# The one upward import allowed: the package root re-exports the Python API lazily (PEP 562
# ``__getattr__`` in dsd2/__init__.py), so ``import dsd2`` stays cheap and ``dsd2.run`` works.
ROOT_FACADE = ("dsd2", "dsd2.api")
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_submodule(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dsd2 module) of every import in ``source``, wherever it appears in the file."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from dsd2 import store` imports the module dsd2.store
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if sub.startswith("dsd2.") and _is_submodule(sub) else base))
    return [(line, m) for line, m in found if m == "dsd2" or m.startswith("dsd2.")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    unit = unit_of(module)
    out = []
    for line, target in imported_modules(source, module, is_package):
        other = unit_of(target)
        if other == unit or (module, target) == ROOT_FACADE:
            continue
        if other not in LAYER_OF:
            out.append(f"{module}:{line}: imports {target}, which has no layer in LAYERS")
        elif LAYER_OF[other] >= LAYER_OF[unit]:
            out.append(f"{module}:{line}: {unit} (layer {LAYER_OF[unit]}) imports {target} (layer {LAYER_OF[other]})")
    return out


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({unit_of(module_name(p)) for p in MODULES} - set(LAYER_OF))
    assert not missing, f"add these to LAYERS in {Path(__file__).name}: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    if unit_of(module_name(path)) not in LAYER_OF:
        pytest.skip("no layer (reported by test_every_module_has_a_layer)")
    assert violations(path.read_text(), module_name(path), path.name == "__init__.py") == []


def test_the_check_sees_function_local_and_relative_imports():
    src = "def f():\n    from dsd2.imp import run\n\nfrom . import loss\nfrom dsd2 import __version__, store\n"
    found = sorted(imported_modules(src, "dsd2.distill.teacher", False))
    assert found == [(2, "dsd2.imp"), (4, "dsd2.distill.loss"), (5, "dsd2"), (5, "dsd2.store")]
    distill, imp = LAYER_OF["distill"], LAYER_OF["imp"]
    assert violations(src, "dsd2.distill.teacher") == [f"dsd2.distill.teacher:2: distill (layer {distill}) imports dsd2.imp (layer {imp})"]


def test_the_dataset_base_knows_no_dataset():
    # data/core.py (registry, splits, the RawDataset type) sits under every loader; the types it
    # names (a streamed split's ImageFiles) live in data/files.py, not in a dataset's module
    core = SRC / "data" / "core.py"
    allowed = {"dsd2.data.files", "dsd2.errors", "dsd2.registry"}
    imported = {m for _, m in imported_modules(core.read_text(), "dsd2.data.core", False)}
    assert imported <= allowed, f"data/core.py imports {sorted(imported - allowed)}"


# ----------------------------------------------------------------------------- private names stay home

# A name with a leading underscore belongs to its module: another module that needs it gets a public
# name instead. (module, "imported module.name") pairs allowed anyway; none is needed today.
PRIVATE_ALLOWED: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, module: str, is_package: bool) -> list[str]:
    """Where ``source`` imports a ``_private`` name from another dsd2 module, or reads one as an
    attribute of another dsd2 module it imported (``F._mpl`` after ``from dsd2.report import figures as F``)."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> the dsd2 module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dsd2.") and a.asname:
                    bound[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base != "dsd2" and not base.startswith("dsd2."):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if _is_submodule(sub):
                    bound[a.asname or a.name] = sub
                elif _private(a.name) and base != module:
                    found.append((node.lineno, f"{base}.{a.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = bound.get(node.value.id)
            if target is not None and target != module:
                found.append((node.lineno, f"{target}.{node.attr}"))
    return [f"{module}:{line}: uses the private {name}" for line, name in sorted(found) if (module, name) not in PRIVATE_ALLOWED]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_name_crosses_modules(path):
    assert private_uses(path.read_text(), module_name(path), path.name == "__init__.py") == []


def test_the_private_check_sees_imports_and_attributes():
    src = (
        "from dsd2.report import figures as F\nimport dsd2.store as S\nfrom dsd2.imp.measure import _predict, measure\n"
        "def f():\n    from . import html\n    return F._mpl('x'), S._UMASK, html._table, F.__name__, F.mpl_text\n"
    )
    assert private_uses(src, "dsd2.report.sweep", False) == [
        "dsd2.report.sweep:3: uses the private dsd2.imp.measure._predict",
        "dsd2.report.sweep:6: uses the private dsd2.report.figures._mpl",
        "dsd2.report.sweep:6: uses the private dsd2.report.html._table",
        "dsd2.report.sweep:6: uses the private dsd2.store._UMASK",
    ]
    assert private_uses("def _own():\n    pass\n_own()\n", "dsd2.store", False) == []


# ----------------------------------------------------------------------------- run-directory file names live in rundir


def run_dir_file_names() -> set[str]:
    from dsd2 import rundir
    from dsd2.rundir import layout

    names = {v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str) and "." in v}
    spelled = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert spelled <= names, "every file name of rundir/layout.py is re-exported by dsd2.rundir"
    return names | set(rundir.ROUND_FILES)


# Modules that may still spell a run-directory file: none left (every module names its files through
# a ``rundir.*_path`` function or constant). The list may only shrink.
# config sits below rundir: it recognises a run directory (load) and reads a teacher's recorded digest (identity) by name
FILE_NAME_LITERALS_LEFT: dict[str, set[str]] = {"dsd2.config.load": {"config.yaml"}, "dsd2.config.identity": {"meta.json"}}


def file_name_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and n.value in names]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_run_dir_file_names_are_spelled_only_in_rundir(path):
    module = module_name(path)
    if module in ("dsd2.rundir.layout", "dsd2.store"):  # the layout, and the round files' checksums
        return
    left = FILE_NAME_LITERALS_LEFT.get(module, set())
    found = [(line, name) for line, name in file_name_literals(path.read_text(), run_dir_file_names()) if name not in left]
    assert found == [], f"{module}: use a rundir path function (rundir.config_path(run_dir), ...) for {found}"


def test_the_literals_left_are_still_there():
    # an entry that no longer occurs is stale: the list may only shrink
    for module, names in FILE_NAME_LITERALS_LEFT.items():
        path = SRC.joinpath(*module.split(".")[1:]).with_suffix(".py")
        present = {name for _, name in file_name_literals(path.read_text(), names)}
        assert present == names, f"{module}: {sorted(names - present)} no longer spelled there: remove from FILE_NAME_LITERALS_LEFT"
