"""Figure files: PNG, SVG or PDF written atomically and readable by all, without dates or
software stamps (the same figure gives the same bytes)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from dsd2 import store


def write_public(path: Path, data: bytes) -> None:
    """Atomic write, then readable by all (temp files are created 0600): reports are shared."""
    store.atomic_write_bytes(path, data)
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "svg")) -> dict[str, Path]:
    """Write ``<stem>.<fmt>`` for every format atomically; return the paths by format."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for fmt in formats:
        buf = io.BytesIO()
        if fmt == "svg":
            with matplotlib.rc_context({"svg.hashsalt": "dsd2"}):
                fig.savefig(buf, format="svg", metadata={"Date": None})
        elif fmt == "pdf":
            fig.savefig(buf, format="pdf", metadata={"CreationDate": None, "ModDate": None})
        else:
            fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else None)
        path = out / f"{stem}.{fmt}"
        write_public(path, buf.getvalue())
        paths[fmt] = path
    return paths
