"""Progress of long work on a terminal: files and lines done, lines/s and ETA per task.

Stage code always keeps the counters (cheap, thread-safe)::

    t = progress.task("mirror", unit="archives")
    t.add_total(files=len(archives), size=sum(sizes))
    ... t.advance(files=1, size=archive_size)

The launcher's Beam DoFns update theirs from inside the pipeline: the local runner runs
them in this process, so the counters move while Beam works (a distributed runner's
workers count in their own processes, which draw nothing).

:func:`shown` draws them as one line at the bottom of the terminal, redrawn every
``interval`` seconds and once more at the end, only when stderr is a terminal and
neither ``--quiet`` nor ``CP_PROGRESS=0`` says otherwise. While it is drawn, stderr is
wrapped so that each JSON log line first clears the progress line: every log line stays
one whole JSON object on its own line. Without a terminal (Kubernetes, CI, pipes)
nothing is drawn and stderr carries only the JSON log lines.

Example:
    >>> s = Snapshot("untar", "archives", files_done=1, files_total=4, lines=0,
    ...              size_done=10, size_total=40, elapsed=2.0)
    >>> render(s, lines_per_s=0.0)
    'untar 1/4 archives · 2s · ETA 6s'
    >>> render(Snapshot("launcher", "files", 3, 3, 12000, 0, 0, 4.0, done=True), 3000.0)
    'launcher 3/3 files · 12,000 lines · 3,000 lines/s · done in 4s'
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

ENV = "CP_PROGRESS"
CLEAR = "\r\x1b[K"  # carriage return + erase to the end of the line


@dataclass(frozen=True)
class Snapshot:
    """The counters of one task at one moment."""

    name: str
    unit: str  # what "files" are: files, archives, SQL files
    files_done: int
    files_total: int
    lines: int
    size_done: int  # progress measure for the ETA (bytes of finished files), 0 if unknown
    size_total: int
    elapsed: float
    line_unit: str = "lines"
    done: bool = False


class Task:
    """Thread-safe counters of one stage (or one part of it)."""

    def __init__(self, name: str, unit: str = "files", line_unit: str = "lines") -> None:
        self.name, self.unit, self.line_unit = name, unit, line_unit
        self._lock = threading.Lock()
        self._files_done = self._files_total = self._lines = 0
        self._size_done = self._size_total = 0
        self._started = self._last = time.monotonic()
        self._finished: float | None = None

    def add_total(self, files: int = 0, size: int = 0) -> None:
        """More work is known: ``files`` more files of ``size`` bytes in all."""
        with self._lock:
            self._files_total += files
            self._size_total += size

    def advance(self, files: int = 0, lines: int = 0, size: int = 0) -> None:
        """Work done: ``files`` finished (``size`` their bytes), ``lines`` processed."""
        with self._lock:
            self._files_done += files
            self._lines += lines
            self._size_done += size
            self._last = time.monotonic()

    def finish(self) -> None:
        """The task is over (its last frame says ``done``)."""
        with self._lock:
            if self._finished is None:
                self._finished = time.monotonic()

    def snapshot(self) -> Snapshot:
        """The counters now; every file done (or :meth:`finish`) makes the task done."""
        with self._lock:
            complete = 0 < self._files_total <= self._files_done
            if complete:
                end = self._last
            else:
                end = self._finished if self._finished is not None else time.monotonic()
            return Snapshot(
                self.name,
                self.unit,
                self._files_done,
                self._files_total,
                self._lines,
                self._size_done,
                self._size_total,
                end - self._started,
                self.line_unit,
                complete or self._finished is not None,
            )


_TASKS: dict[str, Task] = {}
_TASKS_LOCK = threading.Lock()


def task(name: str, unit: str = "files", line_unit: str = "lines") -> Task:
    """The task called ``name`` of this process (created on first use)."""
    with _TASKS_LOCK:
        found = _TASKS.get(name)
        if found is None:
            found = _TASKS[name] = Task(name, unit, line_unit)
        return found


def tasks() -> list[Task]:
    """Every task of this process, in creation order."""
    with _TASKS_LOCK:
        return list(_TASKS.values())


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def eta(s: Snapshot) -> float | None:
    """Seconds left, from the share of the work done so far (by size when known)."""
    if s.done or s.files_total <= 0:
        return None
    if s.size_total > 0 and s.size_done > 0:
        share = s.size_done / s.size_total
    elif s.files_done > 0:
        share = s.files_done / s.files_total
    else:
        return None
    return s.elapsed * (1 - share) / share if share < 1 else 0.0


def render(s: Snapshot, lines_per_s: float) -> str:
    """One task as text: ``name done/total unit · lines · lines/s · elapsed · ETA``."""
    parts = [f"{s.name} {s.files_done}/{s.files_total} {s.unit}"]
    if s.lines:
        parts.append(f"{s.lines:,} {s.line_unit}")
        parts.append(f"{lines_per_s:,.0f} {s.line_unit}/s")
    if s.done:
        parts.append(f"done in {_duration(s.elapsed)}")
    else:
        parts.append(_duration(s.elapsed))
        left = eta(s)
        parts.append(f"ETA {_duration(left)}" if left is not None else "ETA ?")
    return " · ".join(parts)


def enabled(quiet: bool, stream: IO[str] | None = None) -> bool:
    """Draw progress? Only on a terminal, and not with ``--quiet`` or ``CP_PROGRESS=0``."""
    if quiet or os.environ.get(ENV, "").strip() == "0":
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Rates:
    """Lines per second over the last few seconds, per task."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def rate(self, s: Snapshot) -> float:
        if s.done:
            return s.lines / s.elapsed if s.elapsed > 0 else 0.0
        samples = self.samples.setdefault(s.name, deque())
        samples.append((s.elapsed, s.lines))
        while len(samples) > 2 and samples[-1][0] - samples[0][0] > self.window:
            samples.popleft()
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        if t1 - t0 > 0:
            return (n1 - n0) / (t1 - t0)
        return s.lines / s.elapsed if s.elapsed > 0 else 0.0


