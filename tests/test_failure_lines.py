"""A failed stage's last words are JSON too: ``run_failed`` (exit 1) and ``usage_error`` (exit 2).

Each stage runs as a real subprocess (``python -m services.<stage>``) with a bad input
path, bad input data or a bad flag. Every stderr line must be a Cloud Logging JSON object
with a known ``severity``; the run ends with exactly one ``run_failed`` or ``usage_error``
line carrying the stage label, the exit code and a one-line ``reason``; the exit code is
what the stage documents. ``--help`` stays plain text on stdout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from services.common.logsetup import LABELS_KEY, SEVERITIES

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("beam_launcher", "mirror", "untar", "queries", "routeviews")
SCAN = "CP_Quack-echo-2021-05-30-01-01-01"


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without CP_* settings (they would stand in for flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_") and k != "LOG_LEVEL"}
    env.update(extra)
    return env


def run_stage(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(**env),
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed; each must be an object with the Cloud Logging fields."""
    lines = stderr.splitlines()
    assert lines, "a failed run says why on stderr"
    objs = []
    for line in lines:
        obj = json.loads(line)  # fails the test on any plain-text line
        assert isinstance(obj, dict), line
        assert obj["severity"] in SEVERITIES, line
        assert isinstance(obj["message"], str) and obj["message"], line
        assert dt.datetime.fromisoformat(obj["timestamp"]).tzinfo is not None, line
        objs.append(obj)
    return objs


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Each case: stage, how to build its arguments in a temporary folder, expected exit code,
# the last line's message and a fragment of its reason.
Case = tuple[str, Callable[[Path], list[str]], int, str, str]


def _launcher_bad_file(t: Path) -> list[str]:
    scan = t / "in" / SCAN
    scan.mkdir(parents=True)
    (scan / "results.json").write_text("not json\n{also not\n")
    return ["services.beam_launcher", "--input", str(t / "in"), "--warehouse", str(t / "wh")]


def _untar_corrupt(t: Path) -> list[str]:
    (t / "raw").mkdir()
    (t / "raw" / f"{SCAN}.tar.gz").write_bytes(b"not a gzip stream")
    return ["services.untar", "--raw", str(t / "raw"), "--target", str(t / "out")]


def _mirror_dest_under_file(t: Path) -> list[str]:
    (t / "src").mkdir()
    (t / "src" / f"{SCAN}.tar.gz").write_bytes(b"x" * 64)
    (t / "afile").write_text("a file, not a folder")
    return ["services.mirror", "archives", "--source", str(t / "src"), "--dest", f"{t}/afile/raw"]


def _queries_empty_warehouse(t: Path) -> list[str]:
    """A warehouse database the launcher never filled."""
    duckdb.connect(str(t / "warehouse.duckdb")).close()
    return ["services.queries", "--warehouse", str(t)]


