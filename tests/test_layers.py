"""Imports flow one way (README, "Design"): a module imports only its own package and lower layers.

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
    {"dsd2", "errors"},
    {"file_schemas", "safe_read"},  # what every reader goes through (docs/reading_files.md)
    {"plugins"},
    {"registry"},
    {"config", "store", "threads", "distributed", "memory_bound"},
    {"data", "noise", "models", "prune", "checkpoint", "shrink"},
    {"train", "entropy", "flops", "phases"},
    {"rundir"},
    {"compare", "runs"},
    {"distill"},
    {"imp"},
    {"study", "report", "bank", "exporting"},
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
