"""The BigQuery path executed: launcher (``--sink bigquery``) and queries service against a
real BigQuery REST API (bqemulator, tests/bq_server.py), compared with the DuckDB path.

Each scenario runs both sinks in lockstep on the same input and compares every table
(order-insensitive, values normalised per column type). Gaps of the emulator are in
``tests.bq_server.GAPS``; each test meeting one names it.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import io
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import sqlglot
from google.api_core.exceptions import BadRequest
from google.cloud import bigquery
from sqlglot import exp

import sampledata as ss
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.run import RunConfig, RunSummary, run
from services.beam_launcher.warehouse.bigquery import (
    SWITCH_REFUSAL,
    BigQueryWarehouse,
    commit_script,
    schema_fields,
    staging_table,
)
from services.beam_launcher.warehouse.local import FileVerdict
from services.beam_launcher.warehouse.rows import (
    ALL_TABLES,
    DEAD_LETTER,
    HYPERQUACK_TABLES,
    PROCESSED_FILES,
)
from services.common.rowschema import Column, TableSpec
from services.queries.backends import BigQueryBackend
from services.queries.run import QueriesConfig, QueriesSummary
from services.queries.run import run as run_queries
from tests.bq_server import GAPS, PROJECT, BigQueryServer, emulator_environment
from tests.conftest import REAL, REAL_RESOURCES, build_real_input, build_real_satellite_input

pytestmark = pytest.mark.slow

TIMEOUT_S = 60.0
IGNORED = {PROCESSED_FILES.name: {"run_id", "processed_at"}}  # differ between any two runs
DERIVED = ("merged_reduced_scans", "country_names")


# -- helpers -------------------------------------------------------------------------------


def _norm(col: Column, value: Any, loaded_bytes: bool = False) -> Any:
    """``loaded_bytes``: a BYTES value the emulator loaded from JSON (GAPS["json_bytes"])."""
    if col.mode == "REPEATED":
        item = Column(col.name, col.type, col.description, "NULLABLE", col.fields)
        return [_norm(item, v, loaded_bytes) for v in value or []]
    if value is None:
        return None
    if col.type in ("RECORD", "STRUCT"):
        return {f.name: _norm(f, value.get(f.name), loaded_bytes) for f in col.fields}
    if col.type == "BYTES" and loaded_bytes:
        return base64.b64decode(bytes(value), validate=True).hex()
    if col.type == "TIMESTAMP":
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat()
    if col.type == "DATE":
        return value.isoformat()[:10]
    if col.type == "BYTES":
        return bytes(value).hex()
    if col.type in ("FLOAT", "FLOAT64"):
        return float(value)
    if col.type in ("INTEGER", "INT64"):
        return int(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def normalised(
    spec: TableSpec, rows: list[dict[str, Any]], loaded_bytes: bool = False
) -> list[bytes]:
    """Rows as sorted canonical JSON (columns in ``IGNORED`` dropped)."""
    skip = IGNORED.get(spec.name, set())
    out = [
        orjson.dumps(
            {
                c.name: _norm(c, r.get(c.name), loaded_bytes)
                for c in spec.columns
                if c.name not in skip
            },
            option=orjson.OPT_SORT_KEYS,
        )
        for r in rows
    ]
    return sorted(out)


def _first_diff(remote: list[bytes], local: list[bytes]) -> str:
    """The first differing row and the columns that differ (for the failure message)."""
    if len(remote) != len(local):
        return f"{len(remote)} rows vs {len(local)}"
    for mine, theirs in zip(remote, local, strict=True):
        if mine != theirs:
            a, b = orjson.loads(mine), orjson.loads(theirs)
            cols = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            return f"row {a.get('measurement_id') or a.get('file_key')}: {cols}"
    return "equal"


def duck_rows(warehouse: Path, table: str, schema: str = "main") -> list[dict[str, Any]]:
    con = duckdb.connect(str(warehouse / "warehouse.duckdb"), read_only=True)
    try:
        cur = con.execute(f'SELECT * FROM "{schema}"."{table}"')
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def bq_rows(client: Any, dataset: str, table: str) -> list[dict[str, Any]]:
    job = client.query(f"SELECT * FROM `{PROJECT}.{dataset}.{table}`")
    return [dict(r.items()) for r in job.result(timeout=TIMEOUT_S)]


def write_scan(root: Path, spec: ss.ScanSpec, size: int, seed: int) -> list[Path]:
    """One generated scan in the launcher's input layout (``<scan>/<file>.json.gz``)."""
    members, _, _ = ss.build_scan_files(spec, size, seed, bad_line_ratio=0.05)
    folder = root / ss.source_name(spec.scan_type, spec.start)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in members.items():
        if name.endswith(".json"):
            path = folder / f"{name}.gz"
            path.write_bytes(gzip.compress(data, mtime=0))
            paths.append(path)
    return paths


