"""Progress on a terminal, plain JSON lines otherwise (``services/common/progress.py``).

The stages run as real subprocesses on the generated sample scans, their stderr on a
pseudo-terminal (``pty``) or on a pipe. On the terminal the progress line is drawn
(files done/total, lines, lines/s, ETA) and every other line is still one JSON object;
the launcher's frames move while Beam works, not only at the end. On a pipe, with
``--quiet`` or with ``CP_PROGRESS=0`` nothing but JSON lines is written.
"""

from __future__ import annotations

import doctest
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common import progress

ROOT = Path(__file__).resolve().parents[1]
FRAME = re.compile(rb"\r\x1b\[K")
FILES = re.compile(r"(\d+)/(\d+) (files|archives|SQL files)")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without CP_* settings (they would stand in for flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_") and k != "LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class Output:
    code: int
    frames: list[str]  # progress lines as drawn, in order
    lines: list[str]  # everything else: the log lines
    raw: bytes


def split_output(raw: bytes) -> tuple[list[str], list[str]]:
    """Progress frames and the other lines of a terminal's byte stream."""
    frames: list[str] = []
    lines: list[str] = []
    for i, piece in enumerate(FRAME.split(raw.replace(b"\r\n", b"\n"))):
        # After a clear comes a frame (up to the next clear or the final newline) or,
        # when a log line cleared the frame away, that log line.
        head, _, rest = piece.partition(b"\n")
        body = piece
        if i > 0 and head.strip() and not head.startswith(b"{"):
            frames.append(head.decode())
            body = rest
        lines += [ln.decode() for ln in body.split(b"\n") if ln.strip()]
    return frames, lines


def run_on(args: list[str], tty: bool, **env: str) -> Output:
    """Run ``python -m args`` with stderr on a pseudo-terminal (200 columns) or a pipe."""
    cmd = [sys.executable, "-m", *args]
    if not tty:
        proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(**env), capture_output=True, timeout=300)
        return Output(proc.returncode, [], proc.stderr.decode().splitlines(), proc.stderr)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=300)
    raw = b"".join(chunks)
    frames, lines = split_output(raw)
    return Output(code, frames, lines, raw)


def assert_json_lines(lines: list[str]) -> None:
    for line in lines:
        assert "\x1b" not in line, line
        obj = json.loads(line)
        assert isinstance(obj, dict) and "severity" in obj, line


