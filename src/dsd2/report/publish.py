"""Publishing a report folder: built in a staging folder, moved in, and replacing only the files
an earlier report listed (``.dsd2-report.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from dsd2 import outdir, store
from dsd2.errors import UserError
from dsd2.report import figures as F

# What a report wrote into its folder (relative path -> sha256): what a later report may replace.
REPORT_LISTING = ".dsd2-report.json"
_WHY_TAKEN = "move it away or give another -o (a report replaces only the files of an earlier dsd2 report)"


def _report_name(name: str) -> bool:
    """The names a report writes: index.html and figures/<stem>.<png|svg|pdf>."""
    if name == "index.html":
        return True
    folder, _, leaf = name.partition("/")
    return folder == "figures" and "/" not in leaf and not leaf.startswith(".") and leaf.endswith((".png", ".svg", ".pdf"))


def _earlier_report(out: Path) -> set[str]:
    """The files of an earlier report in ``out`` that still match its listing (the listing included)."""
    path = out / REPORT_LISTING
    if not outdir.regular_file(path) or path.stat().st_size > 16 << 20:
        return set()
    try:
        listing = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return set()
    files = listing.get("files") if isinstance(listing, dict) and listing.get("format") == "dsd2-report" else None
    if not isinstance(files, dict):
        return set()
    return outdir.owned(out, files, _report_name) | {REPORT_LISTING}


def publish_report(out: Path, page_for: Callable[[Path], str], *, chosen: bool = True) -> Path:
    """Build the report in a staging folder (``page_for(folder)`` writes the figures there and
    returns the HTML), then move it into ``out``: a file there that an earlier report did not
    write (index.html, figures/*) is never replaced; everything else in ``out`` stays.
    ``chosen``: ``out`` was given with ``-o`` (else, a sweep's own ``<sweep>/report``, the refusals
    do not offer a flag the command lacks)."""
    outdir.check_target(out, "-o" if chosen else "the report folder")
    ours = _earlier_report(out) if out.is_dir() else set()
    index = out / "index.html"
    elsewhere = f"move {out} away or give another -o" if chosen else f"move {out} away (the sweep writes its report there)"
    if os.path.lexists(index) and not os.path.lexists(out / REPORT_LISTING):  # say why, not "not dsd2's"
        raise UserError(
            f"{index} is listed by no {REPORT_LISTING} (a report made before dsd2 listed its files, or a page of "
            f"your own): a report replaces only files it listed; {elsewhere}"
        )
    why = _WHY_TAKEN if chosen else f"{elsewhere}; a report replaces only the files of an earlier dsd2 report"
    outdir.refuse_taken(out, ["index.html", REPORT_LISTING], ours, why)  # before the figures are drawn
    with outdir.staging(out, "choose a writable -o" if chosen else f"make {out.parent} writable") as tmp:
        F.write_public(tmp / "index.html", page_for(tmp).encode("utf-8"))
        files = outdir.files_under(tmp)
        store.write_json(tmp / REPORT_LISTING, {"format": "dsd2-report", "files": {n: store.sha256_file(tmp / n) for n in files}})
        outdir.publish(tmp, out, ours, listing=REPORT_LISTING, why=why)
    return out / "index.html"
