"""Breaking schema changes build beside the live table, then switch (issue 17, point 4).

The real launcher (``python -m services.beam_launcher``) on the local warehouse: a column the
new code removes (``CP_TEST_OLDER_SCHEMA`` makes the code lack it) or retypes (the
recorded columns say it had another type) is rebuilt as ``echo_scan__v1_2`` beside the
live ``echo_scan``. A reader loop in a thread queries the stable view during the whole
rebuild and must always see one complete version; a killed rebuild resumes; a nightly run
during a pending rebuild leaves the table to it; rollback and drop are explicit commands.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from services.beam_launcher.warehouse.local import LocalWarehouse
from services.beam_launcher.warehouse.rows import HYPERQUACK_TABLES
from services.beam_launcher.warehouse.schema_versions import (
    BREAKING,
    column_shapes,
    shapes_hash,
)
from tests.test_hardening import REPO, json_lines, stage_env

pytestmark = pytest.mark.slow

DROPPED = "outcome_rule_id"  # the new code (CP_TEST_OLDER_SCHEMA) no longer has it
NEW_CODE = {"CP_TEST_OLDER_SCHEMA": f"echo_scan.{DROPPED}", "CP_PIPELINE_VERSION": "2.0"}
OLD_CODE = {"CP_PIPELINE_VERSION": "1.0"}
NEW = "echo_scan__v1_2"  # schema version 1 (the hook keeps it), second build of it


def launcher(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.beam_launcher", *args],
        cwd=REPO,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def events(stderr: str, message: str) -> list[dict[str, Any]]:
    return [x for x in json_lines(stderr) if x.get("message") == message]


def query(wh: Path, sql: str) -> list[tuple[Any, ...]]:
    """A reader as users read: under the warehouse's shared lock, read-only."""
    with LocalWarehouse(wh).connect(read_only=True, purpose="test reader") as con:
        return con.execute(sql).fetchall()