CASES: dict[str, Case] = {
    "launcher-missing-resources": (
        "beam_launcher",
        lambda t: [
            *("services.beam_launcher", "--input", str(t), "--warehouse", str(t / "wh")),
            *("--resources", str(t / "no-such-folder")),
        ],
        1,
        "run_failed",
        "resource file not found",
    ),
    "launcher-rejected-file": (
        "beam_launcher",
        _launcher_bad_file,
        1,
        "run_failed",
        "1 file(s) rejected; first: " + SCAN + "/results.json: 2 of 2 lines bad",
    ),
    "launcher-bad-choice": (
        "beam_launcher",
        lambda t: ["services.beam_launcher", "--input", str(t), "--scan-type", "ftp"],
        2,
        "usage_error",
        "argument --scan-type: invalid choice: 'ftp'",
    ),
    "launcher-missing-input": (
        "beam_launcher",
        lambda t: ["services.beam_launcher", "--warehouse", str(t)],
        2,
        "usage_error",
        "--input is required",
    ),
    "mirror-resources-missing": (
        "mirror",
        lambda t: [
            *("services.mirror", "resources", "--url", str(t / "no-such-folder")),
            *("--dest", str(t / "res")),
        ],
        1,
        "run_failed",
        "FileNotFoundError: " + "{t}/no-such-folder/",
    ),
    "mirror-dest-unwritable": (
        "mirror",
        _mirror_dest_under_file,
        1,
        "run_failed",
        "NotADirectoryError",
    ),
    "mirror-bad-date": (
        "mirror",
        lambda t: ["services.mirror", "archives", "--source", "x", "--dest", "y", "--since", "yd"],
        2,
        "usage_error",
        "argument --since: not a date (YYYY-MM-DD): 'yd'",
    ),
    "mirror-no-command": ("mirror", lambda t: ["services.mirror"], 2, "usage_error", "command"),
    "untar-corrupt-archive": (
        "untar",
        _untar_corrupt,
        1,
        "run_failed",
        f"1 of 1 archive(s) not unpacked: {SCAN}.tar.gz: failed: CorruptArchive",
    ),
    "untar-bad-limit": (
        "untar",
        lambda t: ["services.untar", "--raw", str(t), "--target", str(t), "--max-ratio", "1"],
        2,
        "usage_error",
        "argument --max-ratio: must be > 1",
    ),
    "queries-no-base-tables": (
        "queries",
        _queries_empty_warehouse,
        1,
        "run_failed",
        "QueriesFailed: base tables missing",
    ),
    "queries-unknown-flag": (
        "queries",
        lambda t: ["services.queries", "--warehouse", str(t), "--no-such-flag"],
        2,
        "usage_error",
        "unrecognized arguments: --no-such-flag",
    ),
    "routeviews-unreachable": (
        "routeviews",
        lambda t: [
            *("services.routeviews", "sync", "--dest", str(t / "meta"), "--retries", "0"),
            *("--base-url", f"http://127.0.0.1:{closed_port()}/", "--kinds", "as2org"),
        ],
        1,
        "run_failed",
        "1 listing(s) and 0 file(s) failed: listing as2org: ",
    ),
    "routeviews-dates-reversed": (
        "routeviews",
        lambda t: [
            *("services.routeviews", "backfill", "--dest", str(t)),
            *("--start", "2021-01-02", "--end", "2021-01-01"),
        ],
        2,
        "usage_error",
        "--end is before --start",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_failed_run_ends_with_one_json_reason(name: str, tmp_path: Path) -> None:
    stage, build, code, message, fragment = CASES[name]
    proc = run_stage(build(tmp_path))
    assert proc.returncode == code, proc.stderr[-2000:]
    objs = json_lines(proc.stderr)
    last = objs[-1]
    finals = [o for o in objs if o["message"] in ("run_failed", "usage_error")]
    assert finals == [last], "exactly one final line, and it is the last"
    assert (last["severity"], last["message"], last["exit_code"]) == ("ERROR", message, code)
    assert last[LABELS_KEY]["stage"] == stage and last["stage"] == stage
    reason = last["reason"]
    assert isinstance(reason, str) and "\n" not in reason
    assert fragment.replace("{t}", str(tmp_path)) in reason, reason
    for obj in objs:
        assert obj.get(LABELS_KEY, {}).get("stage") == stage, obj
    if message == "usage_error":
        assert proc.stdout == ""  # nothing ran
        assert last["usage"].startswith("usage: python -m services." + stage)
        assert last["help"].endswith(" --help")
    elif proc.stdout:  # a run that got as far as a summary still prints it, logs stay out
        assert "severity" not in json.loads(proc.stdout)


def test_run_failed_is_written_whatever_the_log_level(tmp_path: Path) -> None:
    """LOG_LEVEL=CRITICAL hides ordinary ERROR lines but never the reason a run failed."""
    proc = run_stage(_untar_corrupt(tmp_path), LOG_LEVEL="CRITICAL")
    assert proc.returncode == 1
    (only,) = json_lines(proc.stderr)
    assert only["message"] == "run_failed" and "CorruptArchive" in only["reason"]


def test_bad_environment_value_is_one_json_line(tmp_path: Path) -> None:
    """A value that breaks before logging is set up still ends as JSON (CRITICAL), exit 1."""
    proc = run_stage(
        ["services.mirror", "archives", "--source", str(tmp_path), "--dest", str(tmp_path)],
        CP_MIRROR_ATTEMPTS="three",
    )
    assert proc.returncode == 1
    (crash,) = json_lines(proc.stderr)
    assert crash["severity"] == "CRITICAL" and crash["message"] == "uncaught_exception"
    assert crash[LABELS_KEY]["stage"] == "mirror"
    assert "invalid literal for int() with base 10: 'three'" in crash["exception"]


@pytest.mark.parametrize("stage", STAGES)
def test_help_stays_plain_text_on_stdout(stage: str) -> None:
    proc = run_stage([f"services.{stage}", "--help"])
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout.startswith(f"usage: python -m services.{stage}")
    assert "--log-level" in proc.stdout or "{" in proc.stdout  # flags or sub-commands listed
