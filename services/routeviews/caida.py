"""CAIDA dataset layout: URLs, file names, the pfx2as creation log and directory indexes.

Facts (``shared/docs/formats.md`` §4):

* RouteViews prefix-to-AS: ``<base>/routing/routeviews-prefix2as/YYYY/MM/
  routeviews-rv2-YYYYMMDD-HHMM.pfx2as.gz`` (``oix`` instead of ``rv2`` before 2008-03;
  HHMM is one of 0000, 0200, …, 2200). IPv6: ``routing/routeviews6-prefix2as`` with
  ``routeviews-rv6-…``. Each dataset root has ``pfx2as-creation.log``: ``#`` comments,
  then ``seq<TAB>unix_time<TAB>YYYY/MM/<file>`` lines for about the last 30 files.
* AS organisations: ``<base>/as-organizations/YYYYMMDD.as-org2info.{txt,jsonl}.gz``.
* AS classification: ``<base>/as-classification/YYYYMMDD.as2types.txt.gz``.
* Folders are served with an HTML index (``<a href="name">``), which is how the
  as-organizations / as-classification files and a month of pfx2as files are listed.

Example:
    >>> spec = SPECS["routeviews"]
    >>> rf = parse_name(spec, "routeviews-rv2-20210530-1200.pfx2as.gz")
    >>> source_url("https://publicdata.caida.org/datasets", rf)
    'https://publicdata.caida.org/datasets/routing/routeviews-prefix2as/2021/05/routeviews-rv2-20210530-1200.pfx2as.gz'
    >>> dest_url("gs://meta", rf)
    'gs://meta/routeviews/2021/05/routeviews-rv2-20210530-1200.pfx2as.gz'
    >>> [e.path for e in parse_creation_log("# c\\n3364\\t1497803191\\t2017/06/x.gz\\n")]
    ['2017/06/x.gz']
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from urllib.parse import unquote, urlsplit

from services.common import ipmeta
from services.common import storage as st

DEFAULT_BASE_URL = "https://publicdata.caida.org/datasets"
CREATION_LOG = "pfx2as-creation.log"
PFX2AS_TIMES = tuple(f"{h:02d}00" for h in range(0, 24, 2))  # RIB snapshot times


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str  # routeviews | routeviews6 | as2org | as2class (= ipmeta kinds)
    source_dir: str  # under the CAIDA base URL
    dest_dir: str  # under our destination (= ipmeta.KIND_FOLDERS)
    dated_subdirs: bool  # YYYY/MM/ folders (source and destination)
    creation_log: bool  # the dataset root has pfx2as-creation.log
    name_prefix: str  # for probing names: routeviews-rv2 / routeviews-rv6


SPECS: dict[str, KindSpec] = {
    ipmeta.KIND_ROUTEVIEWS: KindSpec(
        ipmeta.KIND_ROUTEVIEWS,
        "routing/routeviews-prefix2as",
        ipmeta.KIND_FOLDERS[ipmeta.KIND_ROUTEVIEWS],
        True,
        True,
        "routeviews-rv2",
    ),
    ipmeta.KIND_ROUTEVIEWS6: KindSpec(
        ipmeta.KIND_ROUTEVIEWS6,
        "routing/routeviews6-prefix2as",
        ipmeta.KIND_FOLDERS[ipmeta.KIND_ROUTEVIEWS6],
        True,
        True,
        "routeviews-rv6",
    ),
    ipmeta.KIND_AS2ORG: KindSpec(
        ipmeta.KIND_AS2ORG,
        "as-organizations",
        ipmeta.KIND_FOLDERS[ipmeta.KIND_AS2ORG],
        False,
        False,
        "",
    ),
    ipmeta.KIND_AS2CLASS: KindSpec(
        ipmeta.KIND_AS2CLASS,
        "as-classification",
        ipmeta.KIND_FOLDERS[ipmeta.KIND_AS2CLASS],
        False,
        False,
        "",
    ),
}

# Names accepted on the command line for each kind.
KIND_ALIASES = {
    "routeviews": ipmeta.KIND_ROUTEVIEWS,
    "pfx2as": ipmeta.KIND_ROUTEVIEWS,
    "routeviews6": ipmeta.KIND_ROUTEVIEWS6,
    "pfx2as6": ipmeta.KIND_ROUTEVIEWS6,
    "as2org": ipmeta.KIND_AS2ORG,
    "asorg": ipmeta.KIND_AS2ORG,
    "as2class": ipmeta.KIND_AS2CLASS,
    "asclass": ipmeta.KIND_AS2CLASS,
    "as2types": ipmeta.KIND_AS2CLASS,
}
DEFAULT_KINDS = (ipmeta.KIND_ROUTEVIEWS, ipmeta.KIND_AS2ORG, ipmeta.KIND_AS2CLASS)


def resolve_kinds(text: str) -> tuple[str, ...]:
    """``"pfx2as,asorg"`` → ``("routeviews", "as2org")``; ValueError on unknown names."""
    out: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            return tuple(SPECS)
        if name not in KIND_ALIASES:
            raise ValueError(f"unknown kind {raw!r} (known: {', '.join(sorted(KIND_ALIASES))})")
        if KIND_ALIASES[name] not in out:
            out.append(KIND_ALIASES[name])
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file of one kind, named by CAIDA, with the date in its name."""

    kind: str
    name: str
    date: dt.date


