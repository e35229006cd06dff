"""The local warehouse's scan tables and dead_letter are views over the published Parquet.

A commit copies no rows into DuckDB: the views read ``parquet/<table>/date=*/*.parquet``
with the columns and DuckDB types of the tables' DDL. Covered here: the types, empty
views, a moved warehouse, the conversion of native tables made by earlier versions (and
the refusal when their rows differ from the Parquet), a kill between publishing and the
views' refresh, unreadable files, and files written with older or newer columns.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.beam_launcher.warehouse.local import (
    PARQUET_TABLES,
    LocalWarehouse,
    WarehouseUnusable,
)
from services.beam_launcher.warehouse.rows import PROCESSED_FILES, SCAN_TABLES
from services.common.rowschema import TableSpec
from tests.test_hardening import REPO, json_lines, parquet_counts, run_stage_cli, stage_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(scans, warehouse): an echo and a Satellite sample scan with bad lines, loaded."""
    from sampledata import HYPERQUACK_SCANS, SATELLITE_SCANS, write_scan_archives

    root = tmp_path_factory.mktemp("views")
    write_scan_archives(
        root / "gen",
        scans=(HYPERQUACK_SCANS[0], SATELLITE_SCANS[0]),
        size=20,
        bad_line_ratio=0.05,
    )
    scans, wh = root / "gen" / "scans", root / "wh"
    proc = run_stage_cli("beam_launcher", ["--input", str(scans), "--warehouse", str(wh)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return scans, wh


def launcher(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.beam_launcher", *args],
        cwd=REPO,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_of(wh: Path, dest: Path) -> Path:
    shutil.copytree(wh, dest)
    return dest


def kinds(wh: Path) -> dict[str, str]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return dict(
            con.execute(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = 'main'"
            ).fetchall()
        )


def counts(wh: Path) -> dict[str, int]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return {
            spec.name: con.execute(f'SELECT count(*) FROM "{spec.name}"').fetchone()[0]  # type: ignore[index]
            for spec in (*PARQUET_TABLES, PROCESSED_FILES)
        }


def rows(wh: Path) -> dict[str, list[str]]:
    """Every row of every table, as sorted text (compares tables across layouts)."""
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return {
            spec.name: sorted(map(repr, con.execute(f'SELECT * FROM "{spec.name}"').fetchall()))
            for spec in (*PARQUET_TABLES, PROCESSED_FILES)
        }


def ddl_columns(spec: TableSpec) -> list[tuple[str, str]]:
    """(name, type) of the native table the spec's DDL creates."""
    with duckdb.connect() as con:
        con.execute(spec.duckdb_ddl())
        return [(r[0], r[1]) for r in con.execute(f'DESCRIBE "{spec.name}"').fetchall()]


def view_columns(wh: Path, name: str) -> list[tuple[str, str]]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return [(r[0], r[1]) for r in con.execute(f'DESCRIBE "{name}"').fetchall()]


def renamed(table: pa.Table, source_file: str) -> pa.Table:
    """``table`` with every row's ``source_file`` set to ``source_file``."""
    i = table.column_names.index("source_file")
    return table.set_column(i, "source_file", pa.array([source_file] * len(table)))


def to_earlier_version(wh: Path) -> None:
    """Make the warehouse as earlier versions left it: native tables holding the rows
    of the Parquet (created by the tables' DDL, filled from the published files)."""
    with duckdb.connect(str(wh / "warehouse.duckdb")) as con:
        for spec in PARQUET_TABLES:
            con.execute(f'DROP VIEW "{spec.name}"')
            con.execute(spec.duckdb_ddl())
            if list((wh / "parquet" / spec.name).glob("date=*/*.parquet")):
                pattern = str(wh / "parquet" / spec.name / "date=*" / "*.parquet")
                con.execute(
                    f'INSERT INTO "{spec.name}" BY NAME SELECT * FROM '
                    "read_parquet(?, hive_partitioning=false)",
                    [pattern],
                )


def test_parquet_tables_are_views_with_the_ddl_columns_and_types(built: tuple[Path, Path]) -> None:
    _, wh = built
    want = {spec.name: "VIEW" for spec in PARQUET_TABLES} | {
        PROCESSED_FILES.name: "BASE TABLE",
        "schema_versions": "BASE TABLE",  # services/beam_launcher/warehouse/schema_versions.py
    }
    assert kinds(wh) == want
    for spec in PARQUET_TABLES:
        assert view_columns(wh, spec.name) == ddl_columns(spec), spec.name
    n = counts(wh)
    in_files = parquet_counts(wh)
    assert {t: n[t] for t in in_files} == in_files
    assert in_files["echo_scan"] and in_files["satellite_scan"] and in_files["dead_letter"]
    assert all(n[s.name] == 0 for s in PARQUET_TABLES if s.name not in in_files)
    # the DuckDB file holds the ledger only: no row of the scan tables is stored in it
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        native = con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary")
        assert sorted(r[0] for r in native.fetchall()) == [PROCESSED_FILES.name, "schema_versions"]


def test_empty_warehouse_has_empty_views_of_the_same_columns(tmp_path: Path) -> None:
    LocalWarehouse(tmp_path).ensure_tables()
    for spec in PARQUET_TABLES:
        assert view_columns(tmp_path, spec.name) == ddl_columns(spec)
    assert set(counts(tmp_path).values()) == {0}
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        got = con.execute("SELECT count(*), count(DISTINCT domain) FROM http_scan").fetchone()
    assert got == (0, 0)


def test_moved_warehouse_is_repointed_by_its_next_write(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, base = built
    first = copy_of(base, tmp_path / "first")
    LocalWarehouse(first).ensure_tables()
    moved = copy_of(first, tmp_path / "moved")
    shutil.rmtree(first)
    # until a write, the views name the old place: reading says so, it does not go quiet
    with pytest.raises(duckdb.IOException, match=str(first)):
        counts(moved)
    LocalWarehouse(moved).ensure_tables()
    assert counts(moved) == counts(base)
    with duckdb.connect(str(moved / "warehouse.duckdb"), read_only=True) as con:
        (sql,) = con.execute(
            "SELECT sql FROM duckdb_views() WHERE view_name = 'echo_scan'"
        ).fetchone()  # type: ignore[misc]
    assert str(moved / "parquet" / "echo_scan") in sql and str(first) not in sql


def test_native_tables_of_an_earlier_version_become_views(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, base = built
    wh = copy_of(base, tmp_path / "old")
    LocalWarehouse(wh).ensure_tables()  # repointed to the copy
    want = rows(wh)
    to_earlier_version(wh)
    assert set(kinds(wh).values()) == {"BASE TABLE"}
    assert rows(wh) == want
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from services.beam_launcher.warehouse.local import LocalWarehouse; "
            "LocalWarehouse(sys.argv[1]).ensure_tables()",
            str(wh),
        ],
        cwd=REPO,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    converted = {
        line["table"]: line["rows"]
        for line in json_lines(proc.stderr)
        if line.get("message") == "warehouse_table_to_view"
    }
    assert converted == {s.name: counts(base)[s.name] for s in PARQUET_TABLES}
    assert kinds(wh) == kinds(base)
    assert rows(wh) == want


def test_native_table_with_other_rows_is_refused_until_a_full_rebuild(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    scans, base = built
    wh = copy_of(base, tmp_path / "old")
    LocalWarehouse(wh).ensure_tables()
    to_earlier_version(wh)
    n = counts(base)["echo_scan"]
    with duckdb.connect(str(wh / "warehouse.duckdb")) as con:
        con.execute("INSERT INTO echo_scan SELECT * FROM echo_scan LIMIT 1")
    ledger_before = rows(wh)["processed_files"]
    # a changed input file makes the next run write
    inp = copy_of(scans, tmp_path / "in")
    (echo,) = [p for p in inp.glob("CP_Quack-echo-*/*") if p.is_file()]
    os.utime(echo, (1_700_000_000, 1_700_000_000))

    failed = launcher("--input", str(inp), "--warehouse", str(wh))
    assert failed.returncode == 1, failed.stderr[-3000:]
    lines = json_lines(failed.stderr)
    mismatch = [x for x in lines if x.get("message") == "warehouse_table_mismatch"]
    assert [x["table"] for x in mismatch] == ["echo_scan"]
    last = lines[-1]
    assert last["message"] == "run_failed"
    for part in ("echo_scan", f"holding {n + 1} rows", f"holds {n}", "--full"):
        assert part in last["reason"], last["reason"]
    kind = kinds(wh)
    assert kind.pop("echo_scan") == "BASE TABLE"  # left as it was, the others converted
    assert set(kind.values()) == {"VIEW", "BASE TABLE"}
    assert rows(wh)["processed_files"] == ledger_before  # nothing committed
    assert list((wh / "publishing").glob("*")) == []

    fixed = launcher("--input", str(inp), "--warehouse", str(wh), "--full", "--scan-type", "echo")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    # rebuilt beside (echo_scan__v1_2), switched; the native table is kept as the old
    # version echo_scan__v1 until it is dropped explicitly
    kind = kinds(wh)
    assert (kind.pop("echo_scan__v1"), kind.pop("echo_scan__v1_2")) == ("BASE TABLE", "VIEW")
    assert kind == {**kinds(base), "table_versions": "BASE TABLE", "version_files": "BASE TABLE"}
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM echo_scan__v1").fetchone() == (n + 1,)
    assert counts(wh) == counts(base)
    assert {t: r for t, r in rows(wh).items() if t != "processed_files"} == {
        t: r for t, r in rows(base).items() if t != "processed_files"
    }


def test_killed_after_publishing_the_next_run_refreshes_the_views(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    scans, base = built
    inp = tmp_path / "in"  # Hyperquack only: the rerun has nothing to process
    for scan in scans.glob("CP_Quack-*"):
        shutil.copytree(scan, inp / scan.name)
    wh = tmp_path / "wh"
    killed = launcher("--input", str(inp), "--warehouse", str(wh), CP_TEST_KILL_AT="after_publish")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert parquet_counts(wh)["echo_scan"] == parquet_counts(base)["echo_scan"]
    assert any((wh / "publishing").iterdir())  # what tells the next run to finish

    again = launcher("--input", str(inp), "--warehouse", str(wh))
    assert again.returncode == 0, again.stderr[-3000:]
    assert [x["message"] for x in json_lines(again.stderr) if x["message"] == "no_new_files"]
    assert counts(wh)["echo_scan"] == counts(base)["echo_scan"]
    n = counts(wh)
    assert {t: n[t] for t in parquet_counts(wh)} == parquet_counts(wh)
    assert list((wh / "publishing").iterdir()) == []


def test_unreadable_file_under_parquet_names_its_table_and_file(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, base = built
    wh = copy_of(base, tmp_path / "wh")
    junk = wh / "parquet" / "echo_scan" / "date=2020-11-14" / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(WarehouseUnusable, match="echo_scan") as err:
        LocalWarehouse(wh).refresh_views()
    assert str(junk) in str(err.value)
    junk.unlink()
    LocalWarehouse(wh).refresh_views()
    assert counts(wh) == counts(base)


def test_files_of_older_and_newer_columns_are_read_by_name(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, base = built
    wh = copy_of(base, tmp_path / "wh")
    spec = SCAN_TABLES["echo"]
    (published,) = (wh / "parquet" / spec.name).glob("date=*/*.parquet")
    table = pq.read_table(published)
    dropped = "outcome_rule_id"
    assert dropped in table.column_names and table.column(dropped).null_count < len(table)
    # an older file without a column, a newer one with a column the table does not know
    older = renamed(table.drop_columns([dropped]), "older.json")
    newer = renamed(table, "newer.json")
    newer = newer.append_column("added_later", pa.array(range(len(table)), pa.int64()))
    pq.write_table(older, published.parent / "older__x.parquet")
    pq.write_table(newer, published.parent / "newer__x.parquet")
    LocalWarehouse(wh).refresh_views()
    assert view_columns(wh, spec.name) == ddl_columns(spec)
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        got: dict[Any, tuple[int, int]] = {
            r[0]: (r[1], r[2])
            for r in con.execute(
                f"SELECT source_file, count(*), count({dropped}) FROM echo_scan GROUP BY 1"
            ).fetchall()
        }
    assert got["older.json"] == (len(table), 0)
    assert got["newer.json"] == (len(table), len(table) - table.column(dropped).null_count)

    # a column no file holds is NULL of its type
    for path in (wh / "parquet" / spec.name).glob("date=*/*.parquet"):
        t = pq.read_table(path)
        pq.write_table(t.drop_columns([dropped]) if dropped in t.column_names else t, path)
    LocalWarehouse(wh).refresh_views()
    assert view_columns(wh, spec.name) == ddl_columns(spec)
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        total, non_null = con.execute(
            f"SELECT count(*), count({dropped}) FROM echo_scan"
        ).fetchone()  # type: ignore[misc]
    assert (total, non_null) == (3 * len(table), 0)


def test_full_rebuild_gives_the_same_views(built: tuple[Path, Path], tmp_path: Path) -> None:
    scans, base = built
    wh = copy_of(base, tmp_path / "wh")
    proc = launcher("--input", str(scans), "--warehouse", str(wh), "--full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each scan table with input files is built beside (<table>__v1_2) and switched; the
    # old versions stay as views (<table>__v1) until dropped
    rebuilt = {"echo_scan", "satellite_scan"}
    assert kinds(wh) == {
        **kinds(base),
        **{f"{t}__{v}": "VIEW" for t in rebuilt for v in ("v1", "v1_2")},
        "table_versions": "BASE TABLE",
        "version_files": "BASE TABLE",
    }
    assert {t: r["state"] for t, r in orjson.loads(proc.stdout)["rebuild"].items()} == {
        t: "switched" for t in rebuilt
    }
    assert counts(wh) == counts(base)
    want, got = rows(base), rows(wh)
    for spec in PARQUET_TABLES:
        assert got[spec.name] == want[spec.name], spec.name
