"""The launcher's tables equal an independent row-path reference, value for value.

A generated HTTP + HTTPS scan (v1 and v2, with some bad lines) big enough to span many
line batches is run through the launcher (``run`` with a ``RunConfig``, the synthetic
CAIDA reference data of ``sample_caida`` mirrored by ``services.routeviews sync``) into a
fresh warehouse. The test computes the same tables itself from the pure-Python row path:
``HyperquackProcessor(use_native=False).process_lines`` over each whole file, then
``RowEnricher.enrich_hyperquack`` per row, converted with the table's own schema. The
DuckDB tables and the published Parquet files must have the reference's fingerprint: the
rows sorted by a stable key (provenance, then the roundtrip's identity, then the whole
row), each column's values hashed in that order. Any single value that differs, any row
lost or duplicated changes a column hash or the row count; the test shows that with
mutations of the launcher's rows.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.beam_launcher.enrich import RowEnricher
from services.beam_launcher.processing import FileTask, HyperquackProcessor
from services.beam_launcher.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.rows import DEAD_LETTER, HYPERQUACK_TABLES
from services.beam_launcher.run import RunConfig, run
from services.common.config import pipeline_version
from services.common.rowschema import TableSpec
from services.common.sample_caida import write_caida
from services.common.sample_scans import HYPERQUACK_SCANS, write_scan_archives
from services.common.scans import parse_scan_name
from services.routeviews.__main__ import main as routeviews_main

pytestmark = pytest.mark.slow

SIZE = 2_500  # measurements (lines) per scan: ~29k rows over four scans
BATCH_LINES = 200  # the launcher cuts each file into 13 batches
BAD_LINE_RATIO = 0.01
SCANS = tuple(s for s in HYPERQUACK_SCANS if s.scan_type in ("http", "https"))
#: Sort key: provenance, then what identifies a roundtrip within its measurement.
KEY_COLUMNS = (
    "source",
    "source_file",
    "source_line",
    "domain_is_control",
    "retry",
    "start_time",
    "end_time",
    "domain",
)
DEAD_KEY = ("source", "source_file", "source_line", "stage", "error_class")

Fingerprint = tuple[int, dict[str, str]]


# --- canonical values and fingerprints ------------------------------------------------------


def canonical(value: Any) -> str:
    """One text form per value, whichever Arrow type (DuckDB's or the schema's) held it."""
    if value is None:
        return "\x00null"
    if isinstance(value, bool):
        return f"b:{value}"
    if isinstance(value, int | float):
        return f"n:{value!r}"
    if isinstance(value, str):
        return f"s:{value}"
    if isinstance(value, bytes):
        return f"x:{value.hex()}"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return f"t:{value.astimezone(dt.UTC).isoformat()}"
    if isinstance(value, dt.date):
        return f"d:{value.isoformat()}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={canonical(v)}" for k, v in sorted(value.items())) + "}"
    raise TypeError(f"no canonical form for {type(value).__name__}: {value!r}")


def canonical_rows(table: pa.Table, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The table's rows as tuples of canonical values, in ``columns`` order."""
    assert sorted(table.column_names) == sorted(columns), set(table.column_names) ^ set(columns)
    data = [table.column(c).to_pylist() for c in columns]
    return [tuple(canonical(col[i]) for col in data) for i in range(table.num_rows)]


def fingerprint(
    rows: list[tuple[str, ...]], columns: tuple[str, ...], key: tuple[str, ...]
) -> Fingerprint:
    """(row count, column → hash of its values with the rows in key order)."""
    index = [columns.index(k) for k in key]
    ordered = sorted(rows, key=lambda r: (tuple(r[i] for i in index), r))
    hashes = {}
    for i, name in enumerate(columns):
        h = hashlib.sha256()
        for row in ordered:
            h.update(row[i].encode())
            h.update(b"\x1f")
        hashes[name] = h.hexdigest()
    return len(rows), hashes


def differences(got: Fingerprint, want: Fingerprint) -> list[str]:
    """What differs between two fingerprints ([] when equal)."""
    out = [] if got[0] == want[0] else [f"rows: {got[0]} != {want[0]}"]
    return out + [f"column {c}" for c in want[1] if got[1].get(c) != want[1][c]]