class Display:
    """Redraws the progress line on ``stream`` from a daemon thread."""

    def __init__(self, stream: IO[str], interval: float = 0.5) -> None:
        self.stream = stream
        self.interval = interval
        self.lock = threading.RLock()
        self.drawn = False
        self._rates = _Rates()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._saved: Any = None

    def frame(self) -> str:
        """The current line: every task that has work, joined with `` | ``."""
        shown = [t.snapshot() for t in tasks()]
        shown = [s for s in shown if s.files_total or s.files_done or s.lines]
        text = " | ".join(render(s, self._rates.rate(s)) for s in shown)
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            width = 0
        width = width if width > 0 else 160  # a terminal that states no size
        return text if len(text) < width else text[: max(width - 2, 10)] + "…"

    def draw(self) -> None:
        with self.lock:
            text = self.frame()
            if not text:
                return
            self.stream.write(CLEAR + text)
            self.stream.flush()
            self.drawn = True

    def clear(self) -> None:
        """Erase the progress line (before anything else is written)."""
        with self.lock:
            if self.drawn:
                self.stream.write(CLEAR)
                self.drawn = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a closed terminal ends nothing else
                self.draw()

    def start(self) -> None:
        self._saved = sys.stderr
        sys.stderr = _ClearingStream(self)
        self._thread.start()

    def stop(self) -> None:
        """Last frame (tasks marked done), left on its own line; stderr restored."""
        self._stop.set()
        self._thread.join(timeout=5)
        for t in tasks():
            t.finish()
        with contextlib.suppress(Exception):
            self.draw()
            with self.lock:
                if self.drawn:
                    self.stream.write("\n")
                    self.stream.flush()
                    self.drawn = False
        if self._saved is not None:
            sys.stderr = self._saved


class _ClearingStream:
    """stderr while progress is drawn: clears the progress line before each write."""

    def __init__(self, display: Display) -> None:
        self._display = display

    def write(self, text: str) -> int:
        with self._display.lock:
            self._display.clear()
            return self._display.stream.write(text)

    def flush(self) -> None:
        self._display.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._display.stream, name)


@contextlib.contextmanager
def shown(quiet: bool = False, interval: float = 0.5) -> Iterator[Display | None]:
    """Draw progress on stderr for the duration of the block when :func:`enabled`."""
    if not enabled(quiet):
        yield None
        return
    display = Display(sys.stderr, interval)
    display.start()
    try:
        yield display
    finally:
        display.stop()
