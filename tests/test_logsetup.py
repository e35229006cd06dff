"""GKE-shaped logs: every stderr line is one Cloud Logging JSON object.

Unit tests of the renderer (severity names, exception field, string labels, level
filtering, library and ``warnings`` routing), then real subprocesses: a small program
that logs through standard-library loggers and dies of an uncaught exception, and the
whole ``make run`` chain (sample scans → mirror → untar → launcher → queries → report),
whose every stderr line is checked while its stdout summaries stay as they were.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from sampledata import DEFAULT_SCANS
from services.common import logsetup
from services.common.logsetup import (
    LABELS_KEY,
    SEVERITIES,
    bind_labels,
    configure_logging,
    get_logger,
)

ROOT = Path(__file__).resolve().parents[1]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Give the root logger, library levels and hooks back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in logsetup.THIRD_PARTY}
    hooks = sys.excepthook, threading.excepthook
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    sys.excepthook, threading.excepthook = hooks
    structlog.contextvars.clear_contextvars()
    logsetup._process_labels.clear()


def check_line(line: str) -> dict[str, Any]:
    """One stderr line: a JSON object with the fields Cloud Logging reads."""
    obj = json.loads(line)
    assert isinstance(obj, dict), line
    assert obj["severity"] in SEVERITIES, line
    assert isinstance(obj["message"], str) and obj["message"], line
    assert RFC3339_UTC.match(obj["timestamp"]), line
    assert dt.datetime.fromisoformat(obj["timestamp"]).tzinfo is not None
    assert "level" not in obj and "event" not in obj, line
    labels = obj.get(LABELS_KEY, {})
    assert isinstance(labels, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()), line
    return obj


def lines_of(text: str) -> list[dict[str, Any]]:
    """Every line of a stderr capture, each checked."""
    return [check_line(line) for line in text.splitlines()]


def test_severity_names_for_structlog_and_stdlib(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG")
    capsys.readouterr()
    log = get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.warn("w2")
    log.error("e")
    log.critical("c")
    lib = logging.getLogger("apache_beam.runners.test")
    lib.debug("ld")
    lib.info("li")
    lib.warning("lw")
    lib.error("le")
    lib.critical("lc")
    lib.log(5, "below debug is filtered")
    lib.log(45, "between error and critical")
    got = [(o["message"], o["severity"]) for o in lines_of(capsys.readouterr().err)]
    assert got == [
        ("d", "DEBUG"),
        ("i", "INFO"),
        ("w", "WARNING"),
        ("w2", "WARNING"),
        ("e", "ERROR"),
        ("c", "CRITICAL"),
        ("ld", "DEBUG"),
        ("li", "INFO"),
        ("lw", "WARNING"),
        ("le", "ERROR"),
        ("lc", "CRITICAL"),
        ("between error and critical", "ERROR"),
    ]


def test_fields_keep_their_values_and_a_message_field_is_not_lost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", stage="untar")
    capsys.readouterr()
    get_logger("untar", raw="/r").info("archive_unpacked", files=["a"], bytes=3, message="hi")
    (obj,) = lines_of(capsys.readouterr().err)
    assert obj["message"] == "archive_unpacked"
    assert (obj["logger"], obj["raw"], obj["files"], obj["bytes"]) == ("untar", "/r", ["a"], 3)
    assert obj["msg"] == "hi"
    assert obj[LABELS_KEY] == {"stage": "untar"}


def test_exceptions_become_one_field_not_raw_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    capsys.readouterr()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        get_logger("t").exception("step_failed", step=1)
        logging.getLogger("google.cloud.bigquery").exception("load %s failed", "job-1")
    err = capsys.readouterr().err
    ours, lib = lines_of(err)
    assert len(err.splitlines()) == 2
    assert ours["message"] == "step_failed" and ours["severity"] == "ERROR"
    assert lib["message"] == "load job-1 failed" and lib["severity"] == "ERROR"
    for obj in (ours, lib):
        assert obj["exception"].startswith("Traceback (most recent call last):")
        assert "ValueError: bad\nthing" in obj["exception"]
    assert lib["logger"] == "google.cloud.bigquery"
    source = lib["logging.googleapis.com/sourceLocation"]
    assert source["file"] == __file__ and isinstance(source["line"], int)
    assert source["function"] == "test_exceptions_become_one_field_not_raw_lines"


def test_labels_are_strings_bound_for_library_lines_and_threads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", stage="beam_launcher", scan_type="all", run_id=None)
    get_logger("beam_launcher", run_id=20210530)  # how a run binds its id today
    capsys.readouterr()
    get_logger("beam_launcher").info("run_start")
    logging.getLogger("urllib3.connectionpool").warning("Retrying %d", 2)
    thread = threading.Thread(target=lambda: logging.getLogger("apache_beam").warning("bg"))
    thread.start()
    thread.join()
    get_logger("x").warning("ip_metadata_missing", scan_type="echo")
    run, lib, background, per_type = lines_of(capsys.readouterr().err)
    expected = {"stage": "beam_launcher", "scan_type": "all", "run_id": "20210530"}
    assert run[LABELS_KEY] == lib[LABELS_KEY] == background[LABELS_KEY] == expected
    assert lib["message"] == "Retrying 2" and lib["logger"] == "urllib3.connectionpool"
    assert background["message"] == "bg"
    assert per_type[LABELS_KEY]["scan_type"] == "echo"  # the event's own value wins

    # A new configuration (next CLI call in the same process) forgets the old run.
    configure_logging("INFO", stage="mirror")
    capsys.readouterr()
    bind_labels(scan_type="echo")
    get_logger("mirror").info("archive_copied")
    (obj,) = lines_of(capsys.readouterr().err)
    assert obj[LABELS_KEY] == {"stage": "mirror", "scan_type": "echo"}
    assert "run_id" not in obj


def test_levels_filter_ours_and_keep_libraries_at_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO")
    capsys.readouterr()
    get_logger("t").debug("hidden")
    get_logger("t").info("shown")
    for name in ("apache_beam.io", "google.auth.transport", "urllib3", "kubernetes.client"):
        logging.getLogger(name).info("library info is noise")
        logging.getLogger(name).warning(f"{name} warning")
    got = [o["message"] for o in lines_of(capsys.readouterr().err)]
    assert got == [
        "shown",
        "apache_beam.io warning",
        "google.auth.transport warning",
        "urllib3 warning",
        "kubernetes.client warning",
    ]

    configure_logging("DEBUG")
    capsys.readouterr()
    logging.getLogger("apache_beam.io").debug("library debug")
    get_logger("t").debug("our debug")
    assert [o["message"] for o in lines_of(capsys.readouterr().err)] == [
        "library debug",
        "our debug",
    ]

    configure_logging("ERROR")
    capsys.readouterr()
    get_logger("t").warning("hidden")
    logging.getLogger("apache_beam").warning("hidden")
    logging.getLogger("apache_beam").error("library error")
    assert [o["message"] for o in lines_of(capsys.readouterr().err)] == ["library error"]


def test_unknown_level_falls_back_to_info_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("LOUD")
    get_logger("t").debug("hidden")
    get_logger("t").info("shown")
    got = lines_of(capsys.readouterr().err)
    assert [(o["message"], o.get("given")) for o in got] == [
        ("log_level_unknown", "LOUD"),
        ("shown", None),
    ]


def test_warnings_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", stage="queries")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings replaced the hook configure set
        warnings.warn("deprecated option", DeprecationWarning, stacklevel=1)
    (warned,) = lines_of(capsys.readouterr().err)
    assert warned["severity"] == "WARNING" and warned["logger"] == "py.warnings"
    assert "DeprecationWarning: deprecated option" in warned["message"]
    assert not warned["message"].endswith("\n")
    assert warned[LABELS_KEY] == {"stage": "queries"}


def test_write_event_ignores_the_level_and_puts_the_reason_next_to_the_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stage's last word (run_failed) is never filtered and reads well raw."""
    configure_logging("CRITICAL", stage="untar", scan_type="echo")
    capsys.readouterr()
    get_logger("untar").error("hidden_by_level", reason="not shown")
    logsetup.write_event("run_failed", "ERROR", reason="2 archive(s) failed", exit_code=1)
    err = capsys.readouterr().err
    (obj,) = lines_of(err)
    assert list(obj)[:3] == ["severity", "message", "reason"]
    assert (obj["severity"], obj["message"], obj["reason"]) == (
        "ERROR",
        "run_failed",
        "2 archive(s) failed",
    )
    assert obj[LABELS_KEY] == {"stage": "untar", "scan_type": "echo"}
    assert obj["exit_code"] == 1


