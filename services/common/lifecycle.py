"""Stopping a stage cleanly, and staging that outlives no run.

Signals. :func:`run_main` runs a stage's ``main`` with handlers for SIGTERM and SIGINT.
The first signal raises :class:`Aborted` (a ``BaseException``, so ``except Exception``
handlers do not swallow it) in the main thread, unless a commit is in progress
(:func:`critical`): then it is raised as soon as the commit has finished, so a commit
either completes or never starts. Loops that catch ``Exception`` per item call
:func:`reraise_if_aborted` first, because some libraries turn an interrupt into an
ordinary exception. When the abort reaches :func:`run_main`, it removes the staging this
process holds, runs the stage's abort callbacks (failure metrics), writes one
``run_aborted`` log line and exits with 143 (SIGTERM) or 130 (SIGINT).

Leases. Every staging area a run creates gets a lease file next to it first
(``<name>.lease``: hostname, boot id, pid and the process start time from
``/proc/<pid>/stat``) and loses it last. A starting stage sweeps staging whose owner is
gone: on the same host (and boot), the pid is not running or runs a different process
(start time differs). A lease from another host (or a ``gs://`` location) cannot be
checked, so it counts as abandoned only when older than an age threshold. A staging
folder with no lease belongs to no run (claims write the lease first, releases remove it
last) and is removed.

Temp folders. :func:`run_main` gives each stage process its own temp folder,
``<TMPDIR>/cp-run-tmp/<stage>-<pid>-<start ticks>/`` (a leased staging folder), and points
``TMPDIR`` and :data:`tempfile.tempdir` at it, so everything the process and its child
processes put in the temp folder (Beam's ``beam-pipeline-temp*``, worker subprocesses of
Beam's multi-process mode) lives there. It is removed when the process ends, and a
starting stage removes the folders of processes that died without cleaning up (SIGKILL),
unless a live process still has that folder as its ``TMPDIR`` (a worker subprocess that
outlived its launcher).

Example:
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> area = StagingArea(root, "demo")
    >>> path = area.claim("run1")
    >>> os.makedirs(path); sorted(os.listdir(root))
    ['run1', 'run1.lease']
    >>> lease_state(read_lease(os.path.join(root, "run1.lease")))
    'alive'
    >>> _ = area.release("run1"); os.listdir(root)
    []
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

import orjson

from services.common import logsetup, storage
from services.common.logsetup import get_logger

LEASE_SUFFIX = ".lease"
TEMP_LEASE_PREFIX = storage.LEASE_PREFIX  # leases of stages writing .tmp-* into a folder
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
HANDLED = (signal.SIGTERM, signal.SIGINT)


class Aborted(BaseException):
    """A stop signal arrived; the stage unwinds, removes its staging and exits."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.exit_code = EXIT_CODES.get(signal.Signals(signum), 128 + signum)
        super().__init__(f"stopped by {self.signame}")


class _Holder(Protocol):
    def release_all(self) -> tuple[int, int]: ...


class _Guard:
    """Process-wide signal state (signals are delivered to the main thread only)."""

    def __init__(self) -> None:
        self.active = False  # inside run_main: callbacks and holders are collected
        self.signum: int | None = None
        self.raised = False
        self.deferred = 0
        self.areas: list[_Holder] = []
        self.on_abort: list[Callable[[], None]] = []
        self.run_tmp: RunTemp | None = None  # this process's temp folder (run_main)

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self.deferred or self.raised:
            return  # inside a commit (raised when it ends) or already unwinding
        self.raised = True
        raise Aborted(self.signum)

    def reset(self) -> None:
        self.signum, self.raised, self.deferred = None, False, 0
        self.areas.clear()
        self.on_abort.clear()
        self.run_tmp = None


_GUARD = _Guard()


def requested() -> str | None:
    """Name of the stop signal received, if any."""
    return None if _GUARD.signum is None else signal.Signals(_GUARD.signum).name


def check() -> None:
    """Raise :class:`Aborted` when a stop signal has arrived (call before new work)."""
    if _GUARD.signum is not None:
        _GUARD.raised = True
        raise Aborted(_GUARD.signum)


