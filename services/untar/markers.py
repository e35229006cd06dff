"""Output layout of untar and its completion markers.

``<target>/scans/<scan_type>/<scan>/<file>.json.gz`` per ``.json`` member, then
``<target>/scans/<scan_type>/<scan>/_COMPLETE`` (JSON: archive URL, size and MD5; per
file its member path, sizes and MD5 of the stored gzip), written last. ``<scan>`` is
the archive name without ``.tar.gz`` (e.g. ``CP_Quack-echo-2021-05-30-01-01-01``).

A folder without ``_COMPLETE`` is unfinished (a crashed run) and must not be read;
untar deletes and redoes it. :func:`completed_archives` is what a reader uses to know
which scan folders are complete.

Example:
    >>> from services.common.scans import parse_scan_name
    >>> marker_url("gs://b/t", parse_scan_name("CP_Quack-echo-2021-05-30-01-01-01.tar.gz"))
    'gs://b/t/scans/echo/CP_Quack-echo-2021-05-30-01-01-01/_COMPLETE'
"""

from __future__ import annotations

import json
from typing import Any

from services.common import storage
from services.common.scans import COMPLETION_MARKER, ScanName

MARKER_NAME = COMPLETION_MARKER
SCANS_DIR = "scans"
MARKER_FORMAT = 1


def archive_folder(target: str, scan: ScanName) -> str:
    return storage.join(target, SCANS_DIR, scan.scan_type, scan.source)


def marker_url(target: str, scan: ScanName) -> str:
    return storage.join(archive_folder(target, scan), MARKER_NAME)


def completed_archives(st: storage.Storage, prefix: str) -> set[str]:
    """Names of the scan folders under ``prefix`` that have a completion marker.

    ``prefix`` may be the untar target or its ``scans`` folder (the launcher's
    ``--input``); the names are folder names such as ``CP_Quack-echo-2021-05-30-01-01-01``
    (the ``source`` of ``parse_scan_name``). One listing, no marker is read.
    """
    return {
        storage.parent_name(info.url)
        for info in st.list(prefix)
        if storage.basename(info.url) == MARKER_NAME
    }


def read_marker(url: str) -> dict[str, Any] | None:
    """The marker's JSON, or None if there is none (or it cannot be parsed)."""
    try:
        doc = json.loads(storage.storage_for(url).read_bytes(url))
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