def files_of(frame: str, name: str) -> tuple[int, int]:
    part = next(p for p in frame.split(" | ") if p.startswith(name + " "))
    m = FILES.search(part)
    assert m, part
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("progress")
    subprocess.run(
        [sys.executable, "-m", "sampledata", "--out", str(out / "sample"),
         "--size", "60", "--no-caida"],
        cwd=ROOT, env=clean_env(), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def stages(sample: Path) -> dict[str, Output]:
    """mirror → untar → launcher → queries, each with stderr on a terminal."""
    w = sample / "warehouse"
    runs = {
        "mirror": ["services.mirror", "archives", "--source", str(sample / "sample" / "archives"),
                   "--dest", str(sample / "raw")],
        "untar": ["services.untar", "--raw", str(sample / "raw"), "--target",
                  str(sample / "bucket")],
        "launcher": ["services.beam_launcher", "--input", str(sample / "bucket" / "scans"),
                     "--warehouse", str(w)],
        "queries": ["services.queries", "--warehouse", str(w)],
    }  # fmt: skip
    out = {}
    for name, args in runs.items():
        out[name] = run_on(args, tty=True)
        assert out[name].code == 0, out[name].raw[-3000:]
    return out


def archives(sample: Path) -> int:
    return len(list((sample / "sample" / "archives").glob("*.tar.gz")))


@pytest.mark.parametrize("stage", ["mirror", "untar"])
def test_archive_stages_draw_files_and_eta(
    stages: dict[str, Output], sample: Path, stage: str
) -> None:
    out = stages[stage]
    assert out.frames, out.raw[-2000:]
    n = archives(sample)
    assert files_of(out.frames[-1], stage) == (n, n)
    assert "done in" in out.frames[-1]
    if stage == "untar":
        assert re.search(r"[\d,]+ files written · [\d,]+ files written/s", out.frames[-1])
    assert_json_lines(out.lines)
    assert any(json.loads(ln)["message"] == "run_done" for ln in out.lines)


def test_launcher_progress_moves_while_beam_works(stages: dict[str, Output]) -> None:
    out = stages["launcher"]
    assert_json_lines(out.lines)
    frames = out.frames
    assert frames, out.raw[-2000:]
    last = frames[-1]
    for family in ("hyperquack", "satellite"):
        done, total = files_of(last, f"launcher {family}")
        assert done == total > 0, last
    assert re.search(r"launcher hyperquack .*?[\d,]+ lines · [\d,]+ lines/s", last), last
    # Lines counted by the DoFns show up before the Satellite pipeline has finished: a
    # frame with Satellite lines precedes the family's beam_counters line.
    order = FRAME.split(out.raw)
    sat_counters = next(
        i
        for i, piece in enumerate(order)
        if any(b'"beam_counters"' in ln and b"satellite" in ln for ln in piece.splitlines())
    )
    early = [p for p in order[:sat_counters] if re.search(rb"launcher satellite \d+/\d+ files", p)]
    assert any(re.search(rb"launcher satellite [^|]*?[1-9][\d,]* lines", p) for p in early), (
        "no Satellite line count before the pipeline ended"
    )
    # Frames move: the counts only grow and more than one distinct frame is drawn.
    counts = [files_of(f, "launcher hyperquack")[0] for f in frames if "hyperquack" in f]
    assert counts == sorted(counts) and len(set(frames)) > 1


def test_queries_counts_sql_files_and_rows(stages: dict[str, Output]) -> None:
    out = stages["queries"]
    done, total = files_of(out.frames[-1], "queries")
    assert done == total > 0
    assert re.search(r"[1-9][\d,]* rows written", out.frames[-1])
    assert_json_lines(out.lines)


@pytest.mark.parametrize(
    ("tty", "flags", "env"),
    [(False, [], {}), (True, ["--quiet"], {}), (True, [], {"CP_PROGRESS": "0"})],
    ids=["pipe", "quiet", "CP_PROGRESS=0"],
)
def test_no_progress_without_terminal_or_when_asked(
    sample: Path, tmp_path: Path, tty: bool, flags: list[str], env: dict[str, str]
) -> None:
    args = ["services.mirror", "archives", "--source", str(sample / "sample" / "archives"),
            "--dest", str(tmp_path / "raw"), *flags]  # fmt: skip
    out = run_on(args, tty=tty, **env)
    assert out.code == 0
    assert b"\x1b[K" not in out.raw and out.frames == []
    assert_json_lines(out.lines)
    copied = [ln for ln in out.lines if json.loads(ln)["message"] == "archive_copied"]
    assert len(copied) == archives(sample)


def test_counters_are_exact_under_threads() -> None:
    t = progress.Task("threads")
    t.add_total(files=8 * 1000)

    def work() -> None:
        for _ in range(1000):
            t.advance(files=1, lines=3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = t.snapshot()
    assert (s.files_done, s.lines, s.done) == (8000, 24000, True)


def test_eta_and_rendering() -> None:
    s = progress.Snapshot("x", "files", 1, 4, 100, 0, 0, 10.0)
    assert progress.eta(s) == pytest.approx(30.0)  # by count: 1 of 4 in 10 s
    s = progress.Snapshot("x", "files", 1, 4, 100, 30, 40, 10.0)
    assert progress.eta(s) == pytest.approx(10 / 3)  # by size: 30 of 40 bytes
    assert "ETA ?" in progress.render(progress.Snapshot("x", "files", 0, 4, 0, 0, 0, 1.0), 0)
    failures, _ = doctest.testmod(progress)
    assert failures == 0


def test_log_lines_clear_the_progress_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line written while a frame is shown starts at column 0 (no frame text before it)."""

    class Term:
        def __init__(self) -> None:
            self.data = ""

        def write(self, s: str) -> int:
            self.data += s
            return len(s)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    term = Term()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "_TASKS", {})
    progress.task("stage").add_total(files=2)
    with progress.shown(interval=60) as display:
        assert display is not None
        progress.task("stage").advance(files=1, lines=5)
        display.draw()
        sys.stderr.write('{"severity": "INFO"}\n')
    assert sys.stderr is term
    assert term.data.startswith("\r\x1b[Kstage 1/2 files")
    assert '\r\x1b[K{"severity": "INFO"}\n' in term.data
    assert term.data.endswith("done in 0s\n")
