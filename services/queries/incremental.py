"""Which partitions a run must rebuild, from the ledger and the service's own state.

The launcher's ledger (``processed_files``) has one row per input file with the time its
run committed it. Per scan we compare ``(files, newest processed_at)`` with what the
previous run consumed (``derived._query_sources``): a scan is *changed* when it is new,
when one of its files was (re)processed, or when it left the ledger. The partitions to
rebuild are the dates the changed scans have rows on now, plus the dates they had rows
on before (so a date a scan no longer writes is rebuilt too).

Example:
    >>> days = [dt.date(2021, 5, 30), dt.date(2021, 5, 31), dt.date(2021, 6, 2)]
    >>> [(a.isoformat(), b.isoformat()) for a, b in chunk_ranges(days, max_days=92)]
    [('2021-05-30', '2021-05-31'), ('2021-06-02', '2021-06-02')]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.scans import UnknownScanName, parse_scan_name

MIN_DATE = dt.date(1, 1, 1)
MAX_DATE = dt.date(9999, 12, 31)
# A scan's rows are dated from its start (the prober's local date, which may be the day
# before the UTC date in the name) to a few days after it.
DAYS_BEFORE_SCAN = 2
DAYS_AFTER_SCAN = 7


@dataclass(frozen=True)
class LedgerScan:
    source: str
    scan_type: str | None
    files: int
    last_processed_at: Any  # datetime from the backend (compared, never computed on)


@dataclass
class ChangeSet:
    """The scans that changed since the last run and the dates they touch."""

    all_sources: bool  # first run or --full: every scan is taken as changed
    changed: set[str] = field(default_factory=set)
    dates_now: dict[str, dict[dt.date, int]] = field(default_factory=dict)  # source → date → rows
    dates_before: dict[str, set[dt.date]] = field(default_factory=dict)
    ledger: dict[str, LedgerScan] = field(default_factory=dict)
    unchanged_dates: set[dt.date] = field(default_factory=set)  # dates of unchanged scans

    @property
    def affected_dates(self) -> set[dt.date]:
        out: set[dt.date] = set()
        for s in self.changed:
            out |= set(self.dates_now.get(s, {}))
            out |= self.dates_before.get(s, set())
        return out

    @property
    def all_dates(self) -> set[dt.date]:
        """Every date with base rows once this run's changes are taken in."""
        out = set(self.unchanged_dates)
        for dates in self.dates_now.values():
            out |= set(dates)
        return out

    def source_rows(self) -> list[dict[str, Any]]:
        """``_query_sources`` rows for the changed scans still in the ledger."""
        rows: list[dict[str, Any]] = []
        for source in sorted(self.changed):
            scan = self.ledger.get(source)
            if scan is None:
                continue
            base = {
                "source": source,
                "scan_type": scan.scan_type,
                "files": scan.files,
                "last_processed_at": scan.last_processed_at,
            }
            dates = self.dates_now.get(source) or {}
            if not dates:
                rows.append({**base, "date": None, "row_count": 0})
            for date in sorted(dates):
                rows.append({**base, "date": date, "row_count": dates[date]})
        return rows


def ledger_scans(rows: Iterable[Mapping[str, Any]]) -> dict[str, LedgerScan]:
    return {
        r["source"]: LedgerScan(
            r["source"], r["scan_type"], int(r["files"]), r["last_processed_at"]
        )
        for r in rows
    }


def diff(
    ledger: Mapping[str, LedgerScan],
    consumed_rows: Iterable[Mapping[str, Any]],
    everything: bool,
) -> ChangeSet:
    """Compare the ledger with the consumed state (``everything``: treat all as changed)."""
    consumed: dict[str, tuple[int, Any]] = {}
    dates_before: dict[str, set[dt.date]] = {}
    for r in consumed_rows:
        consumed[r["source"]] = (int(r["files"] or 0), r["last_processed_at"])
        if r["date"] is not None:
            dates_before.setdefault(r["source"], set()).add(_as_date(r["date"]))
    all_sources = everything or not consumed
    if all_sources:
        changed = set(ledger) | set(consumed)
    else:
        changed = {
            s
            for s, scan in ledger.items()
            if consumed.get(s) != (scan.files, scan.last_processed_at)
        } | (set(consumed) - set(ledger))
    unchanged: set[dt.date] = set()
    for s, dates in dates_before.items():
        if s not in changed:
            unchanged |= dates
    return ChangeSet(
        all_sources=all_sources,
        changed=changed,
        dates_before={s: d for s, d in dates_before.items() if s in changed},
        ledger=dict(ledger),
        unchanged_dates=unchanged,
    )


def scan_window(sources: Iterable[str]) -> tuple[dt.date, dt.date]:
    """Partitions that can hold rows of these scans (from the dates in their names)."""
    dates = []
    for s in sources:
        try:
            dates.append(parse_scan_name(s).date)
        except UnknownScanName:
            return MIN_DATE, MAX_DATE
    if not dates:
        return MIN_DATE, MIN_DATE
    return (
        min(dates) - dt.timedelta(days=DAYS_BEFORE_SCAN),
        max(dates) + dt.timedelta(days=DAYS_AFTER_SCAN),
    )


def chunk_ranges(dates: Iterable[dt.date], max_days: int) -> list[tuple[dt.date, dt.date]]:
    """Contiguous runs of ``dates``, each at most ``max_days`` long."""
    out: list[tuple[dt.date, dt.date]] = []
    for d in sorted(set(dates)):
        if out:
            start, end = out[-1]
            if d == end + dt.timedelta(days=1) and (d - start).days < max_days:
                out[-1] = (start, d)
                continue
        out.append((d, d))
    return out


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