def test_cloud_logging_fields_renames_and_stringifies() -> None:
    out = logsetup.cloud_logging_fields(
        None, "warn", {"event": "e", "level": "warning", "run_id": 1, "scan_type": None}
    )
    assert out == {
        "severity": "WARNING",
        "message": "e",
        LABELS_KEY: {"run_id": "1"},
        "run_id": 1,
        "scan_type": None,
    }
    assert logsetup.cloud_logging_fields(None, "exception", {"event": 3})["severity"] == "ERROR"
    assert logsetup.cloud_logging_fields(None, "fatal", {"event": "x"})["message"] == "x"


# ---------------------------------------------------------------------------------------
# Real processes


def run_py(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


LIBRARY_PROGRAM = """
import logging, warnings
import apache_beam  # imported as in the launcher: it must not add its own text handler
from services.common.logsetup import configure_logging, get_logger
configure_logging(None, stage="beam_launcher", scan_type="echo")
get_logger("beam_launcher", run_id="r-1").info("run_start", files=2)
logging.getLogger("apache_beam.runners.direct").warning("direct runner says %s", "hi")
logging.getLogger("google.auth._default").warning("No project ID could be determined")
logging.getLogger("urllib3.connectionpool").warning("Retrying (%r)", "Retry(total=3)")
logging.getLogger("kubernetes.client.rest").info("noise unless DEBUG")
warnings.warn("a library warning", UserWarning)
logging.getLogger("google.cloud").warning("%d rows", "not a number")
try:
    {}["missing"]
except KeyError:
    logging.getLogger("apache_beam").exception("bundle failed")
raise RuntimeError("boom\\nsecond line")
"""


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_library_lines_and_uncaught_exception_in_a_subprocess(level: str) -> None:
    proc = run_py(LIBRARY_PROGRAM, LOG_LEVEL=level)
    assert proc.returncode == 1
    assert proc.stdout == ""
    objs = lines_of(proc.stderr)
    by_message = {o["message"]: o for o in objs}
    assert by_message["run_start"]["logger"] == "beam_launcher"
    beam = by_message["direct runner says hi"]
    assert beam["severity"] == "WARNING" and beam["logger"] == "apache_beam.runners.direct"
    assert by_message["No project ID could be determined"]["logger"] == "google.auth._default"
    assert "Retrying ('Retry(total=3)')" in by_message
    assert ("noise unless DEBUG" in by_message) == (level == "DEBUG")
    (warned,) = [o for o in objs if o.get("logger") == "py.warnings"]
    assert "UserWarning: a library warning" in warned["message"]
    assert "KeyError: 'missing'" in by_message["bundle failed"]["exception"]
    broken = by_message["log_record_unformattable"]  # a library's bad %-arguments
    assert broken["severity"] == "ERROR" and broken["logger"] == "google.cloud"
    assert broken["msg"] == "'%d rows'" and "TypeError" in broken["error"]
    crash = by_message["uncaught_exception"]
    assert crash["severity"] == "CRITICAL"
    assert crash["exception"].rstrip().endswith("RuntimeError: boom\nsecond line")
    for obj in objs:
        assert obj[LABELS_KEY]["stage"] == "beam_launcher"
        assert obj[LABELS_KEY]["scan_type"] == "echo"
    # Lines after the run bound its id carry it; the label binding is process-wide.
    assert all(o[LABELS_KEY].get("run_id") == "r-1" for o in objs)


class _EmptyHandler(http.server.BaseHTTPRequestHandler):
    """A CAIDA stand-in that has nothing: every listing is a 404."""

    def do_GET(self) -> None:
        self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


def stage(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_make_run_chain_writes_only_json_lines_on_stderr(tmp_path: Path) -> None:
    """The ``make run`` stages as subprocesses; every stderr line is Cloud Logging JSON."""
    var = tmp_path / "var"
    steps: list[tuple[str, list[str]]] = [
        ("sample", ["sampledata", "--out", f"{var}/sample", "--size", "20"]),
        (
            "mirror",
            [
                *("services.mirror", "archives", "--source", f"{var}/sample/archives"),
                *("--dest", f"{var}/raw"),
            ],
        ),
        (
            "mirror",
            [
                *("services.mirror", "resources", "--url", "resources/sample"),
                *("--dest", f"{var}/resources"),
            ],
        ),
        ("untar", ["services.untar", "--raw", f"{var}/raw", "--target", f"{var}/bucket"]),
        (
            "beam_launcher",
            [
                *("services.beam_launcher", "--input", f"{var}/bucket/scans", "--require-markers"),
                *("--resources", f"{var}/resources/current", "--warehouse", f"{var}/warehouse"),
            ],
        ),
        ("queries", ["services.queries", "--warehouse", f"{var}/warehouse"]),
        ("report", ["services.beam_launcher.report", "--warehouse", f"{var}/warehouse"]),
    ]
    env = {"LOG_LEVEL": "INFO"}
    seen: dict[str, int] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for name, args in steps:
        proc = stage(args, **env)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        objs = lines_of(proc.stderr)
        seen[name] = seen.get(name, 0) + len(objs)
        if name == "report":  # a table for people on stdout, no logs
            assert proc.stdout.startswith("Warehouse: ") and "echo_scan" in proc.stdout
            assert objs == []
            continue
        summary = json.loads(proc.stdout)  # stdout stays the JSON summary, not logs
        assert isinstance(summary, dict) and "severity" not in summary
        summaries[f"{name}:{args[1]}"] = summary
        if name == "sample":
            continue
        for obj in objs:
            assert obj[LABELS_KEY]["stage"] == name, obj
        if name in ("beam_launcher", "queries"):
            run_id = summary["run_id"]
            assert {o[LABELS_KEY].get("run_id") for o in objs} <= {run_id, None}
            assert any(o[LABELS_KEY].get("run_id") == run_id for o in objs)
    n_scans = summaries["sample:--out"]["scans"]  # the generator's own count
    assert n_scans == len(DEFAULT_SCANS)
    assert summaries["mirror:archives"]["copied"] == n_scans
    assert summaries["untar:--raw"]["unpacked"] == n_scans
    assert summaries["beam_launcher:--input"]["files_processed"] > 0
    assert min(seen["mirror"], seen["untar"], seen["beam_launcher"], seen["queries"]) > 0

    # Rebuild at DEBUG: Beam's own (third-party) lines come through the same formatter.
    proc = stage(
        [
            "services.beam_launcher",
            "--input",
            f"{var}/bucket/scans",
            "--require-markers",
            "--resources",
            f"{var}/resources/current",
            "--warehouse",
            f"{var}/warehouse",
            "--full",
            "--log-level",
            "DEBUG",
        ],
        **env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    objs = lines_of(proc.stderr)
    run_id = json.loads(proc.stdout)["run_id"]
    beam = [o for o in objs if str(o.get("logger", "")).startswith("apache_beam")]
    assert len(beam) >= 10, "Beam logs at DEBUG during a run"
    assert {o["severity"] for o in beam} >= {"DEBUG", "INFO"}
    for obj in objs:
        assert obj[LABELS_KEY]["stage"] == "beam_launcher"
    after_start = objs[[o["message"] for o in objs].index("run_start") :]
    assert all(o[LABELS_KEY]["run_id"] == run_id for o in after_start)

    # routeviews against a CAIDA stand-in with nothing on it: the failures are JSON too.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        proc = stage(
            [
                *("services.routeviews", "sync", "--base-url", base),
                *("--dest", f"{var}/meta", "--retries", "0"),
            ],
            **env,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False
    objs = lines_of(proc.stderr)
    assert objs and all(o[LABELS_KEY] == {"stage": "routeviews"} for o in objs)
    assert {"WARNING", "ERROR"} & {o["severity"] for o in objs}
