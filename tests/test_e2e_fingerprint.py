"""The launcher's tables equal an independent row-path reference, value for value.

A generated HTTP + HTTPS scan (v1 and v2, with some bad lines) big enough to span many
line batches is run through the launcher (``run`` with a ``RunConfig``, the synthetic
CAIDA reference data of ``sampledata.caida`` mirrored by ``services.routeviews sync``) into a
fresh warehouse; where the launcher has worker processes and file slices, with two workers
and ~1 MiB slices (the files are stored uncompressed in gzip, several MiB each, one of
them as two gzip members split mid-line, the second one deflated). The test computes the
same tables itself from the pure-Python row path:
``HyperquackProcessor(use_native=False).process_lines`` over each whole file, then
``RowEnricher.enrich_hyperquack`` per row, converted with the table's own schema. The
DuckDB tables and the published Parquet files must have the reference's fingerprint: the
row count and, per column, the sum over the rows of a hash of (row key, value), the key
being provenance plus the roundtrip's identity (unique per row). Any single value that
differs, moves to another row, or any row lost or duplicated changes a column sum or the
row count; the test shows that with mutations of the launcher's rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gzip
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sampledata import HYPERQUACK_SCANS, write_scan_archives
from sampledata.caida import write_caida
from services.beam_launcher.enrichment.ip_metadata import RowEnricher
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor
from services.beam_launcher.run import RunConfig, run
from services.beam_launcher.warehouse.rows import DEAD_LETTER, HYPERQUACK_TABLES
from services.common.config import pipeline_version
from services.common.rowschema import TableSpec
from services.common.scans import parse_scan_name
from services.routeviews.__main__ import main as routeviews_main

pytestmark = pytest.mark.slow

SIZE = 2_500  # measurements (lines) per scan: ~29k rows over four scans
BATCH_LINES = 200  # the launcher cuts each file into 13 batches
BAD_LINE_RATIO = 0.01
WORKERS = 2
SLICE_BYTES = 1 << 20
IPMETA_CACHE_ENV = "CP_IPMETA_CACHE"  # parsed CAIDA tables' cache folder, "off": none
SCANS = tuple(s for s in HYPERQUACK_SCANS if s.scan_type in ("http", "https"))
#: Row key: provenance, then what identifies a roundtrip within its measurement.
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


# --- fingerprints ---------------------------------------------------------------------------


def fingerprint(table: pa.Table, spec: TableSpec, key: tuple[str, ...]) -> Fingerprint:
    """(row count, column → sum over the rows of hash(row key, value)).

    The table is first cast to the spec's Arrow schema, so DuckDB's and the schema's own
    types give the same values. A column's hash is a sum, so row order does not matter;
    each term names its row by ``key``, so a value moved to another row counts too.
    """
    columns = spec.column_names
    assert sorted(table.column_names) == sorted(columns), set(table.column_names) ^ set(columns)
    table = table.select(list(columns)).cast(spec.arrow_schema())
    keys = ", ".join(f'"{k}"' for k in key)
    sums = ", ".join(f'sum(hash({keys}, "{c}"))::VARCHAR' for c in columns)
    with duckdb.connect() as con:
        con.register("t", table)
        n, *hashes = con.execute(f"SELECT count(*), {sums} FROM t").fetchone() or ()
    return n, dict(zip(columns, hashes, strict=True))


def distinct_keys(table: pa.Table, key: tuple[str, ...]) -> int:
    """Distinct values of ``key`` in ``table`` (equal to its rows when the key is unique)."""
    with duckdb.connect() as con:
        con.register("t", table)
        keys = ", ".join(f'"{k}"' for k in key)
        row = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM t)").fetchone()
    return int(row[0]) if row else 0


def differences(got: Fingerprint, want: Fingerprint) -> list[str]:
    """What differs between two fingerprints ([] when equal)."""
    out = [] if got[0] == want[0] else [f"rows: {got[0]} != {want[0]}"]
    return out + [f"column {c}" for c in want[1] if got[1].get(c) != want[1][c]]


def with_value(table: pa.Table, column: str, row: int, value: Any) -> pa.Table:
    """``table`` with one value replaced."""
    i = table.column_names.index(column)
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(i, table.field(i), pa.array(values, table.field(i).type))


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
        lines = gzip.decompress(path.read_bytes()).split(b"\n")  # lines end at \n only
        if lines and not lines[-1]:
            lines.pop()  # the file ended with a newline
        out = processor.process_lines(task, 1, lines)
        ip_stats: dict[str, int] = {}
        for row in out.rows:
            enricher.enrich_hyperquack(row, ip_stats)
        tables.setdefault(HYPERQUACK_TABLES[scan.scan_type].name, []).extend(out.rows)
        dead.extend(out.dead_letters)
        stats[task.file_key] = out.stats + Counter(ip_stats)
    return tables, dead, stats


# --- the test -------------------------------------------------------------------------------


@contextlib.contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """``$name`` set to ``value`` for the block (worker processes inherit it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def parallel_options() -> dict[str, Any]:
    """Two worker processes and files cut into slices of ~1 MiB, where the launcher has
    these options (``RunConfig.workers`` / ``slice_bytes`` of the multi-process graph);
    a launcher without them runs the files in one process."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    wanted = {"workers": WORKERS, "slice_bytes": SLICE_BYTES}
    return {k: v for k, v in wanted.items() if k in names}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fingerprint")
    # Level 0 (stored deflate blocks): files of several MiB, so slices of a file start at
    # different byte offsets; one file is rewritten as two gzip members split mid-line
    # (the second one deflated).
    written = write_scan_archives(
        root / "sample", SCANS, size=SIZE, bad_line_ratio=BAD_LINE_RATIO, compresslevel=0
    )
    assert written.bad_lines > 0
    two_members = next((root / "sample" / "scans").glob("CP_Quack-https-2021-*/results.json.gz"))
    text = gzip.decompress(two_members.read_bytes())
    cut = text.index(b"\n", len(text) // 2) - 10
    two_members.write_bytes(
        gzip.compress(text[:cut], compresslevel=0, mtime=0)
        + gzip.compress(text[cut:], compresslevel=1, mtime=0)
    )
    write_caida(root / "caida", SCANS, SIZE, 0)
    meta = root / "ipmeta"
    sync = ["sync", "--base-url", str(root / "caida"), "--dest", str(meta)]
    assert routeviews_main([*sync, "--snapshot-days", "36500", "--log-level", "ERROR"]) == 0
    wh = root / "warehouse"
    # The launcher parses the reference files into its own (new) cache folder; the
    # reference reads them with the cache off, so a cache fault cannot agree with itself.
    with environ(IPMETA_CACHE_ENV, str(root / "ipmeta-cache")):
        summary = run(
            RunConfig(
                input=str(root / "sample" / "scans"),
                warehouse=str(wh),
                ip_metadata=str(meta),
                batch_lines=BATCH_LINES,
                **parallel_options(),
            )
        )
    with environ(IPMETA_CACHE_ENV, "off"):
        tables, dead, stats = reference(root / "sample" / "scans", meta)
    return {
        "wh": wh,
        "scans": root / "sample" / "scans",
        "summary": summary,
        "tables": tables,
        "dead": dead,
        "stats": stats,
    }


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
    sizes = [p.stat().st_size for p in runs["scans"].glob("*/results.json.gz")]
    assert len(sizes) == len(SCANS) and min(sizes) > 3 * SLICE_BYTES


@pytest.mark.parametrize("scan_type", ["http", "https"])
def test_scan_tables_equal_the_row_path(runs: dict[str, Any], scan_type: str) -> None:
    spec = HYPERQUACK_TABLES[scan_type]
    reference = spec.to_arrow(runs["tables"][spec.name])
    assert reference.num_rows > 10_000
    assert distinct_keys(reference, KEY_COLUMNS) == reference.num_rows  # the key names a row
    want = fingerprint(reference, spec, KEY_COLUMNS)
    for where, table in (
        ("duckdb", duckdb_table(runs["wh"], spec)),
        ("parquet", parquet_table(runs["wh"], spec)),
    ):
        got = fingerprint(table, spec, KEY_COLUMNS)
        assert not differences(got, want), f"{spec.name} in {where}: {differences(got, want)}"


def test_dead_letters_equal_the_row_path(runs: dict[str, Any]) -> None:
    reference = DEAD_LETTER.to_arrow(runs["dead"])
    assert reference.num_rows > 0
    assert distinct_keys(reference, DEAD_KEY) == reference.num_rows
    want = fingerprint(reference, DEAD_LETTER, DEAD_KEY)
    for where, table in (
        ("duckdb", duckdb_table(runs["wh"], DEAD_LETTER)),
        ("parquet", parquet_table(runs["wh"], DEAD_LETTER)),
    ):
        got = fingerprint(table, DEAD_LETTER, DEAD_KEY)
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
    """Mutations of the launcher's own table: each one is seen, and named precisely."""
    spec = HYPERQUACK_TABLES["https"]
    table = duckdb_table(runs["wh"], spec).select(list(spec.column_names))
    table = table.cast(spec.arrow_schema())
    base = fingerprint(table, spec, KEY_COLUMNS)
    middle = table.num_rows // 2
    for column, change in (
        ("received_tls_cert_issuer", lambda v: v[:-1] + ("0" if v[-1] != "0" else "1")),
        ("server_asn", lambda v: v + 1),
        ("received_body", lambda v: v[:-1] + ("0" if v[-1] != "0" else "1")),
        ("received_tls_cert", lambda v: v[:-1] + bytes([v[-1] ^ 1])),
        ("start_time", lambda v: v + dt.timedelta(microseconds=1)),
        ("received_headers", lambda v: [*v[:-1], v[-1] + " "]),
        ("matches_template", lambda v: not v),
    ):
        values = table.column(column).to_pylist()
        row = next(j for j in range(middle, table.num_rows) if values[j])
        changed = with_value(table, column, row, change(values[row]))
        found = differences(fingerprint(changed, spec, KEY_COLUMNS), base)
        if column in KEY_COLUMNS:  # the row's key changed: every column's term for it
            assert len(found) == len(spec.column_names)
        else:
            assert found == [f"column {column}"]
        # A value that becomes NULL, and "" where NULL was: seen too.
        if column == "received_tls_cert_issuer":
            nulled = with_value(table, column, row, None)
            assert differences(fingerprint(nulled, spec, KEY_COLUMNS), base) == [f"column {column}"]
            empty_at = values.index(None)
            emptied = with_value(table, column, empty_at, "")
            assert differences(fingerprint(emptied, spec, KEY_COLUMNS), base)
    # Two rows' values of one column swapped: the same multiset, still caught.
    status = table.column("received_status").to_pylist()
    a = next(j for j, v in enumerate(status) if v is not None)
    b = next(j for j in range(a + 1, len(status)) if status[j] not in (status[a], None))
    swapped = with_value(
        with_value(table, "received_status", a, status[b]), "received_status", b, status[a]
    )
    assert "column received_status" in differences(fingerprint(swapped, spec, KEY_COLUMNS), base)
    lost = pa.concat_tables([table.slice(0, middle), table.slice(middle + 1)])
    assert differences(fingerprint(lost, spec, KEY_COLUMNS), base)[0].startswith("rows: ")
    extra = pa.concat_tables([table, table.slice(middle, 1)])
    assert differences(fingerprint(extra, spec, KEY_COLUMNS), base)[0].startswith("rows: ")
    # Row order does not matter.
    reordered = table.take(pa.array(range(table.num_rows - 1, -1, -1)))
    assert fingerprint(reordered, spec, KEY_COLUMNS) == base