@dataclass
class Pair:
    """One input folder run by both sinks: DuckDB warehouse and a BigQuery dataset."""

    server: BigQueryServer
    input: Path
    warehouse: Path
    dataset: str
    bucket: str
    resources: str | None = None
    client: Any = None
    launches: list[tuple[RunSummary, RunSummary]] = field(default_factory=list)

    def config(self, sink: str) -> RunConfig:
        cfg = RunConfig(
            input=str(self.input),
            warehouse=str(self.warehouse) if sink == "local" else "",
            sink=sink,
            bq_project=PROJECT if sink == "bigquery" else None,
            bq_dataset=self.dataset if sink == "bigquery" else None,
            temp_location=f"gs://{self.bucket}/tmp" if sink == "bigquery" else None,
            bad_line_threshold=0.5,
        )
        if self.resources:
            cfg.resources = self.resources
        return cfg

    def launch(self) -> tuple[RunSummary, RunSummary]:
        local = run(self.config("local"))
        remote = run(self.config("bigquery"))
        self.launches.append((local, remote))
        return local, remote

    def tables(self, spec: TableSpec) -> tuple[list[bytes], list[bytes]]:
        return (
            normalised(spec, duck_rows(self.warehouse, spec.name)),
            normalised(spec, bq_rows(self.client, self.dataset, spec.name), loaded_bytes=True),
        )

    def assert_equal(self) -> dict[str, list[bytes]]:
        """Every launcher table equal on both sinks; returns the BigQuery side."""
        snapshot = {}
        for spec in ALL_TABLES:
            local, remote = self.tables(spec)
            assert remote == local, f"{spec.name}: BigQuery ≠ DuckDB: {_first_diff(remote, local)}"
            snapshot[spec.name] = remote
        return snapshot

    def queries(self, derived: str) -> tuple[QueriesSummary, QueriesSummary]:
        local = run_queries(QueriesConfig(warehouse=str(self.warehouse), quality=False))
        backend = BigQueryBackend(
            PROJECT,
            {"base": self.dataset, "derived": derived},
            client=self.server.client(),
            timeout_s=TIMEOUT_S,
        )
        remote = run_queries(
            QueriesConfig(
                backend="bigquery",
                bq_project=PROJECT,
                base_dataset=self.dataset,
                derived_dataset=derived,
                quality=False,
            ),
            backend=backend,
        )
        return local, remote


def make_pair(server: BigQueryServer, root: Path) -> Pair:
    client = server.gcs_client()
    bucket = f"tmp-{secrets.token_hex(4)}"
    client.create_bucket(bucket)
    pair = Pair(
        server=server,
        input=root / "input",
        warehouse=root / "warehouse",
        dataset=f"base_{secrets.token_hex(4)}",
        bucket=bucket,
        client=server.client(),
    )
    pair.input.mkdir(parents=True)
    return pair


def sources_of(rows: list[bytes], source: str, present: bool = True) -> list[bytes]:
    return [r for r in rows if (orjson.loads(r).get("source") == source) == present]


# -- launcher on the generated sample scans --------------------------------------------------

NEW_SCAN = ss.ScanSpec("echo", 2, dt.datetime(2021, 6, 2, 2, 0, 0, tzinfo=dt.UTC))
CHANGED = ss.HYPERQUACK_SCANS[6]  # http v2


