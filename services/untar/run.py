"""One untar run: find archives without a marker, unpack each, report all.

Archives are the ``*.tar.gz`` objects anywhere under ``--raw``. Names are parsed
strictly (unknown ones are reported, not guessed at); an archive whose marker exists is
skipped (with ``recheck``, only while the marker's archive size and MD5 still match the
raw object). One failing archive never stops the others.

Example:
    >>> s = UntarSummary(raw="r", target="t")
    >>> s.to_dict()["unpacked"], s.ok
    (0, True)
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from services.common import lifecycle, progress, storage
from services.common.logsetup import get_logger
from services.common.scans import ScanName, UnknownScanName, parse_scan_name
from services.untar.markers import completed_archives, marker_url, read_marker
from services.untar.metrics import UntarMetrics
from services.untar.safety import HostileArchive, Limits
from services.untar.unpack import unpack_archive

ARCHIVE_SUFFIX = ".tar.gz"
DEFAULT_TMP_MAX_AGE_S = 6 * 3600.0


@dataclass
class UntarConfig:
    raw: str
    target: str
    limits: Limits = field(default_factory=Limits)
    scan_types: tuple[str, ...] | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    recheck: bool = False
    compresslevel: int = 6
    tmp_max_age_s: float = DEFAULT_TMP_MAX_AGE_S


@dataclass
class ArchiveOutcome:
    name: str
    result: str  # unpacked | skipped | failed | rejected | unknown_name
    reason: str = ""
    files: int = 0
    skipped_members: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass
class UntarSummary:
    raw: str
    target: str
    found: int = 0
    outcomes: list[ArchiveOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, result: str) -> list[ArchiveOutcome]:
        return [o for o in self.outcomes if o.result == result]

    @property
    def problems(self) -> list[ArchiveOutcome]:
        return [o for o in self.outcomes if o.result in ("failed", "rejected")]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "target": self.target,
            "found": self.found,
            **{
                r: len(self.of(r))
                for r in ("unpacked", "skipped", "failed", "rejected", "unknown_name")
            },
            "files_written": sum(o.files for o in self.outcomes),
            "members_skipped": sum(o.skipped_members for o in self.outcomes),
            "bytes_read": sum(o.bytes_read for o in self.outcomes),
            "bytes_written": sum(o.bytes_written for o in self.outcomes),
            "seconds": round(self.seconds, 3),
            "problems": {o.name: f"{o.result}: {o.reason}" for o in self.problems},
            "unknown_names": [o.name for o in self.of("unknown_name")],
        }


def _wanted(scan: ScanName, cfg: UntarConfig) -> bool:
    return not (
        (cfg.scan_types is not None and scan.scan_type not in cfg.scan_types)
        or (cfg.since is not None and scan.date < cfg.since)
        or (cfg.until is not None and scan.date > cfg.until)
    )


def _marker_matches(cfg: UntarConfig, scan: ScanName, info: storage.ObjectInfo) -> bool:
    doc = read_marker(marker_url(cfg.target, scan))
    if doc is None:
        return False
    if doc.get("archive_bytes") != info.size:
        return False
    return info.md5 is None or doc.get("archive_md5") == info.md5


def untar_all(cfg: UntarConfig, metrics: UntarMetrics | None = None) -> UntarSummary:
    started = time.monotonic()
    metrics = metrics or UntarMetrics()
    log: Any = get_logger("untar", raw=cfg.raw, target=cfg.target)
    summary = UntarSummary(raw=cfg.raw, target=cfg.target)
    raw_storage = storage.storage_for(cfg.raw)
    out = storage.storage_for(cfg.target)
    # A mistyped --raw is an error (exit 2), not "nothing new"; an empty folder is fine.
    lifecycle.require_input("untar", cfg.raw, "--raw")
    temps = lifecycle.TempLease(cfg.target, "untar", cfg.tmp_max_age_s)
    temps.claim_and_sweep()  # this run's lease; .tmp-* files of runs no longer alive go
    try:
        _untar_found(cfg, summary, metrics, log, raw_storage, out)
    finally:
        temps.release()
    for o in summary.outcomes:
        metrics.archives.labels(result=o.result).inc()
    summary.seconds = time.monotonic() - started
    metrics.duration.set(summary.seconds)
    if summary.ok:
        metrics.last_success.set_to_current_time()
    log.info("run_done", **{k: v for k, v in summary.to_dict().items() if k != "problems"})
    return summary


def _untar_found(
    cfg: UntarConfig,
    summary: UntarSummary,
    metrics: UntarMetrics,
    log: Any,
    raw_storage: storage.StreamStorage,
    out: storage.StreamStorage,
) -> None:
    archives: dict[str, tuple[ScanName, storage.ObjectInfo]] = {}
    for info in sorted(raw_storage.list(cfg.raw), key=lambda i: i.url):
        name = storage.basename(info.url)
        if not name.endswith(ARCHIVE_SUFFIX) or name.startswith("."):
            continue
        try:
            scan = parse_scan_name(name)
        except UnknownScanName as exc:
            summary.outcomes.append(ArchiveOutcome(name, "unknown_name", str(exc)))
            log.warning("archive_unknown_name", archive=info.url)
            continue
        if not _wanted(scan, cfg):
            continue
        if scan.source in archives:
            reason = f"same scan also at {archives[scan.source][1].url}; not unpacked"
            summary.outcomes.append(ArchiveOutcome(info.url, "failed", reason))
            log.error("archive_failed", archive=info.url, reason=reason)
            continue
        archives[scan.source] = (scan, info)
    summary.found = len(archives)
    metrics.found.inc(len(archives))

    done = completed_archives(out, storage.join(cfg.target, "scans"))
    shown = progress.task("untar", unit="archives", line_unit="files written")
    shown.add_total(files=len(archives), size=sum(info.size for _, info in archives.values()))
    for source, (scan, info) in sorted(archives.items(), key=lambda kv: (kv[1][0].started, kv[0])):
        name = storage.basename(info.url)
        lifecycle.check()  # after a stop signal no new archive starts
        if source in done and (not cfg.recheck or _marker_matches(cfg, scan, info)):
            summary.outcomes.append(ArchiveOutcome(name, "skipped", "marker present"))
            shown.advance(files=1, size=info.size)
            continue
        if source in done:
            log.warning("archive_changed", archive=info.url)
            out.delete(marker_url(cfg.target, scan))  # no longer complete: redo it
        try:
            res = unpack_archive(
                info.url,
                cfg.target,
                limits=cfg.limits,
                source=raw_storage,
                out=out,
                expected_md5=info.md5,
                compresslevel=cfg.compresslevel,
            )
        except HostileArchive as exc:
            outcome = ArchiveOutcome(name, "rejected", str(exc))
            log.error("archive_rejected", archive=info.url, reason=str(exc))
        except Exception as exc:
            lifecycle.reraise_if_aborted(exc)
            outcome = ArchiveOutcome(name, "failed", f"{type(exc).__name__}: {exc}")
            log.error("archive_failed", archive=info.url, reason=outcome.reason)
        else:
            outcome = ArchiveOutcome(
                name,
                "unpacked",
                files=len(res.files),
                skipped_members=len(res.skipped_members),
                bytes_read=res.archive_bytes,
                bytes_written=res.written_bytes,
            )
            log.info(
                "archive_unpacked",
                archive=info.url,
                files=[f.name for f in res.files],
                skipped_members=res.skipped_members,
                bytes_read=res.archive_bytes,
                bytes_written=res.written_bytes,
            )
            metrics.members.labels(result="written").inc(len(res.files))
            metrics.members.labels(result="skipped").inc(len(res.skipped_members))
            metrics.bytes_read.inc(res.archive_bytes)
            metrics.bytes_written.inc(res.written_bytes)
            shown.advance(lines=len(res.files))
        summary.outcomes.append(outcome)
        shown.advance(files=1, size=info.size)