def view_state(wh: Path) -> tuple[int, str | None, str | None, bool]:
    """(rows, lowest and highest pipeline_version, has the dropped column) of echo_scan."""
    with LocalWarehouse(wh).connect(read_only=True, purpose="test reader") as con:
        n, lo, hi = con.execute(  # type: ignore[misc]
            "SELECT count(*), min(pipeline_version), max(pipeline_version) FROM echo_scan"
        ).fetchone()
        cols = {r[0] for r in con.execute("DESCRIBE echo_scan").fetchall()}
    return n, lo, hi, DROPPED in cols


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two echo scans and a discard scan of the sample generator."""
    from sampledata import HYPERQUACK_SCANS, write_scan_archives

    root = tmp_path_factory.mktemp("beside")
    echo = [s for s in HYPERQUACK_SCANS if s.scan_type == "echo"][:2]
    discard = [s for s in HYPERQUACK_SCANS if s.scan_type == "discard"][:1]
    write_scan_archives(root / "gen", scans=[*echo, *discard], size=40)
    return root / "gen" / "scans"


def _input(scans: Path, dest: Path, *kinds: str, first_echo: int = 2) -> Path:
    """A copy of the first ``first_echo`` echo scans (and the other kinds' scans)."""
    echo = sorted(p for p in scans.iterdir() if "-echo-" in p.name)[:first_echo]
    other = [p for p in scans.iterdir() if any(f"-{k}-" in p.name for k in kinds)]
    for p in [*echo, *other]:
        shutil.copytree(p, dest / p.name)
    return dest


def _old_warehouse(scans: Path, tmp_path: Path, echo: int = 2) -> tuple[Path, Path, int]:
    inp, wh = _input(scans, tmp_path / "in", first_echo=echo), tmp_path / "wh"
    old = launcher("--input", str(inp), "--warehouse", str(wh), **OLD_CODE)
    assert old.returncode == 0, old.stderr[-3000:]
    n = view_state(wh)[0]
    assert n > 0 and view_state(wh) == (n, "1.0", "1.0", True)
    return inp, wh, n


def test_readers_see_the_old_table_during_the_rebuild_then_the_new_one(
    scans: Path, tmp_path: Path
) -> None:
    inp, wh, n = _old_warehouse(scans, tmp_path)
    # without --full the new code is refused, naming the rebuild beside
    refused = launcher("--input", str(inp), "--warehouse", str(wh), **NEW_CODE)
    assert refused.returncode == 1
    assert "--full --scan-type echo" in json_lines(refused.stderr)[-1]["reason"]

    samples: list[tuple[float, tuple[int, str | None, str | None, bool], bool]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                built = any((wh / "parquet" / NEW).glob("date=*/*.parquet"))
                samples.append((time.monotonic(), view_state(wh), built))
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.beam_launcher",
            "--input",
            str(inp),
            "--warehouse",
            str(wh),
            "--full",
            "--scan-type",
            "echo",
        ],
        cwd=REPO,
        # a pause between the last commit and the switch, for the reader to see
        env=stage_env(CP_TEST_PAUSE_AT="before_switch_check:1.5", **NEW_CODE),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=300)
    ended = time.monotonic()
    time.sleep(0.3)
    stop.set()
    thread.join(10)
    assert not errors, errors
    assert proc.returncode == 0, err[-3000:]

    old_state, new_state = (n, "1.0", "1.0", True), (n, "2.0", "2.0", False)
    during = [s for t, s, _b in samples if started <= t <= ended]
    assert len(during) >= 10, f"only {len(during)} samples during the rebuild"
    # old rows were still shown after the new version's Parquet was published
    assert any(s == old_state and built for t, s, built in samples if t <= ended)
    switched = False
    for _t, state, _b in samples:  # never a mix, never empty, never back
        assert state in (old_state, new_state), state
        switched = switched or state == new_state
        assert not (switched and state == old_state)
    assert samples[0][1] == old_state and samples[-1][1] == new_state

    summary = orjson.loads(out)
    assert summary["schema_check"]["echo_scan"]["kind"] == BREAKING
    report = summary["rebuild"]["echo_scan"]
    assert (report["state"], report["version"], report["files_missing"]) == ("switched", NEW, 0)
    assert report["files_done"] == report["files_expected"] == 2
    (line,) = events(err, "table_switched")
    assert (line["version"], line["previous"]) == (NEW, "echo_scan__v1")
    # the ledger is the new version's; the old one's is kept for a rollback
    assert query(
        wh, "SELECT DISTINCT pipeline_version FROM processed_files WHERE scan_type = 'echo'"
    ) == [("2.0",)]
    assert query(
        wh, "SELECT count(*) FROM version_files WHERE table_version = 'echo_scan__v1'"
    ) == [(2,)]
    versions = {
        (v["name"], v["state"], v["rows"], v["ok_files"])
        for v in orjson.loads(launcher("--warehouse", str(wh), "--table-versions").stdout)
    }
    assert versions == {("echo_scan__v1", "old", n, 2), (NEW, "live", n, 2)}

    # the next nightly of the new code: nothing to do, no refusal
    nightly = launcher("--input", str(inp), "--warehouse", str(wh), **NEW_CODE)
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    assert orjson.loads(nightly.stdout)["files_processed"] == 0

    # rollback: the stable name back to the old version, its ledger live again
    back = launcher("--warehouse", str(wh), "--switch-table", "echo_scan=v1")
    assert back.returncode == 0, back.stderr[-3000:]
    assert orjson.loads(back.stdout)["previous"] == NEW
    assert view_state(wh) == old_state
    assert query(
        wh, "SELECT DISTINCT pipeline_version FROM processed_files WHERE scan_type = 'echo'"
    ) == [("1.0",)]
    forward = launcher("--warehouse", str(wh), "--switch-table", "echo_scan=v1_2")
    assert forward.returncode == 0, forward.stderr[-3000:]
    assert view_state(wh) == new_state

    # the live version cannot be dropped; the old one only explicitly
    live = launcher("--warehouse", str(wh), "--drop-table-version", NEW)
    assert live.returncode == 1 and "is live" in json_lines(live.stderr)[-1]["reason"]
    assert (wh / "parquet" / "echo_scan").is_dir()  # kept until dropped
    dropped = launcher("--warehouse", str(wh), "--drop-table-version", "echo_scan=v1")
    assert dropped.returncode == 0, dropped.stderr[-3000:]
    assert not (wh / "parquet" / "echo_scan").exists()
    assert view_state(wh) == new_state
    assert query(
        wh,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_name LIKE 'echo_scan%' ORDER BY 1",
    ) == [
        ("echo_scan",),
        (NEW,),
    ]
    gone = launcher("--warehouse", str(wh), "--switch-table", "echo_scan=v1")
    assert gone.returncode == 1 and "has no version v1" in json_lines(gone.stderr)[-1]["reason"]