@dataclass
class SampleFlow:
    pair: Pair
    first: dict[str, list[bytes]]
    rerun: dict[str, list[bytes]]
    added: dict[str, list[bytes]]
    changed: dict[str, list[bytes]]
    queries: list[tuple[QueriesSummary, QueriesSummary]]
    derived: list[dict[str, tuple[list[bytes], list[bytes]]]]
    queries_gap: str  # the emulator's error when the queries service could not finish


def _derived_tables(pair: Pair, derived: str) -> dict[str, tuple[list[bytes], list[bytes]]]:
    from services.queries.tables import DERIVED_TABLES

    specs = {s.name: s for s in DERIVED_TABLES}
    return {
        name: (
            normalised(specs[name], duck_rows(pair.warehouse, name, "derived")),
            normalised(specs[name], bq_rows(pair.client, derived, name)),
        )
        for name in DERIVED
    }


@pytest.fixture(scope="module")
def sample_flow(
    bq_server: BigQueryServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SampleFlow]:
    """Sample scans through both sinks: first run, rerun, one new file, one changed file;
    the queries service after the first run and after the new file."""
    with emulator_environment(bq_server):
        pair = make_pair(bq_server, tmp_path_factory.mktemp("bq-sample"))
        for i, spec in enumerate((*ss.HYPERQUACK_SCANS, *ss.SATELLITE_SCANS)):
            write_scan(pair.input, spec, 40, seed=i)
        derived = f"derived_{secrets.token_hex(4)}"
        pair.launch()
        first = pair.assert_equal()
        queries: list[tuple[QueriesSummary, QueriesSummary]] = []
        tables: list[dict[str, tuple[list[bytes], list[bytes]]]] = []
        queries_gap = ""
        try:
            queries.append(pair.queries(derived))
        except BadRequest as exc:  # recorded; the queries tests name it
            if "Function not found" not in str(exc):
                raise
            queries_gap = str(exc).splitlines()[0]
        tables.append(_derived_tables(pair, derived))
        pair.launch()
        rerun = pair.assert_equal()
        write_scan(pair.input, NEW_SCAN, 30, seed=99)
        pair.launch()
        added = pair.assert_equal()
        if not queries_gap:
            queries.append(pair.queries(derived))
            tables.append(_derived_tables(pair, derived))
        write_scan(pair.input, CHANGED, 25, seed=77)  # same file names, new content
        pair.launch()
        changed = pair.assert_equal()
        yield SampleFlow(pair, first, rerun, added, changed, queries, tables, queries_gap)


def test_tables_created_partitioned_and_clustered_as_declared(sample_flow: SampleFlow) -> None:
    pair = sample_flow.pair
    for spec in ALL_TABLES:
        table = pair.client.get_table(f"{PROJECT}.{pair.dataset}.{spec.name}", timeout=TIMEOUT_S)
        assert [f.name for f in table.schema] == list(spec.column_names)
        if spec.partition_field:
            assert table.time_partitioning.field == spec.partition_field
        else:
            assert table.time_partitioning is None
        assert list(table.clustering_fields or ()) == list(spec.clustering)
    names = [t.table_id for t in pair.client.list_tables(f"{PROJECT}.{pair.dataset}")]
    assert not [n for n in names if n.startswith("_staging_")], "staging tables left behind"


def test_first_run_equals_duckdb_with_ledger_and_dead_letters(sample_flow: SampleFlow) -> None:
    first = sample_flow.first  # assert_equal() already compared every table
    local, remote = sample_flow.pair.launches[0]
    assert remote.files_processed == local.files_processed == local.files_found == 13
    assert remote.stats["rows"] == local.stats["rows"] > 0
    for spec in HYPERQUACK_TABLES.values():
        assert len(first[spec.name]) > 0, spec.name
    assert len(first[DEAD_LETTER.name]) == remote.stats["dead_letters"] > 0
    ledger = [orjson.loads(r) for r in first[PROCESSED_FILES.name]]
    assert len({r["file_key"] for r in ledger}) == len(ledger)
    ok = [r for r in ledger if r["status"] == "ok"]
    assert len(ok) == remote.files_processed
    assert {r["status"] for r in ledger} <= {"ok", "skipped"}  # a file a scan should not hold
    assert sum(r["rows_written"] for r in ledger) == remote.stats["rows"]


