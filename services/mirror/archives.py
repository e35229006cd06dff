"""Copy new scan archives from a source to the raw location, each exactly once.

For every ``*.tar.gz`` at the source whose name parses strictly as a Censored Planet
scan (others are reported as ``unknown_name``, never guessed at) and that passes the
date window and scan-type filter:

1. ``decide``: skip when ``<dest>/<archive name>`` already exists with the same size and
   MD5; copy when it is missing or differs.
2. Copy: stream source → destination in 1 MiB chunks through ``open_write``; the bytes
   are counted and hashed on the way and checked against the source's size (and MD5,
   when known) *before* the object is published. A crash or error mid-copy publishes
   nothing (local: a hidden ``.tmp-*`` file, removed on error or by the stale-temp
   sweep; GCS: an unfinished upload session). Transient errors are retried with
   backoff, the whole archive again.
3. Record the copy in the manifest (``manifest.py``).

A full destination (``ENOSPC``, or ``EDQUOT`` for a quota) stops the run: the archive
being copied is not published and its temp file is removed, the manifest keeps what was
published before, no further archive is attempted (they are listed as
``not_attempted``), and the run fails with the reason. A copy published just before its
manifest record no longer fitted is recorded by the next run (``_adopt``).

A rerun therefore resumes where a crashed run stopped: completed archives are skipped,
the interrupted one is copied again from the start.

Example:
    >>> entries = ["CP_Quack-echo-2021-05-30-01-01-01.tar.gz", "notes.tar.gz"]
    >>> sel = select(entries, since=None, until=None, scan_types=("echo",))
    >>> [s.source for _, s in sel.selected], sel.unknown
    (['CP_Quack-echo-2021-05-30-01-01-01'], ['notes.tar.gz'])
"""

from __future__ import annotations

import datetime as dt
import errno
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common import lifecycle, progress, storage
from services.common.httpfetch import is_transient
from services.common.logsetup import get_logger
from services.common.retry import RetryPolicy
from services.common.scans import ScanName, UnknownScanName, parse_scan_name
from services.mirror.manifest import (
    CopyRecord,
    Manifest,
    load_manifest,
    manifest_url,
    save_manifest,
)
from services.mirror.metrics import MirrorMetrics
from services.mirror.sources import Candidate, Source, SourceEntry, open_source

