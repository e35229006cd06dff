"""Breaking schema changes build beside, then switch, on BigQuery (issue 17, point 4).

The launcher (``--sink bigquery``, in this process) against a real BigQuery API server
(bqemulator, tests/bq_server.py). The warehouse's record says ``echo_scan`` had a column
the code no longer has (``legacy_note``, also added to the live table): a breaking change.
``--full`` builds ``echo_scan__v<N>`` beside the live ``echo_scan`` while a reader thread
queries ``echo_scan`` the whole time; every sample must be the complete old table or the
complete new one. Then rollback (``switch``), drop, and a switch interrupted between its
steps and finished by running the same command again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.cloud import bigquery

import sampledata as ss
from services.beam_launcher.run import RunFailed, RunSummary, run
from services.beam_launcher.warehouse.bigquery import SWITCHING, BigQueryWarehouse
from services.beam_launcher.warehouse.local import SwitchRefused
from services.beam_launcher.warehouse.rows import HYPERQUACK_TABLES
from services.beam_launcher.warehouse.schema_versions import column_shapes, shapes_hash
from tests.bq_server import PROJECT, BigQueryServer
from tests.test_bigquery_emulator import TIMEOUT_S, Pair, make_pair, write_scan

pytest_plugins = ["tests.bq_server"]
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ECHO = HYPERQUACK_TABLES["echo"]
LEGACY = "legacy_note"  # a column of the old code that the code no longer has


def q(client: Any, sql: str) -> list[Any]:
    return list(client.query(sql).result(timeout=TIMEOUT_S))


def state(client: Any, dataset: str, table: str = "echo_scan") -> tuple[int, str, str]:
    """(rows, lowest and highest pipeline_version) of a table, in one query."""
    (r,) = q(
        client,
        "SELECT COUNT(*) AS n, MIN(pipeline_version) AS lo, MAX(pipeline_version) AS hi "
        f"FROM `{PROJECT}.{dataset}.{table}`",
    )
    return int(r["n"]), r["lo"], r["hi"]


def columns(client: Any, dataset: str, table: str) -> set[str]:
    return {f.name for f in client.get_table(f"{PROJECT}.{dataset}.{table}").schema}


def launch(pair: Pair, version: str, mp: pytest.MonkeyPatch, **kw: Any) -> RunSummary:
    mp.setenv("CP_PIPELINE_VERSION", version)
    cfg = pair.config("bigquery")
    cfg.scan_types = ("echo",)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return run(cfg)


def bq_child(pair: Pair, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A real launcher process (``tests.test_concurrency``'s child entry: the launcher
    with this server's environment) against the pair's dataset."""
    cmd = [sys.executable, "-m", "tests.test_concurrency", pair.server.endpoint]
    cmd += [pair.server.gcs_endpoint, "--sink", "bigquery", "--bq-project", PROJECT]
    cmd += ["--bq-dataset", pair.dataset, *args]
    return subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def old_code_table(pair: Pair) -> None:
    """Make the live echo_scan as older code left it: one more column, recorded."""
    client = pair.client
    ref = f"`{PROJECT}.{pair.dataset}.echo_scan`"
    # bqemulator 1.4.0 applies the DDL to its engine but not to the table's metadata, and a
    # schema update (update_table) the other way round: both, as on BigQuery either would
    q(client, f"ALTER TABLE {ref} ADD COLUMN IF NOT EXISTS {LEGACY} STRING")
    live = client.get_table(ref.strip("`"))
    live.schema = [*live.schema, bigquery.SchemaField(LEGACY, "STRING")]
    client.update_table(live, ["schema"])
    q(client, f"UPDATE {ref} SET {LEGACY} = 'old' WHERE TRUE")
    shapes = [*column_shapes(ECHO), {"name": LEGACY, "type": "STRING", "mode": "NULLABLE"}]
    q(
        client,
        f"UPDATE `{PROJECT}.{pair.dataset}.schema_versions` SET columns = "
        f"'{orjson.dumps(shapes).decode()}', schema_hash = '{shapes_hash(shapes)}' "
        "WHERE table_name = 'echo_scan'",
    )