def reraise_if_aborted(exc: BaseException) -> None:
    """In an ``except Exception`` block: turn the exception into the pending abort.

    Libraries may wrap an interrupt raised inside them (Beam, DuckDB); once a stop
    signal has arrived, no per-item error handler may carry on with the next item.
    """
    if isinstance(exc, Aborted):
        raise exc
    if _GUARD.signum is not None:
        _GUARD.raised = True
        raise Aborted(_GUARD.signum) from exc


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A commit: a stop signal arriving inside takes effect when the block has ended."""
    check()  # no new commit begins after a signal
    _GUARD.deferred += 1
    try:
        yield
    finally:
        _GUARD.deferred -= 1
        if not _GUARD.deferred and _GUARD.signum is not None and not _GUARD.raised:
            _GUARD.raised = True
            raise Aborted(_GUARD.signum)


def on_abort(callback: Callable[[], None]) -> None:
    """Run ``callback`` (e.g. push failure metrics) when the stage is stopped by a signal."""
    if _GUARD.active:
        _GUARD.on_abort.append(callback)


def _log_run_tmp_sweep() -> None:
    """Write the line of this process's temp-folder sweep next to the stage's own first
    sweep or lock (logging is set up by then, and a usage error stays one line)."""
    if _GUARD.run_tmp is not None:
        _GUARD.run_tmp.log_sweep()


def hold(holder: _Holder) -> None:
    """Have ``holder.release_all()`` remove what it holds (staging kept outside a folder,
    e.g. BigQuery staging tables) when the stage is stopped by a signal."""
    if _GUARD.active and holder not in _GUARD.areas:
        _GUARD.areas.append(holder)


def run_main(stage: str, main: Callable[[], int]) -> int:
    """Run a stage's ``main`` with SIGTERM/SIGINT handling; return its exit code.

    On a stop signal: staging of this process removed, abort callbacks run, one
    ``run_aborted`` log line, and the process ends at once (``os._exit``) with 143
    (SIGTERM) or 130 (SIGINT). Meant as the process entry point: a signal that arrives
    after ``main`` has returned is ignored (the process is exiting with main's code).
    """
    _GUARD.reset()
    for s in HANDLED:
        signal.signal(s, _GUARD.handler)
    _GUARD.active = True
    run_tmp = _GUARD.run_tmp = RunTemp(stage)
    try:
        run_tmp.enter()
        return main()
    except BaseException as exc:
        abort = _as_abort(exc)
        if abort is None:
            raise
        _GUARD.raised = True  # further signals are ignored while cleaning up
        # Library threads torn down by the stop (Beam's data plane: "Failed to read inputs
        # in the data plane.") log through the standard library; silence it so that the
        # stage's own lines (structlog, not affected) end with ``run_aborted``.
        logging.disable(logging.CRITICAL)
        code = _finish_abort(stage, abort, exc)
        run_tmp.exit()
        # Library threads interrupted mid-work (Beam's bundle workers) may never finish,
        # and the interpreter would wait for them forever: leave now, output flushed.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    finally:
        _GUARD.active = False
        # Ignored, not default: Python resets its own handlers to the default action
        # (death by signal) while exiting, but leaves ignored signals ignored.
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)
        run_tmp.exit()


def _as_abort(exc: BaseException) -> Aborted | None:
    if isinstance(exc, Aborted):
        return exc
    if _GUARD.signum is not None:  # wrapped by a library, or raised while unwinding
        return Aborted(_GUARD.signum)
    if isinstance(exc, KeyboardInterrupt):  # SIGINT before our handler was installed
        return Aborted(signal.SIGINT)
    return None


def _finish_abort(stage: str, abort: Aborted, exc: BaseException) -> int:
    log: Any = get_logger(stage)
    dirs = size = 0
    for area in list(_GUARD.areas):
        d, b = area.release_all()
        dirs, size = dirs + d, size + b
    for callback in _GUARD.on_abort:
        try:
            callback()
        except Exception as cb_exc:  # metrics trouble must not hide the abort
            log.warning("abort_callback_failed", error=f"{type(cb_exc).__name__}: {cb_exc}")
    where = "" if exc is abort else f" (during {type(exc).__name__})"
    log.error(
        "run_aborted",
        stage=stage,
        reason=f"{abort.signame}{where}",
        signal=abort.signame,
        exit_code=abort.exit_code,
        staging_removed=dirs,
        staging_removed_bytes=size,
    )
    return abort.exit_code


# -- input locations -------------------------------------------------------------------


class MissingLocation(SystemExit):
    """An input location that does not exist: exit 2 after one ``usage_error`` line.

    A ``SystemExit`` (like argparse's usage errors), so per-item ``except Exception``
    handlers and the stages' generic failure path (exit 1) let it through.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(2)


def location_exists(url: str) -> bool:
    """A local path that exists, or a ``gs://`` prefix whose bucket exists (the prefix
    itself may hold nothing yet: an empty location is a normal, "nothing new" run)."""
    if not storage.is_gcs(url):
        return Path(url[7:] if url.startswith("file://") else url).exists()
    bucket, _ = storage.GcsStorage.split(url)
    return bool(storage.GcsStorage().client.bucket(bucket).exists())


def require_input(stage: str, url: str, flag: str) -> None:
    """Raise :class:`MissingLocation` (one ``usage_error`` line naming ``url``, exit 2)
    when the input location ``url`` given as ``flag`` does not exist."""
    if location_exists(url):
        return
    what = "bucket of " if storage.is_gcs(url) else ""
    reason = f"{flag} {url}: the {what}input location does not exist (nothing was done)"
    logsetup.write_event(
        "usage_error", "ERROR", stage=stage, reason=reason, location=url, exit_code=2
    )
    raise MissingLocation(reason)


# -- warehouse file lock -------------------------------------------------------------------

LOCK_WAIT_S = 600.0  # longest wait for another process's commit (or queries run)
# Beside warehouse.duckdb: held shared to read and exclusive to write by the launcher, and
# exclusive by the queries service for as long as it has the database open.
WAREHOUSE_LOCK = ".warehouse.lock"


class WarehouseBusy(RuntimeError):
    """Another process held a warehouse lock longer than the bounded wait."""


@contextlib.contextmanager
def flocked(
    path: Path, exclusive: bool, what: str, stage: str, wait_s: float = LOCK_WAIT_S
) -> Iterator[bool]:
    """Hold ``flock`` on ``path`` (shared or exclusive), waiting at most ``wait_s`` (logged;
    a stop signal ends the wait). Yields False when a shared lock's file cannot be opened
    (a read-only folder without it: nothing can write there)."""
    log: Any = get_logger(stage)
    _log_run_tmp_sweep()
    fh: IO[bytes] | None = None
    if not exclusive:  # a reader writes nothing when the lock file is there
        with contextlib.suppress(OSError):
            fh = open(path, "rb")  # noqa: SIM115
    if fh is None:
        try:
            fh = open(path, "a+b")  # noqa: SIM115
        except OSError:
            if exclusive:
                raise
            yield False  # a read-only folder without a lock file: nobody writes here
            return
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with fh:
        started = time.monotonic()
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("warehouse_lock_wait", lock=str(path), purpose=what, max_wait_s=wait_s)
            while True:
                time.sleep(0.05)
                try:
                    fcntl.flock(fh, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    check()
                    if time.monotonic() - started > wait_s:
                        raise WarehouseBusy(
                            f"{path.parent} is busy: another process held {path.name} for "
                            f"more than {wait_s:g} s ({what})"
                        ) from None
            log.info(
                "warehouse_lock_acquired",
                lock=str(path),
                purpose=what,
                waited_s=round(time.monotonic() - started, 3),
            )
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- leases ------------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def lease_doc(stage: str) -> dict[str, Any]:
    """Who owns a lease: this process."""
    pid = os.getpid()
    return {
        "stage": stage,
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid": pid,
        "start_ticks": process_start_ticks(pid),
        "created": time.time(),
    }


def lease_state(doc: dict[str, Any] | None, max_age_s: float = float("inf")) -> str:
    """``alive``, ``dead``, ``unknown`` (owner on another host, younger than ``max_age_s``).

    A lease that cannot be read counts as dead: a lease is written in one atomic step.
    """
    if doc is None:
        return "dead"
    same_host = doc.get("host") == socket.gethostname() and doc.get("boot_id") == _boot_id()
    if same_host and isinstance(doc.get("pid"), int):
        ticks = process_start_ticks(doc["pid"])
        return "alive" if ticks is not None and ticks == doc.get("start_ticks") else "dead"
    age = time.time() - float(doc.get("created") or 0)
    return "dead" if age > max_age_s else "unknown"


def read_lease(url: str) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(storage.storage_for(url).read_bytes(url))
    except Exception:  # missing, unreadable or not JSON: no owner can be told
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class SweepReport:
    """What a start-up sweep removed and what it kept."""

    removed_dirs: int = 0
    removed_files: int = 0
    removed_bytes: int = 0
    kept_live: int = 0
    kept_unknown: int = 0

    def keeps(self, state: str) -> bool:
        """Count a folder whose lease is ``alive`` or ``unknown`` as kept; True if it is."""
        if state == "alive":
            self.kept_live += 1
            return True
        if state == "unknown":
            self.kept_unknown += 1
            return True
        return False

    def log(self, log: Any, where: str, how: str) -> None:
        log.info(
            "staging_swept",
            location=where,
            removed_dirs=self.removed_dirs,
            removed_files=self.removed_files,
            removed_bytes=self.removed_bytes,
            kept_live=self.kept_live,
            kept_unknown_owner=self.kept_unknown,
            owner_check=how,
        )


def _local_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = size = 0
    if path.is_file():
        return 1, path.stat().st_size
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                size += (Path(dirpath) / n).stat().st_size
                files += 1
    return files, size


class StagingArea:
    """Per-run staging folders ``<root>/<name>`` with their leases ``<root>/<name>.lease``.

    ``root`` is a local folder or a ``gs://`` prefix.
    """

    def __init__(
        self,
        root: str,
        stage: str,
        max_age_s: float = 24 * 3600.0,
        in_use: Callable[[Path], bool] | None = None,
    ) -> None:
        self.root = root.rstrip("/") if storage.is_gcs(root) else root
        self.stage = stage
        self.max_age_s = max_age_s
        self.in_use = in_use  # local folders: a live process other than the owner uses it
        self.held: list[str] = []
        self.log: Any = get_logger(stage)

    def path(self, name: str) -> str:
        return storage.join(self.root, name)

    def claim(self, name: str) -> str:
        """Write the lease for ``<root>/<name>`` (before anything is staged there)."""
        url = self.path(name) + LEASE_SUFFIX
        storage.storage_for(url).write_bytes(url, orjson.dumps(lease_doc(self.stage)))
        self.held.append(name)
        if _GUARD.active and self not in _GUARD.areas:
            _GUARD.areas.append(self)
        return self.path(name)

    def release(self, name: str) -> tuple[int, int]:
        """Remove ``<root>/<name>``, then its lease; return (dirs, bytes) removed."""
        removed = self._remove(self.path(name))
        lease = self.path(name) + LEASE_SUFFIX
        storage.storage_for(lease).delete(lease)
        if name in self.held:
            self.held.remove(name)
        return removed

    def release_all(self) -> tuple[int, int]:
        dirs = size = 0
        for name in list(self.held):
            d, b = self.release(name)
            dirs, size = dirs + d, size + b
        return dirs, size

    def _remove(self, url: str) -> tuple[int, int]:
        if storage.is_gcs(url):
            st = storage.storage_for(url)
            objs = list(st.list(url.rstrip("/") + "/"))
            if objs:
                st.delete(url)
            return (1 if objs else 0), sum(o.size for o in objs)
        p = Path(url)
        if not p.exists():
            return 0, 0
        _files, size = _local_size(p)
        shutil.rmtree(p, ignore_errors=True)
        return 1, size

    def sweep(self) -> SweepReport:
        """Remove staging of runs that are no longer alive; log one line."""
        _log_run_tmp_sweep()
        if storage.is_gcs(self.root):
            report = self._sweep_gcs()
            how = (
                "gs:// location: owners cannot be checked; leased folders whose lease is "
                f"older than {self.max_age_s:g}s"
            )
        else:
            report = self._sweep_local()
            how = (
                "pid and start time on this host; leases of other hosts when older than "
                f"{self.max_age_s:g}s"
            )
        report.log(self.log, self.root, how)
        return report

    def _sweep_local(self) -> SweepReport:
        report = SweepReport()
        root = Path(self.root)
        if not root.is_dir():
            return report
        entries = sorted(root.iterdir())
        leases = {
            p.name[: -len(LEASE_SUFFIX)]: p
            for p in entries
            if p.name.endswith(LEASE_SUFFIX) and not p.name.startswith(storage.TMP_PREFIX)
        }
        for p in entries:
            if p.name.endswith(LEASE_SUFFIX) or p.name.startswith(storage.TMP_PREFIX):
                continue
            if p.name in self.held:
                continue
            lease = leases.get(p.name)
            state = lease_state(read_lease(str(lease)), self.max_age_s) if lease else "dead"
            if report.keeps(state):
                continue
            if self.in_use is not None and self.in_use(p):
                report.kept_live += 1
                continue
            files, size = _local_size(p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            report.removed_dirs += 1
            report.removed_files += files
            report.removed_bytes += size
            if lease:
                lease.unlink(missing_ok=True)
        for name, lease in leases.items():  # leases whose folder is already gone
            if name in self.held or (root / name).exists():
                continue
            if lease_state(read_lease(str(lease)), self.max_age_s) == "dead":
                lease.unlink(missing_ok=True)
        return report

    def _sweep_gcs(self) -> SweepReport:
        report = SweepReport()
        st = storage.storage_for(self.root)
        groups: dict[str, list[storage.ObjectInfo]] = {}
        leases: dict[str, str] = {}
        prefix = self.root + "/"
        for obj in st.list(prefix):
            rel = obj.url[len(prefix) :]
            top, _, rest = rel.partition("/")
            if not rest and top.endswith(LEASE_SUFFIX):
                leases[top[: -len(LEASE_SUFFIX)]] = obj.url
            elif rest:
                groups.setdefault(top, []).append(obj)
        # Only leased folders are judged: a shared temp location also holds other
        # writers' files (e.g. Beam's own load files), which are not ours to remove.
        for name, lease in sorted(leases.items()):
            if name in self.held:
                continue
            if report.keeps(lease_state(read_lease(lease), self.max_age_s)):
                continue
            objs = groups.get(name, [])
            if objs:
                st.delete(self.path(name))
                report.removed_dirs += 1
                report.removed_files += len(objs)
                report.removed_bytes += sum(o.size for o in objs)
            st.delete(lease)
        return report


# -- per-process temp folders ----------------------------------------------------------

RUN_TMP_ROOT = "cp-run-tmp"  # under the system temp folder: one leased folder per process


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (readable ``/proc/<pid>/environ``) started with ``name=value``."""
    needle = f"{name}={value}".encode() + b"\0"
    found = []
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                env = Path(entry.path, "environ").read_bytes()
            except OSError:  # gone, or another user's process (not one of ours)
                continue
            if env.startswith(needle) or b"\0" + needle in env:
                found.append(int(entry.name))
    return found


def _sweep_half_written_leases(root: Path, min_age_s: float = 60.0) -> None:
    """Remove ``.tmp-<stage>-<pid>-<ticks>.lease`` files of processes that died between
    writing and renaming their lease (older than ``min_age_s``: a write takes far less,
    so a writer on another host sharing this folder is never raced)."""
    now = time.time()
    for part in root.glob(f"{storage.TMP_PREFIX}*{LEASE_SUFFIX}"):
        name = part.name[len(storage.TMP_PREFIX) : -len(LEASE_SUFFIX)]
        try:
            pid, ticks = (int(x) for x in name.rsplit("-", 2)[1:])
            old = now - part.stat().st_mtime > min_age_s
        except (ValueError, OSError):
            continue
        owner = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid}
        if old and lease_state({**owner, "start_ticks": ticks}) == "dead":
            part.unlink(missing_ok=True)


class RunTemp:
    """This process's own temp folder under ``<TMPDIR>/cp-run-tmp/`` (see module doc).

    :meth:`enter` sweeps dead processes' folders, claims this one and points ``TMPDIR``
    and :data:`tempfile.tempdir` at it; :meth:`exit` removes it and restores both. A temp
    location that cannot hold the folder is left as it is (nothing to sweep there).
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.path: str | None = None
        self.area: StagingArea | None = None
        self.report = SweepReport()
        self.users: dict[str, list[int]] = {}  # dead runs' folders kept: live users' pids
        self._unlogged = False
        self._saved: tuple[str | None, str | None] = (None, None)

    def _in_use(self, folder: Path) -> bool:
        pids = processes_with_env("TMPDIR", str(folder))
        if pids:
            self.users[folder.name] = pids
        return bool(pids)

    def enter(self) -> str | None:
        base = tempfile.gettempdir()
        root = Path(base, RUN_TMP_ROOT)
        area = StagingArea(str(root), self.stage, in_use=self._in_use)
        name = f"{self.stage}-{os.getpid()}-{process_start_ticks(os.getpid())}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            _sweep_half_written_leases(root)
            self.report = area._sweep_local()  # logged below, and only when it found some
            # The lease first (written whole: a sweep never reads half of it), then the
            # folder. Not through storage's .tmp-* writer, which the sweep never judges.
            part = root / f"{storage.TMP_PREFIX}{name}{LEASE_SUFFIX}"
            part.write_bytes(orjson.dumps(lease_doc(self.stage)))
            os.replace(part, root / f"{name}{LEASE_SUFFIX}")
            area.held.append(name)
            path = str(root / name)
            os.mkdir(path)
        except OSError:
            return None
        self.area, self.path = area, path
        self._saved = (os.environ.get("TMPDIR"), tempfile.tempdir)
        os.environ["TMPDIR"] = path
        tempfile.tempdir = path
        r = self.report
        self._unlogged = bool(r.removed_dirs or r.kept_live or r.kept_unknown)
        return path

    def log_sweep(self) -> None:
        """One ``run_tmp_swept`` line, when the start-up sweep found anything (once; the
        stage's main sets up logging after :meth:`enter`, see :func:`_log_run_tmp_sweep`)."""
        if not self._unlogged or self.path is None:
            return
        self._unlogged = False
        r = self.report
        log: Any = get_logger(self.stage)
        log.info(
            "run_tmp_swept",
            location=str(Path(self.path).parent),
            removed_dirs=r.removed_dirs,
            removed_files=r.removed_files,
            removed_bytes=r.removed_bytes,
            kept_live=r.kept_live,
            kept_unknown_owner=r.kept_unknown,
            kept_in_use_by=self.users,
            owner_check="pid and start time of the folder's process; kept while a live "
            "process has it as TMPDIR",
        )

    def exit(self) -> None:
        if self.area is None or self.path is None:
            return
        env, tempdir = self._saved
        if env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = env
        tempfile.tempdir = tempdir
        self.area.release(os.path.basename(self.path))
        self.area = self.path = None


class TempLease:
    """A run lease for stages that write ``.tmp-*`` files into a destination folder.

    Such files carry no run name, so ownership is per folder: a run writes
    ``<dest>/.lease-<pid>-<ticks>.lease`` before writing, and a starting run removes the
    ``.tmp-*`` files that existed before its own lease when no other run's lease is alive.
    With another run alive (or of unknown state), only temps older than ``max_age_s``
    go, as before. ``gs://`` destinations have no temporary objects (uploads appear
    whole) and get no lease.
    """

    def __init__(self, dest: str, stage: str, max_age_s: float) -> None:
        self.dest = dest
        self.stage = stage
        self.max_age_s = max_age_s
        self.log: Any = get_logger(stage)
        self.lease: Path | None = None
        self.claimed_at = 0.0
        self._aborted_removed = (0, 0)  # (files, bytes) of this run's temps removed on abort

    def claim_and_sweep(self) -> SweepReport | None:
        """Write this run's lease, sweep, log one line; None for ``gs://`` destinations."""
        _log_run_tmp_sweep()
        if storage.is_gcs(self.dest):
            return None
        root = Path(self.dest)
        root.mkdir(parents=True, exist_ok=True)
        doc = lease_doc(self.stage)
        self.lease = root / f"{TEMP_LEASE_PREFIX}{doc['pid']}-{doc['start_ticks']}{LEASE_SUFFIX}"
        self.claimed_at = claimed_at = time.time()
        try:
            self.lease.write_bytes(orjson.dumps(doc))
        except BaseException:  # e.g. a full disk: no empty lease file stays behind
            self.lease.unlink(missing_ok=True)
            self.lease = None
            raise
        if _GUARD.active and self not in _GUARD.areas:
            _GUARD.areas.append(self)
        report = self._others(SweepReport())
        alone = not (report.kept_live or report.kept_unknown)
        cutoff = claimed_at if alone else claimed_at - self.max_age_s
        self._remove_temps(report, lambda mtime: mtime < cutoff)
        how = (
            "no other live run: every .tmp-* file older than this run"
            if alone
            else f"another run holds a lease: .tmp-* files older than {self.max_age_s:g}s"
        )
        report.log(self.log, self.dest, how)
        return report

    def _others(self, report: SweepReport) -> SweepReport:
        """Count other runs' leases (removing dead ones)."""
        for other in sorted(Path(self.dest).glob(f"{TEMP_LEASE_PREFIX}*{LEASE_SUFFIX}")):
            if other == self.lease:
                continue
            state = lease_state(read_lease(str(other)), self.max_age_s)
            if state == "dead":
                other.unlink(missing_ok=True)
            elif state == "alive":
                report.kept_live += 1
            else:
                report.kept_unknown += 1
        return report

    def _remove_temps(self, report: SweepReport, doomed: Callable[[float], bool]) -> None:
        for dirpath, _dirs, names in os.walk(self.dest):
            for n in names:
                if not n.startswith(storage.TMP_PREFIX):
                    continue
                p = Path(dirpath) / n
                try:
                    st = p.stat()
                    if doomed(st.st_mtime):
                        p.unlink()
                        report.removed_files += 1
                        report.removed_bytes += st.st_size
                except FileNotFoundError:
                    continue

    def release(self) -> None:
        """Drop this run's lease. Its temps are removed by their writers; after a stop
        signal also here (the stage's ``finally`` runs this before :func:`run_main`'s
        cleanup, and a signal can land between creating a temp file and the writer's
        cleanup, e.g. inside ``mkstemp``'s caller or the writer's own abort)."""
        if self.lease is None:
            return
        if _GUARD.signum is not None:
            self._aborted_removed = self._remove_own_temps()
        self.lease.unlink(missing_ok=True)
        self.lease = None

    def release_all(self) -> tuple[int, int]:
        """On abort: also remove temps this run may have left, unless another live run
        writes here too; then the next start's sweep takes them by age. Returns (files,
        bytes) removed, also when :meth:`release` already ran during the unwind."""
        if self.lease is not None:
            self._aborted_removed = self._remove_own_temps()
            self.lease.unlink(missing_ok=True)
            self.lease = None
        removed, self._aborted_removed = self._aborted_removed, (0, 0)
        return removed

    def _remove_own_temps(self) -> tuple[int, int]:
        report = self._others(SweepReport())
        if not (report.kept_live or report.kept_unknown):
            since = self.claimed_at - 1.0  # mtime granularity
            self._remove_temps(report, lambda mtime: mtime >= since)
        return report.removed_files, report.removed_bytes
