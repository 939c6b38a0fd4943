"""One listing of an image folder per run start.

A start reads an image folder twice: the data fingerprint checks every file the loader will read
(:mod:`dsd2.data.fingerprint`), then the loader reads them. Both ask :func:`scan` for the folder's
file list; inside :func:`one_scan` (a run's start, :func:`dsd2.imp.setup.start`) the folder is
listed once, so the fingerprint covers exactly the list the loader then reads (same root, same
``follow_links`` rule). Outside it every call lists the folder again: a long-lived process (a
notebook) never reuses a listing across starts, whatever changed on disk in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dsd2.data.folder_scan import ImageFolder

_listed: dict[tuple[str, bool], ImageFolder] | None = None


@contextmanager
def one_scan() -> Iterator[None]:
    """Within it, :func:`scan` lists each (folder, follow_links) once (nested: the outer one holds)."""
    global _listed
    if _listed is not None:
        yield
        return
    _listed = {}
    try:
        yield
    finally:
        _listed = None


def scan(root: str | Path, *, follow_links: bool = False) -> ImageFolder:
    """:func:`dsd2.data.image_folder.scan_folder`, once per start (see the module doc)."""
    from dsd2.data.folder_scan import scan_folder

    if _listed is None:
        return scan_folder(root, follow_links=follow_links)
    key = (os.path.abspath(os.path.expanduser(str(root))), bool(follow_links))
    if key not in _listed:
        _listed[key] = scan_folder(root, follow_links=follow_links)
    return _listed[key]