@pytest.fixture
def old(bq_env: BigQueryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """Two echo scans loaded by pipeline 1.0, then the record of older code's columns."""
    pair = make_pair(bq_env, tmp_path)
    echo = [s for s in ss.HYPERQUACK_SCANS if s.scan_type == "echo"][:2]
    for i, spec in enumerate(echo):
        write_scan(pair.input, spec, 40, seed=i)
    first = launch(pair, "1.0", monkeypatch)
    assert first.files_processed > 0
    old_code_table(pair)
    yield pair


def test_full_builds_beside_and_readers_never_see_a_partial_table(
    old: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, ds = old.client, old.dataset
    n = state(client, ds)[0]
    before = (n, "1.0", "1.0")
    assert state(client, ds) == before and LEGACY in columns(client, ds, "echo_scan")
    with pytest.raises(RunFailed, match="echo_scan"):  # a nightly refuses a breaking change
        launch(old, "2.0", monkeypatch)

    samples: list[tuple[float, Any]] = []
    stop = threading.Event()
    switch_began: list[float] = []
    real_switch = BigQueryWarehouse._switch

    def timed_switch(self: BigQueryWarehouse, *a: Any) -> None:
        switch_began.append(time.monotonic())
        real_switch(self, *a)

    monkeypatch.setattr(BigQueryWarehouse, "_switch", timed_switch)

    def reader() -> None:
        c = old.server.client()
        while not stop.is_set():
            try:
                samples.append((time.monotonic(), state(c, ds)))
            except Exception as exc:  # a missing table is a finding, kept as such
                samples.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))

    thread = threading.Thread(target=reader, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        summary = launch(old, "2.0", monkeypatch, full=True)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT_S)
    after = (n, "2.0", "2.0")
    report = summary.rebuild["echo_scan"]
    assert report["state"] == "switched", report
    new_name = report["version"]
    seen = {s for _t, s in samples}
    assert seen <= {before, after}, f"a reader saw {seen - {before, after}}"
    during = [s for t, s in samples if started <= t < switch_began[0]]
    assert during and set(during) == {before}, "no sample was taken during the rebuild"
    assert samples[-1][1] == after
    # the stable table is the new version's rows and columns, partitioned as declared
    assert state(client, ds) == after and LEGACY not in columns(client, ds, "echo_scan")
    stable = client.get_table(f"{PROJECT}.{ds}.echo_scan")
    assert stable.time_partitioning.field == ECHO.partition_field
    assert state(client, ds, new_name) == after
    # the old contents are kept as the old version's table; the ledgers follow
    wh = BigQueryWarehouse(PROJECT, ds, client=client)
    by_state = {v["state"]: v for v in wh.table_versions()}
    old_name = by_state["old"]["name"]
    assert by_state["live"]["name"] == new_name
    assert state(client, ds, old_name) == before and LEGACY in columns(client, ds, old_name)
    ledger = q(client, f"SELECT DISTINCT pipeline_version FROM `{PROJECT}.{ds}.processed_files`")
    assert [r["pipeline_version"] for r in ledger] == ["2.0"]
    kept = q(
        client,
        f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.version_files` "
        f"WHERE table_version = '{old_name}' AND pipeline_version = '1.0'",
    )
    assert kept[0]["n"] > 0
    rec = q(
        client,
        f"SELECT schema_hash FROM `{PROJECT}.{ds}.schema_versions` WHERE table_name = 'echo_scan'",
    )
    assert rec[0]["schema_hash"] == shapes_hash(column_shapes(ECHO))
    # a nightly now writes the live table again and finds nothing new
    nightly = launch(old, "2.0", monkeypatch)
    assert nightly.files_processed == 0 and not nightly.left_to_rebuild

    # rollback: the stable table shows the old version again, ledger and record follow
    old_id = by_state["old"]["version"]
    back = wh.switch("echo_scan", old_id, "2.0")
    assert back["state"] == "switched" and back["previous"] == new_name
    assert state(client, ds) == before and LEGACY in columns(client, ds, "echo_scan")
    ledger = q(client, f"SELECT DISTINCT pipeline_version FROM `{PROJECT}.{ds}.processed_files`")
    assert [r["pipeline_version"] for r in ledger] == ["1.0"]
    # and forward again; the old version is dropped only on request, never the live one
    assert wh.switch("echo_scan", by_state["live"]["version"], "2.0")["state"] == "switched"
    assert state(client, ds) == after
    with pytest.raises(SwitchRefused, match="live"):
        wh.drop_version("echo_scan", by_state["live"]["version"])
    assert wh.drop_version("echo_scan", old_id)["state"] == "dropped"
    assert [v["state"] for v in wh.table_versions()] == ["live"]
    from google.api_core.exceptions import NotFound

    with pytest.raises(NotFound):
        client.get_table(f"{PROJECT}.{ds}.{old_name}")


def test_switch_interrupted_before_the_ledger_swap_is_finished_by_rerunning(
    old: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the stable table was replaced but before the ledgers were swapped:
    readers already see the complete new table, a nightly leaves the table to the
    rebuild, and the same --full command finishes the switch without copying the
    (already replaced) stable table over the old version's kept rows."""
    client, ds = old.client, old.dataset
    n = state(client, ds)[0]

    def crash(*_a: Any) -> None:
        raise RuntimeError("killed between the replace and the ledger swap (test)")

    monkeypatch.setattr(BigQueryWarehouse, "swap_ledgers", crash)
    with pytest.raises(RuntimeError, match="killed"):
        launch(old, "2.0", monkeypatch, full=True)
    monkeypatch.undo()
    wh = BigQueryWarehouse(PROJECT, ds, client=client)
    (pending,) = [v for v in wh.versions() if v.state == SWITCHING]
    assert state(client, ds) == (n, "2.0", "2.0")  # complete new rows, never partial
    nightly = launch(old, "2.0", monkeypatch)
    assert nightly.left_to_rebuild == {"echo": pending.name}
    again = launch(old, "2.0", monkeypatch, full=True)
    assert again.rebuild["echo_scan"]["state"] == "switched"
    assert again.files_processed == 0  # nothing rebuilt twice
    by_state = {v.state: v for v in wh.versions()}
    assert by_state["live"].name == pending.name
    assert state(client, ds, by_state["old"].name) == (n, "1.0", "1.0")
    ledger = q(client, f"SELECT DISTINCT pipeline_version FROM `{PROJECT}.{ds}.processed_files`")
    assert [r["pipeline_version"] for r in ledger] == ["2.0"]


def test_table_commands_on_bigquery(old: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """--table-versions / --switch-table on BigQuery (the launcher's entry point)."""
    import io
    from contextlib import redirect_stdout

    from services.beam_launcher.__main__ import main

    launch(old, "2.0", monkeypatch, full=True)
    base = ["--sink", "bigquery", "--bq-project", PROJECT, "--bq-dataset", old.dataset]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([*base, "--table-versions"]) == 0
    listed = orjson.loads(out.getvalue())
    assert sorted(v["state"] for v in listed) == ["live", "old"]
    old_id = next(v["version"] for v in listed if v["state"] == "old")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([*base, "--switch-table", f"echo_scan={old_id}"]) == 0
    assert orjson.loads(out.getvalue())["state"] == "switched"
    assert state(old.client, old.dataset)[1:] == ("1.0", "1.0")
    assert main([*base, "--drop-table-version", f"echo_scan={old_id}"]) == 1  # live now


@pytest.mark.parametrize("point", ["bq_before_replace", "bq_before_ledger_swap"])
def test_killed_switch_is_finished_by_the_same_command(
    old: Pair, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real launcher process (``tests.test_concurrency``'s child entry: the launcher with
    this server's environment) SIGKILLed inside the switch (``CP_TEST_KILL_AT``): readers
    see a complete table, and the same command run again finishes the switch."""
    import signal

    client, ds = old.client, old.dataset
    n = state(client, ds)[0]
    cfg = old.config("bigquery")
    args = [
        "--input", cfg.input, "--temp-location", cfg.temp_location or "",
        "--bad-line-threshold", "0.5", "--scan-type", "echo", "--full",
    ]  # fmt: skip

    def child(**env: str) -> subprocess.CompletedProcess[str]:
        return bq_child(old, *args, CP_PIPELINE_VERSION="2.0", **env)

    killed = child(CP_TEST_KILL_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    wh = BigQueryWarehouse(PROJECT, ds, client=client)
    (pending,) = [v for v in wh.versions() if v.state == SWITCHING]
    replaced = point == "bq_before_ledger_swap"
    assert state(client, ds) == ((n, "2.0", "2.0") if replaced else (n, "1.0", "1.0"))
    again = child()
    assert again.returncode == 0, again.stderr[-2000:]
    summary = orjson.loads(again.stdout)
    assert summary["rebuild"]["echo_scan"]["state"] == "switched"
    assert summary["files_processed"] == 0
    by_state = {v.state: v for v in wh.versions()}
    assert by_state["live"].name == pending.name
    assert state(client, ds) == (n, "2.0", "2.0")
    assert state(client, ds, by_state["old"].name) == (n, "1.0", "1.0")
    ledger = q(client, f"SELECT DISTINCT pipeline_version FROM `{PROJECT}.{ds}.processed_files`")
    assert [r["pipeline_version"] for r in ledger] == ["2.0"]


def test_nightly_commit_during_a_marked_switch_loses_no_row(
    bq_env: BigQueryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: a nightly run that commits into the stable table while a switch is under
    way. The switch marks its target ``preparing`` before it copies the stable table; a
    nightly's commit (its own transaction) then fails and writes nothing, and after the
    switch the nightly's rerun commits its files into the new stable table, once. The
    switch waits for other runs' leases and gives up, changing nothing, when they last."""
    from services.beam_launcher.warehouse import bigquery as bq

    pair = make_pair(bq_env, tmp_path)
    client, ds = pair.client, pair.dataset
    echo = [s for s in ss.HYPERQUACK_SCANS if s.scan_type == "echo"][:2]
    write_scan(pair.input, echo[0], 40, seed=0)
    assert launch(pair, "1.0", monkeypatch).files_processed > 0
    n = state(client, ds)[0]

    # 1. a --full rebuild (same columns) stops inside its switch after the mark, before
    #    the copy of the stable table
    def stopped(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("stopped after the mark, before the copy (test)")

    with monkeypatch.context() as m:
        m.setattr(bigquery.Client, "copy_table", stopped)
        with pytest.raises(RuntimeError, match="before the copy"):
            launch(pair, "2.0", monkeypatch, full=True)
    wh = BigQueryWarehouse(PROJECT, ds, client=client)
    (pending,) = [v for v in wh.versions() if v.state == bq.PREPARING]
    assert state(client, ds) == (n, "1.0", "1.0")

    # 2. a nightly with a new scan: its commit is refused inside the transaction
    new_files = write_scan(pair.input, echo[1], 40, seed=1)
    new_source = new_files[0].parent.name
    ledger_q = f"SELECT file_key, status FROM `{PROJECT}.{ds}.processed_files` ORDER BY file_key"
    ledger_before = [tuple(r.values()) for r in q(client, ledger_q)]
    with pytest.raises(RunFailed, match="switch of echo_scan is in progress"):
        launch(pair, "2.0", monkeypatch)
    assert state(client, ds) == (n, "1.0", "1.0")
    assert [tuple(r.values()) for r in q(client, ledger_q)] == ledger_before
    left = [t.table_id for t in client.list_tables(f"{PROJECT}.{ds}")]
    assert not [t for t in left if t.startswith(bq.STAGING_PREFIX)], left
    leases = q(client, f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.{bq.LEASE_TABLE}`")
    assert leases[0]["n"] == 0

    # 3. the switch waits for another run's lease on an echo file, and on timeout undoes
    #    its mark and changes nothing
    lease_sql = (
        f"INSERT INTO `{PROJECT}.{ds}.{bq.LEASE_TABLE}` (unit, run_id, holder, claimed_at, "
        f"expires_at) VALUES ('{new_source}/x.json.gz', 'other-run', 'test', "
        "CURRENT_TIMESTAMP(), TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 600 SECOND))"
    )
    q(client, lease_sql)
    monkeypatch.setattr(bq, "SWITCH_POLL_S", 0.2)
    # the wait is the setting: a real launcher process's --switch-table, waiting 2 s by
    # its flag, and this process's warehouse, waiting 1 s by $CP_SWITCH_WAIT_SECONDS
    t0 = time.monotonic()
    refused = bq_child(pair, "--switch-table", pending.name, "--switch-wait-seconds", "2")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "after 2 s other runs still hold 1 lease" in refused.stderr
    assert time.monotonic() - t0 >= 2
    assert {v.name: v.state for v in wh.versions()}[pending.name] == "building"
    monkeypatch.setenv("CP_SWITCH_WAIT_SECONDS", "1")
    wh_env = BigQueryWarehouse(PROJECT, ds, client=client)
    assert wh_env.switch_wait_s == 1.0
    t0 = time.monotonic()
    with pytest.raises(SwitchRefused, match="after 1 s other runs still hold 1 lease"):
        wh_env.switch("echo_scan", pending.version_id, "2.0")
    assert 1.0 <= time.monotonic() - t0 < 30
    assert {v.name: v.state for v in wh.versions()}[pending.name] == "building"
    assert state(client, ds) == (n, "1.0", "1.0")
    # ... and goes on once that lease ends (released by its run while the switch waits)
    wh = BigQueryWarehouse(PROJECT, ds, client=client, switch_wait_s=60.0)
    other = bq_env.client()
    release = threading.Timer(
        1.5,
        lambda: q(other, f"DELETE FROM `{PROJECT}.{ds}.{bq.LEASE_TABLE}` WHERE TRUE"),
    )
    release.start()
    t0 = time.monotonic()
    try:
        done = wh.switch("echo_scan", pending.version_id, "2.0")
    finally:
        release.join()
    assert time.monotonic() - t0 >= 1.5
    assert done["state"] == "switched"
    by_state = {v.state: v for v in wh.versions()}
    assert by_state["live"].name == pending.name
    assert state(client, ds) == (n, "2.0", "2.0")
    assert state(client, ds, by_state["old"].name) == (n, "1.0", "1.0")  # copy redone

    # 4. the nightly's rerun commits the refused files into the new stable table, once
    again = launch(pair, "2.0", monkeypatch)
    assert again.files_processed == len(new_files)
    (r,) = q(
        client,
        f"SELECT COUNT(*) AS n FROM `{PROJECT}.{ds}.echo_scan` WHERE source = '{new_source}'",
    )
    (led,) = q(
        client,
        "SELECT COUNT(*) AS files, SUM(rows_written) AS n_rows FROM "
        f"`{PROJECT}.{ds}.processed_files` WHERE source = '{new_source}' AND status = 'ok'",
    )
    assert led["files"] == len(new_files)
    assert r["n"] > 0 and r["n"] == led["n_rows"]  # each row once
    assert state(client, ds) == (n + r["n"], "2.0", "2.0")