DEFAULT_TMP_MAX_AGE_S = 6 * 3600.0
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException) -> OSError | None:
    """The ``ENOSPC``/``EDQUOT`` error behind ``exc`` (itself, its cause or context)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class MirrorConfig:
    source: str
    dest: str
    since: dt.date | None = None
    until: dt.date | None = None
    scan_types: tuple[str, ...] | None = None  # None: all
    attempts: int = 3  # per archive, for transient errors
    backoff: RetryPolicy = field(default_factory=RetryPolicy)
    dry_run: bool = False
    tmp_max_age_s: float = DEFAULT_TMP_MAX_AGE_S
    allowed_hosts: tuple[str, ...] = ()  # other hosts an HTTPS index may link archives on


@dataclass(frozen=True, slots=True)
class Decision:
    copy: bool
    reason: str


@dataclass
class Outcome:
    name: str
    result: str  # copied | skipped | failed | unknown_name | would_copy | not_attempted
    reason: str
    bytes: int = 0


@dataclass
class MirrorSummary:
    source: str
    dest: str
    found: int = 0
    filtered_out: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None  # why the run stopped early (a full destination)

    def names(self, result: str) -> list[str]:
        return [o.name for o in self.outcomes if o.result == result]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "failed"]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        counts = {
            r: len(self.names(r))
            for r in ("copied", "skipped", "failed", "unknown_name", "would_copy")
        }
        return {
            "source": self.source,
            "dest": self.dest,
            "found": self.found,
            "filtered_out": self.filtered_out,
            **counts,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "failures": {o.name: o.reason for o in self.failed},
            "unknown_names": self.names("unknown_name"),
            "not_attempted": self.names("not_attempted"),
            "stopped": self.stopped,
        }


@dataclass
class Selection:
    selected: list[tuple[str, ScanName]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    filtered_out: int = 0


def select(
    names: Iterable[str],
    since: dt.date | None,
    until: dt.date | None,
    scan_types: tuple[str, ...] | None,
) -> Selection:
    """Parse names strictly and apply the date window (inclusive) and scan-type filter."""
    sel = Selection()
    for name in names:
        try:
            scan = parse_scan_name(name)
        except UnknownScanName:
            sel.unknown.append(name)
            continue
        if (
            (since is not None and scan.date < since)
            or (until is not None and scan.date > until)
            or (scan_types is not None and scan.scan_type not in scan_types)
        ):
            sel.filtered_out += 1
            continue
        sel.selected.append((name, scan))
    return sel


def decide(
    entry: SourceEntry,
    dest: storage.ObjectInfo | None,
    source_md5: Callable[[], str | None],
    dest_md5: Callable[[], str],
    record: CopyRecord | None,
) -> Decision:
    """Copy or skip one archive. MD5s are callables: computed only when sizes agree."""
    if dest is None:
        return Decision(True, "missing at destination")
    if dest.size != entry.size:
        return Decision(True, f"size differs (source {entry.size}, destination {dest.size})")
    src_md5 = source_md5()
    if src_md5 is None:
        # The source states no checksum (plain HTTP server): recognise our own copy.
        if (
            record is not None
            and record.dest_version == dest.version
            and record.size == dest.size
            and entry.etag is not None
            and record.source_etag == entry.etag
        ):
            return Decision(False, "same size and source version as when copied")
        if entry.etag is None:
            return Decision(False, "same size; the source gives no checksum or version")
        return Decision(True, "same size but the source version is new or unknown")
    if dest_md5() == src_md5.lower():
        return Decision(False, "same size and MD5")
    return Decision(True, "MD5 differs")


class _Run:
    def __init__(self, cfg: MirrorConfig, source: Source, metrics: MirrorMetrics) -> None:
        self.cfg = cfg
        self.source = source
        self.metrics = metrics
        self.dest_storage = storage.storage_for(cfg.dest)
        self.manifest: Manifest = load_manifest(cfg.dest)
        self.log: Any = get_logger("mirror", source=cfg.source, dest=cfg.dest)

    def dest_url(self, name: str) -> str:
        return storage.join(self.cfg.dest, name)

    def source_md5(self, entry: SourceEntry) -> str | None:
        if entry.md5:
            return entry.md5
        cached = self.manifest.cached_md5(entry.url, entry.etag)
        if cached:
            return cached
        md5 = self.source.content_md5(entry)
        if md5 is not None and not self.cfg.dry_run:
            self.manifest.remember_md5(entry.url, entry.etag, md5)
        return md5

    def dest_md5(self, info: storage.ObjectInfo) -> str:
        if info.md5:
            return info.md5
        cached = self.manifest.cached_md5(info.url, info.version)
        if cached:
            return cached
        md5 = storage.md5_of(info.url, self.dest_storage)
        if not self.cfg.dry_run:
            self.manifest.remember_md5(info.url, info.version, md5)
        return md5

    def decide(self, entry: SourceEntry, info: storage.ObjectInfo | None) -> Decision:
        return decide(
            entry,
            info,
            lambda: self.source_md5(entry),
            lambda: self.dest_md5(info) if info is not None else "",
            self.manifest.copies.get(entry.name),
        )

    def copy(self, entry: SourceEntry, if_absent: bool) -> storage.CopyResult:
        """One archive, tried ``cfg.attempts`` times on transient errors (the shared retry
        policy's schedule); nothing is published unless complete."""
        url = self.dest_url(entry.name)

        def once() -> storage.CopyResult:
            with self.source.open(entry) as src:
                return storage.copy_stream(
                    src,
                    url,
                    storage=self.dest_storage,
                    if_absent=if_absent,
                    expected_size=entry.size,
                    expected_md5=entry.md5,
                )

        def on_retry(error: str, attempt: int, delay: float) -> None:
            self.log.warning("archive_retry", archive=entry.name, attempt=attempt, error=error)

        return self.cfg.backoff.call(
            once, attempts=self.cfg.attempts, retry_on=_worth_another_copy, on_retry=on_retry
        )

    def _adopt(self, entry: SourceEntry, info: storage.ObjectInfo, decision: Decision) -> None:
        """Record an identical archive that has no copy record (e.g. a run stopped between
        publishing and recording it), so a checksum-less source recognises it later."""
        if decision.reason != "same size and MD5":
            return
        self.manifest.record_copy(
            entry.name,
            CopyRecord(
                source=entry.url,
                source_etag=entry.etag,
                size=info.size,
                md5=self.dest_md5(info),
                dest_version=info.version,
                copied_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            ),
        )

    def handle(self, candidate: Candidate) -> Outcome:
        entry = self.source.describe(candidate)
        url = self.dest_url(entry.name)
        info = self.dest_storage.stat(url)
        decision = self.decide(entry, info)
        if not decision.copy:
            if info is not None and entry.name not in self.manifest.copies and not self.cfg.dry_run:
                self._adopt(entry, info, decision)
            return Outcome(entry.name, "skipped", decision.reason)
        if self.cfg.dry_run:
            return Outcome(entry.name, "would_copy", decision.reason)
        try:
            result = self.copy(entry, if_absent=info is None)
        except storage.ObjectExists:
            # Another mirror published it meanwhile: keep theirs if it is the same archive.
            again = self.decide(entry, self.dest_storage.stat(url))
            if again.copy:
                raise RuntimeError(
                    f"a concurrent writer published a different object: {url}"
                ) from None
            return Outcome(entry.name, "skipped", "published concurrently: " + again.reason)
        dest_version = result.info.version if result.info is not None else None
        self.manifest.record_copy(
            entry.name,
            CopyRecord(
                source=entry.url,
                source_etag=entry.etag,
                size=result.size,
                md5=result.md5,
                dest_version=dest_version,
                copied_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            ),
        )
        if not storage.is_gcs(url):  # local files have no stored MD5: cache ours
            self.manifest.remember_md5(url, dest_version, result.md5)
        if entry.md5 is None and entry.etag is not None:  # source content under this version
            self.manifest.remember_md5(entry.url, entry.etag, result.md5)
        return Outcome(entry.name, "copied", decision.reason, result.size)

    def save(self) -> str | None:
        """Write the manifest; None, or why it could not be written (the manifest on
        disk then stays the last complete one; a published archive it lacks is recorded
        by the next run)."""
        try:
            save_manifest(self.cfg.dest, self.manifest)
        except Exception as exc:
            lifecycle.reraise_if_aborted(exc)
            full = no_space(exc)
            cause = full_reason(self.cfg.dest, full) if full else f"{type(exc).__name__}: {exc}"
            self.log.error("manifest_not_saved", url=manifest_url(self.cfg.dest), reason=cause)
            return f"the manifest could not be saved: {cause}"
        return None


def full_reason(dest: str, exc: OSError) -> str:
    """One line: the destination is full, and what to do."""
    what = exc.strerror or errno.errorcode.get(exc.errno or 0, "no space")
    return f"destination {dest} is full ({what}); free space there and rerun"


def _worth_another_copy(exc: BaseException) -> bool:
    """Copy the archive again after this error? Not once a stop signal has arrived."""
    if isinstance(exc, storage.ObjectExists) or lifecycle.requested() is not None:
        return False
    return is_transient(exc) or _is_transient_gcs(exc) or isinstance(exc, storage.ChecksumMismatch)


def _is_transient_gcs(exc: BaseException) -> bool:
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, gexc.ServerError | gexc.TooManyRequests)