def test_rerun_changes_nothing(sample_flow: SampleFlow) -> None:
    local, remote = sample_flow.pair.launches[1]
    assert remote.files_processed == local.files_processed == 0
    assert remote.files_skipped_unchanged == local.files_skipped_unchanged == 13
    assert sample_flow.rerun == sample_flow.first


def test_new_file_adds_only_its_rows(sample_flow: SampleFlow) -> None:
    local, remote = sample_flow.pair.launches[2]
    assert remote.files_processed == local.files_processed == 1
    new = ss.source_name(NEW_SCAN.scan_type, NEW_SCAN.start)
    for name, rows in sample_flow.added.items():
        assert sources_of(rows, new, present=False) == sample_flow.first[name], name
    assert len(sources_of(sample_flow.added["echo_scan"], new)) > 0


def test_changed_file_replaces_its_rows(sample_flow: SampleFlow) -> None:
    local, remote = sample_flow.pair.launches[3]
    assert remote.files_processed == local.files_processed == 1
    changed = ss.source_name(CHANGED.scan_type, CHANGED.start)
    before = sources_of(sample_flow.added["http_scan"], changed)
    after = sources_of(sample_flow.changed["http_scan"], changed)
    assert after and before != after
    assert len(after) == remote.stats["rows"]  # no old row of the file left beside the new
    for name, rows in sample_flow.changed.items():
        assert sources_of(rows, changed, present=False) == sources_of(
            sample_flow.added[name], changed, present=False
        )
    ledger = [orjson.loads(r) for r in sample_flow.changed[PROCESSED_FILES.name]]
    before_ledger = sample_flow.added[PROCESSED_FILES.name]
    assert len(ledger) == len({r["file_key"] for r in ledger}) == len(before_ledger)


def test_queries_country_names_equal_on_both_backends(sample_flow: SampleFlow) -> None:
    local, remote = sample_flow.derived[0]["country_names"]
    assert local, "country_names: empty on DuckDB"
    assert remote == local, f"country_names: {_first_diff(remote, local)}"


def _require_queries(flow: SampleFlow) -> None:
    if flow.queries_gap:
        pytest.skip(f"{GAPS['net_functions']}: {flow.queries_gap}")


def test_queries_merged_reduced_scans_equal_on_both_backends(sample_flow: SampleFlow) -> None:
    _require_queries(sample_flow)
    local, remote = sample_flow.derived[0]["merged_reduced_scans"]
    assert local, "merged_reduced_scans: empty on DuckDB"
    assert remote == local, f"merged_reduced_scans: {_first_diff(remote, local)}"


def test_queries_incremental_by_partition_on_bigquery(sample_flow: SampleFlow) -> None:
    _require_queries(sample_flow)
    (l1, r1), (l2, r2) = sample_flow.queries
    assert r1.partitions_recomputed == l1.partitions_recomputed
    assert r1.tables_replaced == l1.tables_replaced == ["country_names"]
    new_day = ss.source_name(NEW_SCAN.scan_type, NEW_SCAN.start)[len("CP_Quack-echo-") :][:10]
    assert r2.sources_changed == l2.sources_changed == 1
    assert r2.partitions_recomputed == l2.partitions_recomputed
    assert r2.partitions_recomputed["merged_reduced_scans"] == [new_day]
    assert r2.tables_replaced == []
    for name in DERIVED:
        local, remote = sample_flow.derived[1][name]
        assert remote == local, f"{name} after the incremental run"


# -- launcher on the real fixtures -----------------------------------------------------------


def test_real_fixtures_equal_on_both_sinks(bq_env: BigQueryServer, tmp_path: Path) -> None:
    if not REAL.is_dir():
        pytest.skip(f"real fixtures not found at {REAL} (shared/fixtures/real is absent)")
    pair = make_pair(bq_env, tmp_path)
    pair.resources = str(REAL_RESOURCES)
    build_real_input(pair.input)
    build_real_satellite_input(pair.input)
    local, remote = pair.launch()
    assert remote.files_processed == local.files_processed > 8
    snapshot = pair.assert_equal()
    assert all(snapshot[s.name] for s in HYPERQUACK_TABLES.values())
    assert len(snapshot["satellite_scan"]) > 0


# -- transactions: a file's rows are replaced atomically --------------------------------------