def parse_name(spec: KindSpec, name: str) -> RemoteFile | None:
    """The RemoteFile for a CAIDA file name of this kind, or None if it is not one."""
    ref = ipmeta.ref_file_from_name(spec.kind, name)
    return None if ref is None else RemoteFile(spec.kind, name, ref.date)


def _month_dir(date: dt.date) -> str:
    return f"{date:%Y}/{date:%m}"


def dataset_url(base_url: str, spec: KindSpec) -> str:
    return f"{base_url.rstrip('/')}/{spec.source_dir}"


def source_url(base_url: str, rf: RemoteFile) -> str:
    spec = SPECS[rf.kind]
    if spec.dated_subdirs:
        return f"{dataset_url(base_url, spec)}/{_month_dir(rf.date)}/{rf.name}"
    return f"{dataset_url(base_url, spec)}/{rf.name}"


def dest_url(dest: str, rf: RemoteFile) -> str:
    spec = SPECS[rf.kind]
    if spec.dated_subdirs:
        return st.join(dest, spec.dest_dir, f"{rf.date:%Y}", f"{rf.date:%m}", rf.name)
    return st.join(dest, spec.dest_dir, rf.name)


def creation_log_url(base_url: str, spec: KindSpec) -> str:
    return f"{dataset_url(base_url, spec)}/{CREATION_LOG}"


def month_index_url(base_url: str, spec: KindSpec, year: int, month: int) -> str:
    return f"{dataset_url(base_url, spec)}/{year:04d}/{month:02d}/"


def index_url(base_url: str, spec: KindSpec) -> str:
    return f"{dataset_url(base_url, spec)}/"


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int
    created: int  # unix time
    path: str  # YYYY/MM/<file name>, relative to the dataset root


_LOG_PATH = re.compile(r"\d{4}/\d{2}/[A-Za-z0-9._-]+\Z")


def parse_creation_log(text: str) -> list[LogEntry]:
    """Data lines of ``pfx2as-creation.log``; comments and malformed lines are skipped.

    Only paths of the form ``YYYY/MM/<name>`` are accepted (no ``..``, no absolute URLs).
    """
    out: list[LogEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        if not _LOG_PATH.match(parts[2]):
            continue
        out.append(LogEntry(int(parts[0]), int(parts[1]), parts[2]))
    return out


def files_from_creation_log(spec: KindSpec, text: str) -> list[RemoteFile]:
    """The files of this kind the log lists, whose folder agrees with the name's date."""
    out: list[RemoteFile] = []
    for entry in parse_creation_log(text):
        folder, _, name = entry.path.rpartition("/")
        rf = parse_name(spec, name)
        if rf is not None and folder == _month_dir(rf.date):
            out.append(rf)
    return out


_HREF = re.compile(r"""href\s*=\s*["']([^"'#?]+)["']""", re.IGNORECASE)


def parse_index(html: str) -> list[str]:
    """File names linked from an HTML directory index (basenames, unquoted, unique)."""
    seen: dict[str, None] = {}
    for href in _HREF.findall(html):
        target = unquote(unescape(href))
        if urlsplit(target).scheme:
            continue
        name = target.rstrip("/").rsplit("/", 1)[-1]
        if name and not target.endswith("/"):
            seen.setdefault(name, None)
    return list(seen)


def files_from_index(spec: KindSpec, html: str) -> list[RemoteFile]:
    out = [parse_name(spec, name) for name in parse_index(html)]
    return sorted((rf for rf in out if rf is not None), key=lambda rf: (rf.date, rf.name))


def months(start: dt.date, end: dt.date) -> Iterator[tuple[int, int]]:
    """(year, month) pairs covering start..end inclusive."""
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        yield y, m
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)


def probe_names(spec: KindSpec, date: dt.date) -> list[str]:
    """Candidate pfx2as names for one day, in RIB-time order (when no index is served)."""
    return [f"{spec.name_prefix}-{date:%Y%m%d}-{hhmm}.pfx2as.gz" for hhmm in PFX2AS_TIMES]
