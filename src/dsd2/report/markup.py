"""HTML building blocks of the reports: escaping, cell formatting, tables, and figure blocks
(the PNG inline as a data URI, links to its files)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from dsd2 import rundir
from dsd2.report import figures as F

PERCENT_COLUMNS = rundir.FRACTION_COLUMNS


def esc(value: Any) -> str:
    """HTML-escape anything (``None`` becomes an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if key in PERCENT_COLUMNS:
            return F.format_sparsity(value) if key == "sparsity" else f"{100 * value:.2f}"
        if key == "entropy" or key.startswith("entropy"):
            return f"{value:.4f}"
        if "pflops" in key:
            return f"{value:.4g}"
        if math.isfinite(value) and abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    cls: str = "",
    text_cols: Iterable[int] = (),
    wrap_cols: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; ``text_cols`` are left-aligned and wrap at spaces, ``_`` and ``-`` (a
    single longer word only where nothing else fits), ``wrap_cols`` (numbers) wrap at spaces;
    other cells keep on one line."""
    tcols = set(text_cols)
    wcols = set(wrap_cols) - tcols
    out = [f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>']
    out += [f'<th class="{"t" if i in tcols else ""}">{esc(h)}</th>' for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for ri, row in enumerate(rows):
        rc = row_classes[ri] if row_classes is not None and ri < len(row_classes) else ""
        out.append(f'<tr class="{esc(rc)}">')
        out += [
            f'<td class="{"t" if i in tcols else "w" if i in wcols else ""}">{_breakable(c) if i in tcols else esc(c)}</td>'
            for i, c in enumerate(row)
        ]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _breakable(text: Any) -> str:
    """``text`` escaped, with a line-break opportunity after each ``_`` and ``-``: a long run name
    wraps between its parts (demo_fmnist_seed-0-…), not in the middle of a word."""
    return esc(text).replace("_", "_<wbr>").replace("-", "-<wbr>")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


# Who hears of each figure as it is written (`dsd2 report` prints a line each: a report of many
# runs takes a minute); set with report_status().
_STATUS: ContextVar[Callable[[str], None] | None] = ContextVar("dsd2_report_status", default=None)


@contextmanager
def report_status(say: Callable[[str], None] | None) -> Iterator[None]:
    """Within the block, ``say(line)`` is called once per figure written (None: silent)."""
    token = _STATUS.set(say)
    try:
        yield
    finally:
        _STATUS.reset(token)


def figure_block(fig: Any, fig_dir: Path, stem: str, caption: str, written: list[Path]) -> str:
    paths = F.save_figure(fig, fig_dir, stem)
    written.extend(paths.values())
    say = _STATUS.get()
    if say is not None:
        say(f"figure {stem}: {caption}")
    png = paths["png"].read_bytes()
    links = " · ".join(f'<a href="figures/{esc(p.name)}">{esc(fmt.upper())}</a>' for fmt, p in paths.items())
    fig.clear()
    return f"<figure>{_img(png, caption)}<figcaption>{esc(caption)} ({links})</figcaption></figure>"