ECHO_TASK = FileTask.for_test("CP_Quack-echo-2021-05-30-01-01-01")


def _stage(client: Any, dataset: str, spec: TableSpec, staging_id: str, n: int) -> None:
    """A staging table as the launcher's load leaves it: ``n`` rows of ECHO_TASK's file."""
    table = f"{PROJECT}.{dataset}.{staging_table(spec, staging_id)}"
    client.create_table(bigquery.Table(table, schema_fields(spec)), exists_ok=True)
    client.query(
        f"INSERT INTO `{table}` (measurement_id, source, source_file, source_line, "
        "pipeline_version, date) "
        f"SELECT CONCAT('m', CAST(i AS STRING)), '{ECHO_TASK.source}', "
        f"'{ECHO_TASK.source_file}', i, 'test', DATE '2021-05-30' "
        f"FROM UNNEST(GENERATE_ARRAY(1, {n})) AS i"
    ).result(timeout=TIMEOUT_S)


def _count(client: Any, dataset: str, table: str) -> int:
    sql = f"SELECT COUNT(*) AS n FROM `{PROJECT}.{dataset}.{table}`"
    return int(next(iter(client.query(sql).result(timeout=TIMEOUT_S)))["n"])


def test_failed_commit_leaves_base_tables_untouched(bq_env: BigQueryServer) -> None:
    """A commit failing after echo_scan's DELETE + INSERT rolls both back: the file's rows
    stay as they were, never doubled or gone (a failed run publishes nothing)."""
    client = bq_env.client()
    dataset = f"txn_{secrets.token_hex(4)}"
    wh = BigQueryWarehouse(PROJECT, dataset)
    wh.ensure_tables()
    echo = HYPERQUACK_TABLES["echo"]
    ok = FileVerdict(ECHO_TASK, "ok", "", {"lines": 3, "rows": 3})
    _stage(client, dataset, echo, "r1", 3)
    wh.commit("r1", [ok], [echo])
    assert _count(client, dataset, echo.name) == 3
    # Re-publish with 5 rows; dead_letter's staging table has the wrong columns, so the
    # statement after echo_scan's DELETE + INSERT fails and the transaction must roll back.
    _stage(client, dataset, echo, "r2", 5)
    broken = f"{PROJECT}.{dataset}.{staging_table(DEAD_LETTER, 'r2')}"
    client.create_table(bigquery.Table(broken, [bigquery.SchemaField("x", "STRING")]))
    with pytest.raises(BadRequest):
        wh.commit("r2", [FileVerdict(ECHO_TASK, "ok", "", {"rows": 5})], [echo, DEAD_LETTER])
    assert _count(client, dataset, echo.name) == 3, "a failed commit changed echo_scan"
    ledger = bq_rows(client, dataset, PROCESSED_FILES.name)
    assert [(r["file_key"], r["rows_written"]) for r in ledger] == [(ECHO_TASK.file_key, 3)]


def test_reader_never_sees_a_file_twice_or_half(bq_env: BigQueryServer) -> None:
    """A reader polling while one file's rows are replaced again and again."""
    client = bq_env.client()
    dataset = f"iso_{secrets.token_hex(4)}"
    wh = BigQueryWarehouse(PROJECT, dataset)
    wh.ensure_tables()
    echo = HYPERQUACK_TABLES["echo"]
    n = 300
    ok = FileVerdict(ECHO_TASK, "ok", "", {"lines": n, "rows": n})
    _stage(client, dataset, echo, "r0", n)
    wh.commit("r0", [ok], [echo])
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        c = bq_env.client()
        while not stop.is_set():
            seen.append(_count(c, dataset, echo.name))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i in range(1, 6):
            _stage(client, dataset, echo, f"r{i}", n)
            wh.commit(f"r{i}", [ok], [echo])
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT_S)
    assert _count(client, dataset, echo.name) == n
    assert seen, "the reader saw nothing"
    odd = sorted({v for v in seen if v != n})
    if odd:
        pytest.skip(f"{GAPS['reader_isolation']}; seen {odd} rows instead of {n}")
    assert set(seen) == {n}


