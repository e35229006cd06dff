"""Find the scan files to process under an input location.

Layout: ``…/<scan name>/<file>.json[.gz]`` with a scan name such as
``CP_Quack-echo-2021-05-30-01-01-01``. Names are parsed strictly; anything that is not a
recognised data file is reported back (never guessed at, never silently dropped).

Example:
    >>> plan = discover("/nonexistent", ("echo",), "v")
    >>> plan.tasks, plan.skipped
    ([], [])
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.satellite import parse as satellite
from services.common import storage
from services.common.scans import COMPLETION_MARKER, UnknownScanName, parse_scan_name

HYPERQUACK_DATA_FILES = frozenset({"results.json"})
# Other members of Hyperquack archives: known, not data for the base tables.
HYPERQUACK_SIDE_FILES = frozenset({"servers.txt", "domains.txt"})


@dataclass(frozen=True)
class Skipped:
    url: str
    reason: str
    task: FileTask | None = None  # set for files of a known scan: recorded in the ledger


@dataclass
class InputPlan:
    tasks: list[FileTask] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def discover(
    input_url: str,
    scan_types: tuple[str, ...],
    pipeline_version: str,
    require_markers: bool = False,
    start_date: dt.date | None = None,
    end_date: dt.date | None = None,
) -> InputPlan:
    """List ``input_url`` and return one FileTask per data file of ``scan_types``.

    With ``require_markers`` only scan folders holding untar's completion marker are
    read; files of unfinished folders are reported as skipped.
    """
    plan = InputPlan()
    by_key: dict[str, FileTask] = {}
    objects = list(storage.storage_for(input_url).list(input_url))
    complete = {
        storage.parent_name(o.url) for o in objects if storage.basename(o.url) == COMPLETION_MARKER
    }
    for obj in objects:
        name = storage.basename(obj.url)
        if name.startswith(".") or name == COMPLETION_MARKER:
            continue
        if require_markers and storage.parent_name(obj.url) not in complete:
            plan.skipped.append(Skipped(obj.url, "scan folder has no completion marker yet"))
            continue
        folder = storage.parent_name(obj.url)
        try:
            scan = parse_scan_name(folder)
        except UnknownScanName:
            plan.skipped.append(Skipped(obj.url, f"folder {folder!r} is not a scan name"))
            continue
        if scan.scan_type not in scan_types:
            continue
        if (start_date and scan.date < start_date) or (end_date and scan.date > end_date):
            continue  # outside the requested date window (backfills)
        base = strip_gz(name)
        task = FileTask(
            url=obj.url,
            source=scan.source,
            source_file=base,
            scan_type=scan.scan_type,
            scan_date=scan.date.isoformat(),
            size=obj.size,
            version=obj.version,
            pipeline_version=pipeline_version,
        )
        if scan.family == "satellite":
            reason = satellite.skip_reason(base)
            if reason is not None:
                plan.skipped.append(Skipped(obj.url, f"{name}: {reason}", task))
                continue
        elif base in HYPERQUACK_SIDE_FILES:
            continue
        elif base not in HYPERQUACK_DATA_FILES:
            # Recorded in processed_files like the files a Satellite scan should not hold.
            reason = f"unknown file {name!r} in a Hyperquack scan"
            plan.skipped.append(Skipped(obj.url, reason, task))
            continue
        previous = by_key.get(task.file_key)
        if previous is not None:
            # results.json and results.json.gz of one scan: keep the .gz, report the other.
            keep, drop = (task, previous) if task.url.endswith(".gz") else (previous, task)
            by_key[task.file_key] = keep
            plan.skipped.append(Skipped(drop.url, f"duplicate of {keep.url}"))
            continue
        by_key[task.file_key] = task
    plan.tasks = sorted(by_key.values(), key=lambda t: t.file_key)
    return plan
