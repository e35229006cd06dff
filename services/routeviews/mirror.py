"""Mirror CAIDA reference files into our storage: skip present, verify, publish atomically.

For each file:

1. Present at the destination (listed once per kind and run)? Then a HEAD asks CAIDA
   for its size: same size, or no size given → ``skipped``; a different size → fetch
   again (CAIDA replaced the file).
2. GET with retries (``fetch.Fetcher``). 404 → ``missing``; other errors → ``failed``.
3. Verify: the body must decompress completely as gzip (CRC and length trailer
   checked) to something non-empty, else ``failed`` and nothing is written.
4. Publish with ``storage.write_bytes``: local files are written under a temporary name
   and renamed; a GCS single-request upload appears whole or not at all. Readers never
   see a partial file under its final name.

``sync`` takes pfx2as names from the creation log (about the last 30 days) and AS
snapshot names from the directory index (dated within ``snapshot_days``; the newest is
always taken). ``backfill`` covers a date range: per month it reads the folder index,
and when there is none it probes the 12 RIB times of each day (stopping at the first
hit); AS snapshots come from the index, or by probing the 1st of each month.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common import ipmeta, lifecycle
from services.common import storage as st
from services.common.logsetup import get_logger
from services.routeviews import caida
from services.routeviews.fetch import Fetcher
from services.routeviews.metrics import MirrorMetrics


@dataclass(slots=True)
class FileOutcome:
    kind: str
    name: str
    result: str  # mirrored | skipped | missing | failed
    bytes: int = 0
    attempts: int = 0
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "result": self.result}
        if self.bytes:
            d["bytes"] = self.bytes
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass
class RunSummary:
    command: str
    kinds: tuple[str, ...]
    outcomes: list[FileOutcome] = field(default_factory=list)
    listing_errors: dict[str, str] = field(default_factory=dict)  # kind → error
    duration_s: float = 0.0
    # kind → result (compiled/present/failed) → files: the parsed forms under compiled/
    compiled: dict[str, Counter[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {k: Counter() for k in self.kinds}
        for o in self.outcomes:
            out.setdefault(o.kind, Counter())[o.result] += 1
        return {k: dict(sorted(c.items())) for k, c in out.items()}

    def of(self, result: str) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.result == result]

    @property
    def failed(self) -> bool:
        return bool(self.listing_errors) or any(o.result == "failed" for o in self.outcomes)

    def kind_failed(self, kind: str) -> bool:
        return kind in self.listing_errors or any(
            o.result == "failed" for o in self.outcomes if o.kind == kind
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": not self.failed,
            "counts": self.counts(),
            "bytes": sum(o.bytes for o in self.outcomes if o.result == "mirrored"),
            "listing_errors": self.listing_errors,
            "problems": [o.to_dict() for o in self.outcomes if o.result in ("failed", "missing")],
            "mirrored": [o.name for o in self.outcomes if o.result == "mirrored"],
            "compiled": {k: dict(sorted(c.items())) for k, c in sorted(self.compiled.items())},
            "duration_s": round(self.duration_s, 3),
        }


def verify_gzip(data: bytes) -> str | None:
    """None when ``data`` is a complete, non-empty gzip stream, else the problem."""
    total = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz:
            while chunk := gz.read(1 << 20):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return f"not a complete gzip file: {type(exc).__name__}: {exc}"
    if total == 0:
        return "empty after decompression"
    return None


class Mirror:
    def __init__(
        self,
        *,
        base_url: str,
        dest: str,
        fetcher: Fetcher | None = None,
        metrics: MirrorMetrics | None = None,
        storage: st.Storage | None = None,
        check_remote_size: bool = True,
        compile_tables: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.dest = dest
        self.fetcher = fetcher or Fetcher()
        self.metrics = metrics or MirrorMetrics()
        self.storage = storage or st.storage_for(dest)
        self.check_remote_size = check_remote_size
        self.compile_tables = compile_tables
        self.log = get_logger("routeviews", dest=dest)
        self._present: dict[str, dict[str, int]] = {}

    # -- destination -----------------------------------------------------------------------

    def present(self, kind: str) -> dict[str, int]:
        """Name → size of the files of this kind already at the destination."""
        if kind not in self._present:
            spec = caida.SPECS[kind]
            found: dict[str, int] = {}
            try:
                for obj in self.storage.list(st.join(self.dest, spec.dest_dir)):
                    name = st.basename(obj.url)
                    if caida.parse_name(spec, name) is not None:
                        found[name] = obj.size
            except FileNotFoundError:
                pass
            self._present[kind] = found
        return self._present[kind]

    def _present_dates(self, kind: str) -> set[dt.date]:
        spec = caida.SPECS[kind]
        out: set[dt.date] = set()
        for name in self.present(kind):
            rf = caida.parse_name(spec, name)
            if rf is not None:
                out.add(rf.date)
        return out

    # -- one file --------------------------------------------------------------------------

    def mirror_file(self, rf: caida.RemoteFile) -> FileOutcome:
        outcome = self._mirror_file(rf)
        self._record(outcome)
        return outcome

    def _mirror_file(self, rf: caida.RemoteFile) -> FileOutcome:
        lifecycle.check()  # after a stop signal no new file starts
        present = self.present(rf.kind)
        src = caida.source_url(self.base_url, rf)
        if rf.name in present:
            if not self.check_remote_size:
                return FileOutcome(rf.kind, rf.name, "skipped", detail="present")
            remote = self.fetcher.head_size(src)
            if remote is None or remote == present[rf.name]:
                return FileOutcome(rf.kind, rf.name, "skipped", detail="present, same size")
            self.log.warning(
                "routeviews_size_changed", name=rf.name, local=present[rf.name], remote=remote
            )
        res = self.fetcher.get(src)
        if res.outcome == "missing":
            return FileOutcome(rf.kind, rf.name, "missing", attempts=res.attempts, detail=src)
        if not res.ok:
            return FileOutcome(
                rf.kind, rf.name, "failed", attempts=res.attempts, detail=f"{src}: {res.error}"
            )
        problem = verify_gzip(res.data)
        if problem is not None:
            return FileOutcome(
                rf.kind,
                rf.name,
                "failed",
                attempts=res.attempts,
                detail=f"not published: {problem}",
            )
        target = caida.dest_url(self.dest, rf)
        try:
            self.storage.write_bytes(target, res.data)
        except Exception as exc:  # storage errors are reported per file, the run goes on
            lifecycle.reraise_if_aborted(exc)
            return FileOutcome(
                rf.kind, rf.name, "failed", attempts=res.attempts, detail=f"publish {target}: {exc}"
            )
        present[rf.name] = len(res.data)
        return FileOutcome(rf.kind, rf.name, "mirrored", len(res.data), res.attempts, target)

    def _record(self, o: FileOutcome) -> None:
        self.metrics.files.labels(kind=o.kind, result=o.result).inc()
        if o.result == "mirrored":
            self.metrics.bytes.labels(kind=o.kind).inc(o.bytes)
        level = {"mirrored": "info", "skipped": "debug"}.get(o.result, "warning")
        getattr(self.log, level)(f"routeviews_file_{o.result}", **o.to_dict(), attempts=o.attempts)

    # -- listings --------------------------------------------------------------------------

    def _get_text(self, url: str) -> tuple[str | None, str | None]:
        """(text, error) of a small listing document."""
        res = self.fetcher.get(url)
        if res.ok:
            return res.data.decode("utf-8", "replace"), None
        return None, f"{url}: {res.error or res.outcome}"

    def _listing_failed(self, summary: RunSummary, kind: str, error: str) -> None:
        summary.listing_errors[kind] = error
        self.metrics.listing_failures.labels(kind=kind).inc()
        self.log.error("routeviews_listing_failed", kind=kind, error=error)

    # -- commands --------------------------------------------------------------------------

    def sync(
        self,
        kinds: Iterable[str] = caida.DEFAULT_KINDS,
        *,
        today: dt.date | None = None,
        snapshot_days: int = 400,
    ) -> RunSummary:
        """Mirror what CAIDA lists as current: the creation log / the recent snapshots."""
        kinds = tuple(kinds)
        today = today or dt.datetime.now(dt.UTC).date()
        summary = RunSummary("sync", kinds)
        t0 = time.monotonic()
        for kind in kinds:
            self.metrics.touch(kind)
            spec = caida.SPECS[kind]
            if spec.creation_log:
                text, error = self._get_text(caida.creation_log_url(self.base_url, spec))
                if text is None:
                    self._listing_failed(summary, kind, error or "creation log unreadable")
                    continue
                files = caida.files_from_creation_log(spec, text)
            else:
                text, error = self._get_text(caida.index_url(self.base_url, spec))
                if text is None:
                    self._listing_failed(summary, kind, error or "index unreadable")
                    continue
                listed = caida.files_from_index(spec, text)
                since = today - dt.timedelta(days=snapshot_days)
                files = [rf for rf in listed if rf.date >= since]
                if listed and not files:  # always keep the newest snapshot
                    newest = listed[-1].date
                    files = [rf for rf in listed if rf.date == newest]
            for rf in files:
                summary.outcomes.append(self.mirror_file(rf))
        return self._finish(summary, t0)

    def backfill(self, kinds: Iterable[str], start: dt.date, end: dt.date) -> RunSummary:
        """Mirror every file of the kinds dated start..end (inclusive)."""
        kinds = tuple(kinds)
        summary = RunSummary("backfill", kinds)
        t0 = time.monotonic()
        for kind in kinds:
            self.metrics.touch(kind)
            spec = caida.SPECS[kind]
            if spec.dated_subdirs:
                self._backfill_pfx2as(summary, spec, start, end)
            else:
                self._backfill_snapshots(summary, spec, start, end)
        return self._finish(summary, t0)

    def _backfill_pfx2as(
        self, summary: RunSummary, spec: caida.KindSpec, start: dt.date, end: dt.date
    ) -> None:
        for year, month in caida.months(start, end):
            url = caida.month_index_url(self.base_url, spec, year, month)
            text, error = self._get_text(url)
            lo = max(start, dt.date(year, month, 1))
            hi = min(end, _month_end(year, month))
            if text is not None:
                for rf in caida.files_from_index(spec, text):
                    if lo <= rf.date <= hi:
                        summary.outcomes.append(self.mirror_file(rf))
                continue
            self.log.info("routeviews_month_index_unavailable", url=url, error=error)
            self._probe_days(summary, spec, lo, hi)

    def _probe_days(
        self, summary: RunSummary, spec: caida.KindSpec, lo: dt.date, hi: dt.date
    ) -> None:
        have = self._present_dates(spec.kind)
        day = lo
        while day <= hi:
            if day in have:
                names = sorted(
                    n
                    for n in self.present(spec.kind)
                    if (rf := caida.parse_name(spec, n)) is not None and rf.date == day
                )
                for name in names:
                    o = FileOutcome(spec.kind, name, "skipped", detail="present")
                    self._record(o)
                    summary.outcomes.append(o)
            else:
                summary.outcomes.append(self._probe_day(spec, day))
            day += dt.timedelta(days=1)

    def _probe_day(self, spec: caida.KindSpec, day: dt.date) -> FileOutcome:
        for name in caida.probe_names(spec, day):
            rf = caida.RemoteFile(spec.kind, name, day)
            o = self._mirror_file(rf)
            if o.result == "missing":
                continue
            self._record(o)
            return o
        o = FileOutcome(
            spec.kind, f"{spec.name_prefix}-{day:%Y%m%d}-*", "missing", detail="no RIB time found"
        )
        self._record(o)
        return o

    def _backfill_snapshots(
        self, summary: RunSummary, spec: caida.KindSpec, start: dt.date, end: dt.date
    ) -> None:
        text, error = self._get_text(caida.index_url(self.base_url, spec))
        if text is not None:
            for rf in caida.files_from_index(spec, text):
                if start <= rf.date <= end:
                    summary.outcomes.append(self.mirror_file(rf))
            return
        # No index: CAIDA dates snapshots on the 1st of a month; probe those names.
        self.log.info("routeviews_index_unavailable", kind=spec.kind, error=error)
        for year, month in caida.months(start, end):
            first = dt.date(year, month, 1)
            if not start <= first <= end:
                continue
            for name in _snapshot_names(spec, first):
                o = self._mirror_file(caida.RemoteFile(spec.kind, name, first))
                if o.result != "missing":
                    self._record(o)
                    summary.outcomes.append(o)

    # -- parsed forms ----------------------------------------------------------------------

    def compile_outcomes(self, summary: RunSummary) -> None:
        """Publish the parsed form of each file this run mirrored or found present
        (``ipmeta.compile_reference``), so launchers and workers read it instead of
        parsing the file (a routeviews file of 1M prefixes: ~2 CPU-s per process).

        A routeviews file found present (same size as CAIDA's) whose entry exists under
        another name is not read again; any other file is read and hashed, and parsed only
        when its entry is missing. A failure is logged (``routeviews_compile_failed``) and
        counted, not fatal: the readers then parse that file themselves.
        """
        names: set[str] | None = None
        for o in summary.outcomes:
            if o.result not in ("mirrored", "skipped"):
                continue
            spec = caida.SPECS[o.kind]
            rf = caida.parse_name(spec, o.name)
            ref = ipmeta.ref_file_from_name(o.kind, caida.dest_url(self.dest, rf)) if rf else None
            if ref is None:
                continue
            lifecycle.check()  # after a stop signal no new file starts
            if names is None:
                names = ipmeta.compiled_names(self.storage, self.dest)
            codec = ipmeta.KIND_CODECS[o.kind].name
            prefix = ipmeta.entry_prefix(ref.file_id, codec)
            t0 = time.monotonic()
            name = ""
            # spec.dated_subdirs: a routeviews kind, the large files worth not reading again
            if (
                o.result == "skipped"
                and spec.dated_subdirs
                and any(n.startswith(prefix) for n in names)
            ):
                result = "present"
            else:
                try:
                    result, name = ipmeta.compile_reference(self.storage, self.dest, ref, names)
                except Exception as exc:  # reported per file; readers parse it themselves
                    lifecycle.reraise_if_aborted(exc)
                    result = "failed"
                    self.log.warning(
                        "routeviews_compile_failed",
                        kind=o.kind,
                        name=o.name,
                        error=f"{type(exc).__name__}: {exc}",
                    )
            summary.compiled.setdefault(o.kind, Counter())[result] += 1
            self.metrics.compiled.labels(kind=o.kind, result=result).inc()
            if result == "compiled":
                names.add(name)
                self.log.info(
                    "routeviews_file_compiled",
                    kind=o.kind,
                    name=o.name,
                    entry=name,
                    seconds=round(time.monotonic() - t0, 3),
                )

    def _finish(self, summary: RunSummary, t0: float) -> RunSummary:
        if self.compile_tables:
            self.compile_outcomes(summary)
        summary.duration_s = time.monotonic() - t0
        self.metrics.duration.set(summary.duration_s)
        now = time.time()
        for kind in summary.kinds:
            dates = self._present_dates(kind)
            if dates:
                newest = max(dates)
                ts = dt.datetime(newest.year, newest.month, newest.day, tzinfo=dt.UTC).timestamp()
                self.metrics.newest_file.labels(kind=kind).set(ts)
            if not summary.kind_failed(kind):
                self.metrics.last_success.labels(kind=kind).set(now)
        self.log.info("routeviews_run_done", **summary.to_dict())
        return summary


def _month_end(year: int, month: int) -> dt.date:
    nxt = dt.date(year + 1, 1, 1) if month == 12 else dt.date(year, month + 1, 1)
    return nxt - dt.timedelta(days=1)


def _snapshot_names(spec: caida.KindSpec, date: dt.date) -> list[str]:
    if spec.kind == ipmeta.KIND_AS2ORG:
        return [f"{date:%Y%m%d}.as-org2info.jsonl.gz", f"{date:%Y%m%d}.as-org2info.txt.gz"]
    return [f"{date:%Y%m%d}.as2types.txt.gz"]