def test_commit_script_replaces_each_table_in_one_transaction() -> None:
    """The statement order that makes a replacement atomic, checked on the parsed script:
    BEGIN; per table DELETE then INSERT with the same predicate; the switch check (fails
    the transaction while a switch of a stable table it writes is under way); ledger
    last; COMMIT."""
    echo, sat = HYPERQUACK_TABLES["echo"], next(s for s in ALL_TABLES if s.name == "satellite_scan")
    tables = [echo, sat, DEAD_LETTER]
    script = commit_script("proj", "base", "r-1", [], tables)
    stmts = sqlglot.parse(script, read="bigquery")
    kinds = [type(s).__name__ for s in stmts]
    assert kinds[0] == "Transaction" and kinds[-1] == "Commit"
    body = stmts[1:-1]
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["Delete", "Insert"] * len(tables) + ["Select", "Delete", "Insert"]
    check = body[-3]
    assert isinstance(check.expressions[0].this, exp.If), check.sql("bigquery")
    assert f"ERROR('{SWITCH_REFUSAL}: a version of echo_scan, satellite_scan" in check.sql(
        "bigquery"
    )
    for i, spec in enumerate(tables):
        delete, insert = body[2 * i], body[2 * i + 1]
        # INSERT INTO t (columns by name): a migration appends columns to the live table
        assert isinstance(insert.this, exp.Schema)
        assert delete.this.name == insert.this.this.name == spec.name
        assert [c.name for c in insert.this.expressions] == list(spec.column_names)
        select = insert.expression
        assert select.find(exp.From).this.name == staging_table(spec, "r-1")
        # the rows removed are exactly the rows put back: same predicate on both sides
        assert delete.args["where"].sql("bigquery") == select.args["where"].sql("bigquery")
    assert body[-2].this.name == body[-1].this.name == PROCESSED_FILES.name
    params = {p.name for s in stmts for p in s.find_all(exp.Parameter)}
    assert {"ok_keys", "all_keys", "ok_sources", "ledger_keys", "ledger_rows"} >= params


# -- the emulator gaps, each with the production statement bound the production way ----------


def test_commit_with_bound_parameters(bq_env: BigQueryServer) -> None:
    """The commit as production submits it (parameters bound, not inlined)."""
    client = bq_env.client()
    dataset = f"gap_{secrets.token_hex(4)}"
    wh = BigQueryWarehouse(PROJECT, dataset, client=_UnpatchedQueries(client))
    wh.ensure_tables()
    echo = HYPERQUACK_TABLES["echo"]
    _stage(client, dataset, echo, "r1", 2)
    try:
        wh.commit("r1", [FileVerdict(ECHO_TASK, "ok", "", {"rows": 2})], [echo])
    except BadRequest as exc:
        if "Values were not provided for the following prepared statement" in str(exc):
            pytest.skip(GAPS["script_parameters"])
        raise
    assert _count(client, dataset, echo.name) == 2


def test_unnest_of_struct_array_parameter(bq_env: BigQueryServer) -> None:
    client = bq_env.client()
    rows = bigquery.ArrayQueryParameter(
        "rows",
        "STRUCT",
        [
            bigquery.StructQueryParameter(
                None,
                bigquery.ScalarQueryParameter("a", "STRING", "x"),
                bigquery.ScalarQueryParameter("b", "INT64", 1),
            )
        ],
    )
    config = bigquery.QueryJobConfig(query_parameters=[rows])
    result = [
        dict(r.items())
        for r in client.query("SELECT * FROM UNNEST(@rows)", job_config=config).result(
            timeout=TIMEOUT_S
        )
    ]
    if result and list(result[0]) != ["a", "b"]:
        pytest.skip(GAPS["unnest_struct_parameter"] + f" (got columns {list(result[0])})")
    assert result == [{"a": "x", "b": 1}]