def mirror_archives(
    cfg: MirrorConfig, *, source: Source | None = None, metrics: MirrorMetrics | None = None
) -> MirrorSummary:
    """Run the mirror once. Failures of single archives are reported, not raised."""
    started = time.monotonic()
    metrics = metrics or MirrorMetrics()
    if source is None and not cfg.source.startswith(("http://", "https://")):
        # A mistyped --source is an error (exit 2), not "nothing new"; an empty one is fine.
        lifecycle.require_input("mirror", cfg.source, "--source")
    src = source or open_source(cfg.source, cfg.backoff, cfg.allowed_hosts)
    run = _Run(cfg, src, metrics)
    summary = MirrorSummary(source=cfg.source, dest=cfg.dest)
    temps = lifecycle.TempLease(cfg.dest, "mirror", cfg.tmp_max_age_s)
    if not cfg.dry_run:  # this run's lease; .tmp-* files of runs no longer alive go
        temps.claim_and_sweep()
    try:
        _mirror_selected(cfg, src, run, summary, metrics)
    finally:
        temps.release()
    summary.seconds = time.monotonic() - started
    metrics.duration.set(summary.seconds)
    if not summary.failed and not summary.stopped:
        metrics.last_success.set_to_current_time()
    run.log.info("run_done", **{k: v for k, v in summary.to_dict().items() if k != "failures"})
    return summary