def test_killed_rebuild_resumes_and_the_nightly_leaves_the_table_to_it(
    scans: Path, tmp_path: Path
) -> None:
    inp, wh, n = _old_warehouse(scans, tmp_path, echo=1)
    before = query(wh, "SELECT * FROM processed_files ORDER BY file_key")
    full = ["--input", str(inp), "--warehouse", str(wh), "--full", "--scan-type", "echo"]
    killed = launcher(*full, CP_TEST_KILL_AT="after_commit", **NEW_CODE)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert view_state(wh) == (n, "1.0", "1.0", True)  # readers still see the old table
    assert query(wh, "SELECT * FROM processed_files ORDER BY file_key") == before

    # the nightly of the new code, with a new echo and a discard scan, while it is pending
    more = _input(scans, tmp_path / "more", "discard")
    for p in more.iterdir():
        if not (inp / p.name).exists():
            shutil.copytree(p, inp / p.name)
    nightly = launcher("--input", str(inp), "--warehouse", str(wh), **NEW_CODE)
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    summary = orjson.loads(nightly.stdout)
    assert summary["left_to_rebuild"] == {"echo": NEW}
    assert {k.split("/")[0].split("-")[1] for k in summary["committed"]} == {"discard"}
    assert events(nightly.stderr, "left_to_rebuild")
    # the killed rebuild's commit is published by the next opening, into its version
    assert events(nightly.stderr, "interrupted_publish_finished")
    assert any((wh / "parquet" / NEW).glob("date=*/*.parquet"))
    assert view_state(wh) == (n, "1.0", "1.0", True)
    assert query(wh, "SELECT count(*) FROM discard_scan")[0][0] > 0

    # the rebuild again: what the killed run committed is kept, only the new scan is read
    resumed = launcher(*full, **NEW_CODE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = orjson.loads(resumed.stdout)
    assert summary["files_processed"] == 1 and summary["files_skipped_unchanged"] == 1
    assert summary["rebuild"]["echo_scan"]["state"] == "switched"
    n3, lo, hi, has = view_state(wh)
    assert (lo, hi, has) == ("2.0", "2.0", False) and n3 > n
    # rows per scan of the new version equal a fresh warehouse's
    fresh = tmp_path / "fresh"
    once = launcher(
        "--input", str(inp), "--warehouse", str(fresh), "--scan-type", "echo", **NEW_CODE
    )
    assert once.returncode == 0, once.stderr[-3000:]
    per_scan = "SELECT source, count(*) FROM echo_scan GROUP BY 1 ORDER BY 1"
    assert query(wh, per_scan) == query(fresh, per_scan)
    again = launcher("--input", str(inp), "--warehouse", str(wh), **NEW_CODE)
    assert again.returncode == 0 and orjson.loads(again.stdout)["files_processed"] == 0


def test_retyped_column_is_rebuilt_beside_and_recorded(scans: Path, tmp_path: Path) -> None:
    inp, wh, n = _old_warehouse(scans, tmp_path)
    echo = HYPERQUACK_TABLES["echo"]
    retyped = [{**s, "type": "STRING"} if s["name"] == "retry" else s for s in column_shapes(echo)]
    with duckdb.connect(str(wh / "warehouse.duckdb")) as con:  # the table as other code made it
        con.execute(
            "UPDATE schema_versions SET columns = ?, schema_hash = ? WHERE table_name = ?",
            [orjson.dumps(retyped).decode(), shapes_hash(retyped), "echo_scan"],
        )
    LocalWarehouse(wh).refresh_views()
    assert query(wh, "SELECT DISTINCT typeof(retry) FROM echo_scan") == [("VARCHAR",)]
    rebuilt = launcher(
        "--input", str(inp), "--warehouse", str(wh), "--full", "--scan-type", "echo", **OLD_CODE
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert orjson.loads(rebuilt.stdout)["rebuild"]["echo_scan"]["state"] == "switched"
    assert query(wh, "SELECT DISTINCT typeof(retry) FROM echo_scan") == [("BIGINT",)]
    assert query(wh, "SELECT count(*) FROM echo_scan") == [(n,)]
    assert query(wh, "SELECT DISTINCT typeof(retry) FROM echo_scan__v1") == [("VARCHAR",)]
    rec = query(wh, "SELECT schema_hash FROM schema_versions WHERE table_name = 'echo_scan'")
    assert rec == [(shapes_hash(column_shapes(echo)),)]


def test_table_commands_refuse_bad_arguments_with_one_line(tmp_path: Path) -> None:
    bad = launcher("--warehouse", str(tmp_path), "--switch-table", "nope=v1")
    assert bad.returncode == 2
    (line,) = events(bad.stderr, "usage_error")
    assert "expected TABLE=VERSION" in line["reason"] and "echo_scan" in line["reason"]
    both = launcher("--warehouse", str(tmp_path), "--table-versions", "--drop-table-version", "x")
    assert both.returncode == 2 and events(both.stderr, "usage_error")
    missing = launcher("--warehouse", str(tmp_path / "none"), "--table-versions")
    assert missing.returncode == 1
    assert "no warehouse at" in json_lines(missing.stderr)[-1]["reason"]
    assert not (tmp_path / "none").exists()  # nothing created at a mistyped path