def test_json_load_of_bytes_column(bq_env: BigQueryServer) -> None:
    """BigQuery decodes a BYTES value of a JSON load from base64 (Beam's file loads write
    BYTES so)."""
    client = bq_env.client()
    dataset = f"gap_{secrets.token_hex(4)}"
    client.create_dataset(f"{PROJECT}.{dataset}")
    table = f"{PROJECT}.{dataset}.b"
    client.create_table(bigquery.Table(table, [bigquery.SchemaField("b", "BYTES")]))
    config = bigquery.LoadJobConfig(source_format="NEWLINE_DELIMITED_JSON")
    data = io.BytesIO(b'{"b": "' + base64.b64encode(b"\x00\xff") + b'"}\n')
    client.load_table_from_file(data, table, job_config=config).result(timeout=TIMEOUT_S)
    (value,) = [r["b"] for r in client.query(f"SELECT b FROM `{table}`").result()]
    if value == base64.b64encode(b"\x00\xff"):
        pytest.skip(GAPS["json_bytes"])
    assert value == b"\x00\xff"


_ORIGINAL_QUERY = bigquery.Client.query  # captured at import, before a test patches it


class _UnpatchedQueries:
    """A client whose ``query`` is google-cloud-bigquery's own (no literal inlining)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def query(self, sql: str, job_config: Any = None, **kwargs: Any) -> Any:
        from google.api_core.retry import Retry

        kwargs.setdefault("retry", Retry(timeout=30))
        return _ORIGINAL_QUERY(self._client, sql, job_config, job_retry=None, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# -- staging tables: dropped when a run fails or is stopped, swept when their run is dead ----


def _staging_names(client: Any, dataset: str) -> list[str]:
    return sorted(
        t.table_id
        for t in client.list_tables(f"{PROJECT}.{dataset}", timeout=TIMEOUT_S)
        if t.table_id.startswith("_staging_")
    )


@pytest.mark.parametrize("stop", ["abort", "failure"])
def test_staging_tables_dropped_when_the_run_stops_before_its_commit(
    bq_env: BigQueryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """A stop signal (``Aborted`` while the run waits to commit) or a failing commit: the
    run's staging tables and file leases are gone when it has unwound."""
    import signal

    from services.beam_launcher.run import RunFailed
    from services.beam_launcher.warehouse.bigquery import LEASE_TABLE
    from services.common import lifecycle

    pair = make_pair(bq_env, tmp_path)
    write_scan(pair.input, ss.HYPERQUACK_SCANS[4], 15, seed=3)
    seen: list[str] = []

    def commit(self: BigQueryWarehouse, staging_id: str, *args: Any, **kwargs: Any) -> None:
        seen.extend(_staging_names(pair.client, pair.dataset))
        if stop == "abort":
            raise lifecycle.Aborted(signal.SIGTERM)
        raise RuntimeError("commit failed")

    monkeypatch.setattr(BigQueryWarehouse, "commit", commit)
    expected = lifecycle.Aborted if stop == "abort" else RunFailed
    with pytest.raises(expected):
        run(pair.config("bigquery"))
    assert seen, "Beam's loads created no staging table (nothing would be tested)"
    assert _staging_names(pair.client, pair.dataset) == []
    assert bq_rows(pair.client, pair.dataset, LEASE_TABLE) == []


def test_sweep_drops_staging_tables_of_dead_runs_only(bq_env: BigQueryServer) -> None:
    """Judged by the run's lease in the temp location as lifecycle judges staging folders."""
    import subprocess
    import sys

    from services.beam_launcher.warehouse.bigquery import BigQueryTarget
    from services.common import lifecycle, storage

    client = bq_env.client()
    bucket = f"sweep-{secrets.token_hex(4)}"
    bq_env.gcs_client().create_bucket(bucket)
    dataset = f"sweep_{secrets.token_hex(4)}"
    target = BigQueryTarget(PROJECT, dataset, f"gs://{bucket}/tmp")
    target.ensure_tables()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    now = lifecycle.lease_doc("beam_launcher")
    leases = {
        "20210101t000000-aaaaaa-hyp": {**now, "pid": int(gone.stdout), "start_ticks": 1},
        "20210101t000000-bbbbbb-hyp": now,  # this process: alive
        "20210101t000000-cccccc-sat": {**now, "host": "elsewhere", "boot_id": "x"},
        "20210101t000000-dddddd-hyp": {
            **now,
            "host": "elsewhere",
            "boot_id": "x",
            "created": now["created"] - 2 * 86400,
        },
    }
    for run_id, doc in leases.items():
        url = f"gs://{bucket}/tmp/{run_id}{lifecycle.LEASE_SUFFIX}"
        storage.storage_for(url).write_bytes(url, orjson.dumps(doc))
    echo = HYPERQUACK_TABLES["echo"]
    for run_id in [*leases, "20210101t000000-eeeeee-hyp", "r9"]:  # the last two: no lease
        table = f"{PROJECT}.{dataset}.{staging_table(echo, run_id)}"
        client.create_table(bigquery.Table(table, schema_fields(echo)), timeout=TIMEOUT_S)
    target.sweep_staging()
    assert _staging_names(client, dataset) == sorted(
        staging_table(echo, r)
        for r in (
            "20210101t000000-bbbbbb-hyp",  # alive on this host
            "20210101t000000-cccccc-sat",  # another host, younger than a day
            "20210101t000000-eeeeee-hyp",  # no lease, younger than a day
            "r9",
        )
    )