def _mirror_selected(
    cfg: MirrorConfig, src: Source, run: _Run, summary: MirrorSummary, metrics: MirrorMetrics
) -> None:
    candidates: dict[str, Candidate] = {}
    duplicates: list[Candidate] = []
    for cand in sorted(src.candidates(), key=lambda c: c.url):
        if cand.name in candidates:
            duplicates.append(cand)
        else:
            candidates[cand.name] = cand
    sel = select(candidates, cfg.since, cfg.until, cfg.scan_types)
    summary.found = len(sel.selected)
    summary.filtered_out = sel.filtered_out
    metrics.found.inc(len(sel.selected))
    for name in sel.unknown:
        summary.outcomes.append(Outcome(name, "unknown_name", "not a Censored Planet scan name"))
        run.log.warning("archive_unknown_name", archive=name, url=candidates[name].url)
    for dup in duplicates:
        reason = f"name also at {candidates[dup.name].url}; not copied from {dup.url}"
        summary.outcomes.append(Outcome(dup.name, "failed", reason))
        run.log.error("archive_failed", archive=dup.name, reason=reason)

    # The ETA goes by bytes when the listing gave every size (GCS, folders), else by count.
    sizes = {n: e.size for n, _ in sel.selected if (e := candidates[n].entry) is not None}
    if len(sizes) < len(sel.selected):
        sizes = {}
    shown = progress.task("mirror", unit="archives")
    shown.add_total(files=len(sel.selected), size=sum(sizes.values()))
    for name, _scan in sorted(sel.selected, key=lambda s: (s[1].started, s[0])):
        if summary.stopped:  # a full destination fits no further archive
            summary.outcomes.append(Outcome(name, "not_attempted", summary.stopped))
            continue
        lifecycle.check()  # after a stop signal no new archive starts
        try:
            outcome = run.handle(candidates[name])
        except Exception as exc:
            lifecycle.reraise_if_aborted(exc)
            full = no_space(exc)
            outcome = Outcome(name, "failed", f"{type(exc).__name__}: {exc}")
            if full is not None:
                summary.stopped = full_reason(cfg.dest, full)
                outcome.reason = f"{summary.stopped} (nothing of it was published)"
            run.log.error("archive_failed", archive=name, reason=outcome.reason)
        else:
            event = {"copied": "archive_copied", "would_copy": "archive_would_copy"}
            if outcome.result in event:
                run.log.info(
                    event[outcome.result], archive=name, bytes=outcome.bytes, why=outcome.reason
                )
            else:
                run.log.debug("archive_skipped", archive=name, why=outcome.reason)
            if outcome.result == "copied":  # published: record it before the next one
                summary.stopped = run.save()
        summary.outcomes.append(outcome)
        metrics.bytes.inc(outcome.bytes)
        shown.advance(files=1, size=sizes.get(name, 0))
    if not cfg.dry_run:  # hashes learnt while skipping (and records of adopted archives)
        unsaved = run.save()
        summary.stopped = summary.stopped or unsaved
    if summary.stopped:
        run.log.error(
            "run_stopped",
            reason=summary.stopped,
            not_attempted=len(summary.names("not_attempted")),
        )

    for outcome in summary.outcomes:
        if outcome.result in ("copied", "skipped", "failed", "unknown_name"):
            metrics.archives.labels(result=outcome.result).inc()