# --- reading what the launcher wrote --------------------------------------------------------


def duckdb_table(wh: Path, spec: TableSpec) -> pa.Table:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(f'SELECT * FROM "{spec.name}"').to_arrow_table()


def parquet_table(wh: Path, spec: TableSpec) -> pa.Table:
    files = sorted((wh / "parquet" / spec.name).rglob("*.parquet"))
    schema = spec.arrow_schema()
    parts = [pq.read_table(f).select(list(spec.column_names)).cast(schema) for f in files]
    return pa.concat_tables(parts) if parts else schema.empty_table()


# --- the reference --------------------------------------------------------------------------


def reference(
    scans_dir: Path, meta: Path
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Counter[str]]]:
    """Rows per table, dead letters and stats per file from the pure-Python row path."""
    processor = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)), use_native=False)
    assert not processor.native
    enricher = RowEnricher(str(meta))
    version = pipeline_version()
    tables: dict[str, list[dict[str, Any]]] = {}
    dead: list[dict[str, Any]] = []
    stats: dict[str, Counter[str]] = {}
    for path in sorted(scans_dir.glob("*/results.json.gz")):
        scan = parse_scan_name(path.parent.name)
        task = FileTask(
            url=str(path),
            source=scan.source,
            source_file="results.json",
            scan_type=scan.scan_type,
            scan_date=scan.date.isoformat(),
            size=path.stat().st_size,
            version=None,
            pipeline_version=version,
        )
        out = processor.process_lines(task, 1, gzip.decompress(path.read_bytes()).splitlines())
        ip_stats: dict[str, int] = {}
        for row in out.rows:
            enricher.enrich_hyperquack(row, ip_stats)
        tables.setdefault(HYPERQUACK_TABLES[scan.scan_type].name, []).extend(out.rows)
        dead.extend(out.dead_letters)
        stats[task.file_key] = out.stats + Counter(ip_stats)
    return tables, dead, stats


# --- the test -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fingerprint")
    written = write_scan_archives(
        root / "sample", SCANS, size=SIZE, bad_line_ratio=BAD_LINE_RATIO, compresslevel=1
    )
    assert written.bad_lines > 0
    write_caida(root / "caida", SCANS, SIZE, 0)
    meta = root / "ipmeta"
    sync = ["sync", "--base-url", str(root / "caida"), "--dest", str(meta)]
    assert routeviews_main([*sync, "--snapshot-days", "36500", "--log-level", "ERROR"]) == 0
    wh = root / "warehouse"
    summary = run(
        RunConfig(
            input=str(root / "sample" / "scans"),
            warehouse=str(wh),
            ip_metadata=str(meta),
            batch_lines=BATCH_LINES,
        )
    )
    tables, dead, stats = reference(root / "sample" / "scans", meta)
    return {"wh": wh, "summary": summary, "tables": tables, "dead": dead, "stats": stats}


def test_reference_is_enriched_and_spans_many_batches(runs: dict[str, Any]) -> None:
    """The comparison means something: rows carry IP metadata, lines span many batches."""
    rows = [r for t in runs["tables"].values() for r in t]
    assert len(rows) > 25_000
    assert sum(r["server_asn"] is not None for r in rows) == len(rows)
    assert len({r["server_country"] for r in rows}) > 10
    assert runs["dead"], "the sample's bad lines must reach dead_letter"
    lines = sum(s["lines"] for s in runs["stats"].values())
    assert lines >= len(SCANS) * SIZE * 0.99
    assert runs["summary"].stats["lines"] == lines
    assert SIZE / BATCH_LINES >= 10


@pytest.mark.parametrize("scan_type", ["http", "https"])
def test_scan_tables_equal_the_row_path(runs: dict[str, Any], scan_type: str) -> None:
    spec = HYPERQUACK_TABLES[scan_type]
    columns = spec.column_names
    want = fingerprint(
        canonical_rows(spec.to_arrow(runs["tables"][spec.name]), columns), columns, KEY_COLUMNS
    )
    for where, table in (
        ("duckdb", duckdb_table(runs["wh"], spec)),
        ("parquet", parquet_table(runs["wh"], spec)),
    ):
        got = fingerprint(canonical_rows(table, columns), columns, KEY_COLUMNS)
        assert not differences(got, want), f"{spec.name} in {where}: {differences(got, want)}"


