"""dsd2: study and dodge sparse double descent in neural-network pruning.

The Python API (:mod:`dsd2.api`): ``run``, ``resume``, ``pipeline``, ``export``,
``load_exported``, ``exported_transform``, ``predict``, ``compare_runs``, ``write_report`` and
their result types. They are imported on first use (PEP 562), so
``import dsd2`` stays cheap: the CLI starts fast and ``dsd2.config`` still loads without torch.
"""

from typing import Any

__version__ = "0.1.0"

_API = (
    "run",
    "resume",
    "pipeline",
    "export",
    "load_exported",
    "exported_transform",
    "predict",
    "compare_runs",
    "write_report",
    "RunResult",
    "PipelineResult",
    "ExportResult",
    "Predictions",
)
__all__ = ["__version__", *_API]


def __dir__() -> list[str]:
    # the lazy names show in dir(dsd2) and a notebook's tab completion, as if imported
    return sorted({*globals(), *_API})


def __getattr__(name: str) -> Any:
    if name in _API:
        from dsd2 import api  # the package root's one import of a higher layer (tests/test_layers.py allows it)

        return getattr(api, name)
    raise AttributeError(f"module 'dsd2' has no attribute {name!r}")