def test_file_leases_are_exclusive_expire_and_are_released(bq_env: BigQueryServer) -> None:
    """The lease MERGE on a real API: a held unit is refused to another run, an expired
    one is taken over, renewal and release touch only the run's own rows."""
    from services.beam_launcher.warehouse.bigquery import LEASE_TABLE

    dataset = f"lease_{secrets.token_hex(4)}"
    wh = BigQueryWarehouse(PROJECT, dataset)
    wh.ensure_tables()
    first = wh.claim(["a", "b"], "run-1")
    assert first.mine == ["a", "b"] and first.others == {}
    second = wh.claim(["b", "c"], "run-2")
    assert second.mine == ["c"] and list(second.others) == ["b"]
    assert second.others["b"].startswith("run run-1 (host ")
    assert wh.claim(["a"], "run-1").mine == ["a"]  # a run's own lease stays its own
    crashed = wh.claim(["d"], "run-3", ttl_s=-1)  # a run whose lease has run out
    assert crashed.mine == ["d"]
    assert wh.claim(["d"], "run-2").mine == ["d"], "an expired lease still blocks"
    assert wh.renew("run-1") == 2
    assert wh.release("run-1") == 2
    rows = bq_rows(bq_env.client(), dataset, LEASE_TABLE)
    assert sorted((r["unit"], r["run_id"]) for r in rows) == [("c", "run-2"), ("d", "run-2")]


def test_sigterm_while_staging_tables_exist_drops_them(
    bq_env: BigQueryServer, tmp_path: Path
) -> None:
    """A real launcher process (``tests.test_concurrency``'s child entry: the launcher with
    this server's environment) gets SIGTERM as soon as its staging tables appear: it exits
    143 and leaves no staging table and no lease behind."""
    import signal
    import subprocess
    import sys
    import time

    from services.beam_launcher.warehouse.bigquery import LEASE_TABLE

    repo = Path(__file__).resolve().parents[1]
    pair = make_pair(bq_env, tmp_path)
    for i, spec in enumerate(ss.HYPERQUACK_SCANS[4:]):
        write_scan(pair.input, spec, 60, seed=i)
    cfg = pair.config("bigquery")
    args = [
        "--input",
        cfg.input,
        "--sink",
        "bigquery",
        "--bq-project",
        PROJECT,
        "--bq-dataset",
        pair.dataset,
        "--temp-location",
        cfg.temp_location or "",
        "--bad-line-threshold",
        "0.5",
    ]
    servers = [bq_env.gcs_endpoint]
    outcomes = []
    for _attempt in range(3):
        pair.client.delete_dataset(
            f"{PROJECT}.{pair.dataset}", delete_contents=True, not_found_ok=True
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_concurrency", bq_env.endpoint, *servers, *args],
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not seen:
            try:
                seen = _staging_names(pair.client, pair.dataset)
            except Exception:  # the dataset appears when the run has work
                seen = []
            if not seen:
                time.sleep(0.02)
        if seen and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        outcomes.append((proc.returncode, seen))
        if proc.returncode == 143 and seen:
            assert '"run_aborted"' in err
            assert _staging_names(pair.client, pair.dataset) == []
            assert bq_rows(pair.client, pair.dataset, LEASE_TABLE) == []
            return
    pytest.fail(f"never stopped while staging tables existed: {outcomes}")
