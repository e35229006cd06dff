"""Worker processes of the local runner (``--workers N``): Beam's SDK worker, kept tidy.

The launcher's FnApiRunner starts ``python -m services.beam_launcher.worker`` once per
worker (:func:`command`). That process (the *guard*) has Beam's SDK worker
(``apache_beam.runners.worker.sdk_worker_main``, :func:`sdk_main`) run in a child:
forked by the launcher's zygote (:mod:`services.beam_launcher.zygote`, no imports to
repeat), or started afresh when there is none. The guard:

* turns every line the child writes on stdout or stderr into one JSON log line on
  stderr (lines that already are JSON objects pass unchanged), so the launcher's stderr
  stays one JSON object per line and its stdout holds only the run summary; the child's
  log records reach the launcher through Beam's logging service as usual;
* ignores SIGINT, as the child does: Ctrl-C on a terminal reaches the whole process
  group, and the launcher stops its workers itself (:func:`stop_workers`);
* ends the child and itself when the launcher is gone (even killed with SIGKILL), so no
  orphan keeps writing into a staging folder the next run sweeps.

Example:
    >>> command("/usr/bin/python3", 42).endswith("-m services.beam_launcher.worker")
    True
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from services.beam_launcher.zygote import ForkedWorker

LAUNCHER_PID_ENV = "CP_LAUNCHER_PID"
LAUNCHER_TICKS_ENV = "CP_LAUNCHER_START_TICKS"
SDK_FLAG = "--sdk"
POLL_S = 0.5
# Harmless warnings every local SDK worker logs at start (no staged main session).
QUIET_WORKER_WARNINGS = ("No semi_persistent_directory found", "No session file found")


def command(python: str, launcher_pid: int) -> str:
    """The worker command line for Beam's subprocess environment (run by ``sh -c``).

    The launcher's pid and start time travel in the environment Beam gives the worker.
    """
    os.environ[LAUNCHER_PID_ENV] = str(launcher_pid)
    os.environ[LAUNCHER_TICKS_ENV] = str(_start_ticks(launcher_pid) or "")
    return f"exec {shlex.quote(python)} -m services.beam_launcher.worker"


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (None when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        return int(raw[raw.rfind(b")") + 2 :].split()[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, ticks: int | None) -> bool:
    """Is ``pid`` still the process that started at ``ticks``?"""
    now = _start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children first), from ``/proc/<pid>/task/*/children``."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                kids = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.append(kid)
                    queue.append(kid)
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def stop_workers(pids: Iterable[int] | None = None, timeout_s: float = 10.0) -> int:
    """SIGKILL this process's worker processes (all its descendants unless ``pids``) and
    wait until they are dead; returns how many were signalled."""
    targets = list(descendants(os.getpid()) if pids is None else pids)
    for pid in targets:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(_gone(p) for p in targets):
        time.sleep(0.02)
    return len(targets)


def _json_line(text: str, stream: str) -> str:
    """A child's output line as one JSON log line (JSON objects pass unchanged)."""
    text = text.rstrip("\r\n")
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text
        except ValueError:
            pass
    record = {
        "severity": "WARNING",
        "message": "worker_output",
        "stream": stream,
        "text": text,
        "pid": os.getpid(),
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "logging.googleapis.com/labels": {"stage": "beam_launcher"},
        "stage": "beam_launcher",
    }
    return json.dumps(record)


_WRITE_LOCK = threading.Lock()