def test_dead_letters_equal_the_row_path(runs: dict[str, Any]) -> None:
    columns = DEAD_LETTER.column_names
    want = fingerprint(
        canonical_rows(DEAD_LETTER.to_arrow(runs["dead"]), columns), columns, DEAD_KEY
    )
    for where, table in (
        ("duckdb", duckdb_table(runs["wh"], DEAD_LETTER)),
        ("parquet", parquet_table(runs["wh"], DEAD_LETTER)),
    ):
        got = fingerprint(canonical_rows(table, columns), columns, DEAD_KEY)
        assert not differences(got, want), f"dead_letter in {where}: {differences(got, want)}"


def test_processed_files_count_what_the_row_path_counts(runs: dict[str, Any]) -> None:
    with duckdb.connect(str(runs["wh"] / "warehouse.duckdb"), read_only=True) as con:
        got = {
            key: (status, lines, rows, dead)
            for key, status, lines, rows, dead in con.execute(
                "SELECT file_key, status, lines, rows_written, dead_letters FROM processed_files"
            ).fetchall()
        }
    want = {
        key: ("ok", s["lines"], s["rows"], s["dead_letters"]) for key, s in runs["stats"].items()
    }
    assert got == want


def test_fingerprint_catches_one_changed_value_and_lost_or_extra_rows(
    runs: dict[str, Any],
) -> None:
    """Mutations of the launcher's own rows: each one is seen, and named precisely."""
    spec = HYPERQUACK_TABLES["https"]
    columns = spec.column_names
    rows = canonical_rows(duckdb_table(runs["wh"], spec), columns)
    base = fingerprint(rows, columns, KEY_COLUMNS)
    middle = len(rows) // 2
    for column in ("received_tls_cert_issuer", "server_asn", "outcome", "received_body"):
        i = columns.index(column)
        target = next(j for j in range(middle, len(rows)) if rows[j][i] != "\x00null")
        changed = list(rows)
        value = changed[target][i]
        new = value[:-1] + ("0" if value[-1] != "0" else "1")  # one character differs
        changed[target] = (*rows[target][:i], new, *rows[target][i + 1 :])
        assert differences(fingerprint(changed, columns, KEY_COLUMNS), base) == [f"column {column}"]
    # A value moved to another row of the same column: same multiset, still caught.
    i = columns.index("received_status")
    a = next(j for j in range(len(rows)) if rows[j][i] != "\x00null")
    b = next(j for j in range(a + 1, len(rows)) if rows[j][i] not in (rows[a][i], "\x00null"))
    swapped = list(rows)
    swapped[a] = (*rows[a][:i], rows[b][i], *rows[a][i + 1 :])
    swapped[b] = (*rows[b][:i], rows[a][i], *rows[b][i + 1 :])
    assert "column received_status" in differences(fingerprint(swapped, columns, KEY_COLUMNS), base)
    lost = fingerprint(rows[:middle] + rows[middle + 1 :], columns, KEY_COLUMNS)
    assert differences(lost, base)[0] == f"rows: {len(rows) - 1} != {len(rows)}"
    extra = fingerprint([*rows, rows[middle]], columns, KEY_COLUMNS)
    assert differences(extra, base)[0] == f"rows: {len(rows) + 1} != {len(rows)}"
    # Row order does not matter.
    assert fingerprint(rows[::-1], columns, KEY_COLUMNS) == base


def test_canonical_forms_are_distinct_per_type() -> None:
    values = [None, "", "None", True, 1, 1.0, "1", b"1", [1], ["1"], dt.date(2021, 5, 30)]
    assert len({canonical(v) for v in values}) == len(values)
    aware = dt.datetime(2021, 5, 30, 9, 2, 33, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    assert canonical(aware) == canonical(dt.datetime(2021, 5, 30, 13, 2, 33))
    assert json.loads(json.dumps(canonical(b"\x00\xff"))) == "x:00ff"
