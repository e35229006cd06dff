"""Strict parsing of Censored Planet scan (archive) names.

Example:
    >>> s = parse_scan_name("CP_Quack-https-2021-04-26-04-21-46.tar.gz")
    >>> (s.source, s.family, s.scan_type, s.date.isoformat())
    ('CP_Quack-https-2021-04-26-04-21-46', 'hyperquack', 'https', '2021-04-26')
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

HYPERQUACK_TYPES = ("echo", "discard", "http", "https")
# Written by untar into a scan folder after all of its files: readers trust only these.
COMPLETION_MARKER = "_COMPLETE"
SCAN_TYPES = (*HYPERQUACK_TYPES, "satellite")

_NAME_RE = re.compile(
    r"(?P<source>CP[_-](?:Quack-(?P<hq>echo|discard|https|http)|(?P<sat>Satellite))"
    r"(?:-v\d+(?:\.\d+)?)?"
    r"-(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}))(?P<ext>\.tar\.gz)?\Z"
)


class UnknownScanName(ValueError):
    """The name is not a Censored Planet scan archive name."""


@dataclass(frozen=True, slots=True)
class ScanName:
    source: str
    family: str  # "hyperquack" | "satellite"
    scan_type: str  # echo | discard | http | https | satellite
    started: dt.datetime  # scan start as written in the name (no time zone given)

    @property
    def date(self) -> dt.date:
        return self.started.date()


def parse_scan_name(name: str) -> ScanName:
    """Parse an archive or folder name; raises UnknownScanName rather than guessing."""
    m = _NAME_RE.match(name)
    if m is None:
        raise UnknownScanName(f"not a Censored Planet scan name: {name!r}")
    try:
        started = dt.datetime.strptime(m["ts"], "%Y-%m-%d-%H-%M-%S")
    except ValueError as exc:
        raise UnknownScanName(f"bad timestamp in scan name {name!r}: {exc}") from None
    if m["hq"]:
        return ScanName(m["source"], "hyperquack", m["hq"], started)
    return ScanName(m["source"], "satellite", "satellite", started)