def _pump(src: IO[bytes], stream: str) -> None:
    for raw in iter(src.readline, b""):
        line = _json_line(raw.decode("utf-8", errors="replace"), stream)
        with _WRITE_LOCK:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def guard() -> int:
    """Run the SDK worker as a child; see the module docstring. Returns its exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    launcher = int(os.environ.get(LAUNCHER_PID_ENV) or 0)
    ticks_text = os.environ.get(LAUNCHER_TICKS_ENV) or ""
    ticks = int(ticks_text) if ticks_text.isdigit() else None
    from services.beam_launcher.zygote import forked_worker

    child: subprocess.Popen[bytes] | ForkedWorker | None = forked_worker()
    if child is None:
        child = subprocess.Popen(
            [sys.executable, "-m", "services.beam_launcher.worker", SDK_FLAG],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def stop(_signum: int, _frame: object) -> None:
        child.kill()

    signal.signal(signal.SIGTERM, stop)
    pumps = [
        threading.Thread(target=_pump, args=(child.stdout, "stdout"), daemon=True),
        threading.Thread(target=_pump, args=(child.stderr, "stderr"), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    while child.poll() is None:
        if launcher and not _alive(launcher, ticks):
            child.kill()
            break
        with contextlib.suppress(subprocess.TimeoutExpired, TimeoutError):
            child.wait(POLL_S)
    code = child.wait()
    for pump in pumps:
        pump.join(5)
    return code


class _QuietStartup:
    """Logging filter: drops :data:`QUIET_WORKER_WARNINGS` (said by every local worker)."""

    def filter(self, record: object) -> bool:
        msg = str(getattr(record, "msg", ""))
        return not msg.startswith(QUIET_WORKER_WARNINGS)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once its work is done: flush the log handlers and
    standard streams, then ``os._exit``, skipping the interpreter's teardown.

    Tearing down a process that imported Beam, gRPC, pyarrow and DuckDB took 0.45-0.7 s
    of CPU after the last atexit handler (a 100k-line run, launcher README), paid by the
    launcher and by each worker process, whose exit the runner waits for. Nothing is
    left to do by then: the run's files, ledger and summary are written and closed.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


#: The cyclic GC's first threshold in an SDK worker process (Python's default: 700).
GC_GEN0_THRESHOLD = 50_000
_sdk_process = False


def sdk_main() -> None:
    """Beam's SDK harness, configured from the environment Beam gives the worker;
    returns when the runner closed the control stream (no work is left).

    The cyclic GC of the process looks at new containers every
    :data:`GC_GEN0_THRESHOLD` allocations instead of 700: a batch's rows die with the
    batch, and most of them are freed before a collection would walk them. Measured on
    100k lines of the 1M bench scan parsed and enriched as a worker does
    (`gc.callbacks`): 0.044–0.048 s of collections, 0.009–0.012 s with 50,000, after
    :func:`freeze_after_setup`; 0.121 s with neither.
    """
    import logging

    from apache_beam.runners.worker import sdk_worker_main

    tune_gc_for_sdk_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet = logging.getLogger(sdk_worker_main.__name__)
    if not any(isinstance(f, _QuietStartup) for f in quiet.filters):
        quiet.addFilter(_QuietStartup())
    sdk_worker_main.main(sys.argv[:1])


def tune_gc_for_sdk_process() -> None:
    """Mark this process as an SDK worker and raise the GC's first threshold to
    :data:`GC_GEN0_THRESHOLD` (see :func:`sdk_main`)."""
    global _sdk_process
    _sdk_process = True
    first, *rest = gc.get_threshold()
    gc.set_threshold(max(first, GC_GEN0_THRESHOLD), *rest)


def freeze_after_setup() -> None:
    """In an SDK worker process (:func:`sdk_main`): what exists after a DoFn's setup
    (resources, IP-metadata tables, Beam's harness) moves to the GC's permanent
    generation, so no collection walks it again. Elsewhere (a run inside the launcher,
    the tests) nothing happens.

    >>> freeze_after_setup()  # not an SDK worker process: no effect
    >>> gc.get_freeze_count() >= 0
    True
    """
    if _sdk_process:
        gc.freeze()


def sdk() -> None:
    """The SDK worker as a fresh process (child of :func:`guard` when no zygote forks
    it); ends with :func:`exit_now` once :func:`sdk_main` returns."""
    sdk_main()
    exit_now(0)


if __name__ == "__main__":
    if SDK_FLAG in sys.argv[1:]:
        sdk()
    else:
        exit_now(guard())
