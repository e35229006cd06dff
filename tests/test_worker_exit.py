"""Processes end without the interpreter's teardown, and lose nothing by it.

``services.beam_launcher.worker.exit_now`` ends the launcher (after its stage has
finished), the worker guards and the SDK workers (after Beam's harness returned). These
tests run real processes: what was written to stdout, stderr and the log handlers
arrives, the exit code is kept, and a launcher run with two worker processes leaves a
warehouse DuckDB opens read-only at once, with the rows its summary reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb

from tests.helpers_launcher import REPO, run_launcher
from tests.test_pipeline_workers import SCAN, launcher_env, write_http_scan

CHILD = textwrap.dedent(
    """
    import atexit, logging, logging.handlers, sys
    from services.beam_launcher.worker import exit_now

    atexit.register(lambda: open(sys.argv[1], "w").write("teardown ran"))
    # held in memory until the handler is flushed: only logging.shutdown() writes it
    target = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(logging.handlers.MemoryHandler(1000, logging.CRITICAL, target))
    logging.getLogger().warning("buffered log record")
    sys.stdout.write("x" * 200_000)  # no newline: sits in the stdout buffer
    exit_now(int(sys.argv[2]))
    """
)


def test_exit_now_flushes_everything_and_keeps_the_code(tmp_path: Path) -> None:
    marker = tmp_path / "atexit.txt"
    for code in (0, 3):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(marker), str(code)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == code
        assert done.stdout == "x" * 200_000
        assert "buffered log record" in done.stderr
        assert not marker.exists()  # the teardown (atexit) was skipped


def test_launcher_with_workers_exits_with_a_complete_warehouse(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    names = [f"CP_Quack-http-2021-05-30-23-30-0{i}" for i in range(2)]
    for i, name in enumerate(names):  # two files: one per worker process
        write_http_scan(scans, name, 3000, i)
    wh = tmp_path / "wh"
    args = ["--input", str(scans), "--warehouse", str(wh), "--workers", "2"]
    done = run_launcher(args, launcher_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["committed"] == [f"{name}/results.json" for name in names]
    rows = summary["rows_by_table"]["http_scan"]
    assert rows > 6000
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [x["workers"] for x in lines if x["message"] == "worker_processes"] == [2]
    assert lines[-1]["message"] == "chain_end"
    assert not [x for x in lines if x.get("message") == "worker_output"]  # workers said nothing
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM http_scan").fetchone() == (rows,)
        status = con.execute("SELECT status FROM processed_files").fetchall()
    assert status == [("ok",), ("ok",)]


def test_failed_launcher_run_keeps_exit_code_and_summary(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    path = write_http_scan(scans, SCAN, 300, 8)
    path.write_bytes(path.read_bytes()[:-40])  # truncated gzip: the file is rejected
    args = ["--input", str(scans), "--warehouse", str(tmp_path / "wh")]
    done = run_launcher(args, launcher_env(), timeout=300)
    assert done.returncode == 1
    assert json.loads(done.stdout)["rejected"][0]["file_key"] == f"{SCAN}/results.json"
    last = json.loads(done.stderr.splitlines()[-1])
    assert last["message"] == "run_failed"
