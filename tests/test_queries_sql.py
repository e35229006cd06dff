"""The SQL files: BigQuery syntax, safe table rendering, the DuckDB transpilation and its
fixes, and what the BigQuery backend submits (fake client: no network)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from services.queries import netfuncs
from services.queries.backends import (
    Array,
    BigQueryBackend,
    DuckDBBackend,
    bq_param,
    valid_identifier,
)
from services.queries.countries import CountryNamesError, load_country_names, parse_country_names
from services.queries.dialect import UnsupportedSql, parse_bigquery, to_duckdb
from services.queries.metrics import QueriesMetrics
from services.queries.run import (
    SOURCE_ROW_FIELDS,
    QueriesConfig,
    QueriesFailed,
    Service,
    run,
    sample_params,
)
from services.queries.sqlfiles import (
    SqlTemplateError,
    all_files,
    logical_tables,
    ordered_files,
    render,
)
from services.queries.tables import BASE_TABLE_NAMES, MERGED_REDUCED_SCANS, SCAN_TABLE_NAMES
from tests.test_queries_support import warehouse

SAMPLE_PARAMS: dict[str, Any] = sample_params(dt.date(2021, 5, 31))

FILES = all_files()


def test_ordered_set() -> None:
    names = [f.name for f in ordered_files()]
    assert names[:2] == ["00_country_names.sql", "10_merged_reduced_scans.sql"]
    assert all(n.startswith("9") and "_quality_" in n for n in names[2:])
    assert [f.mode for f in ordered_files()][:2] == ["replace", "partitions"]
    assert len(FILES) > len(names)  # plus the internal bookkeeping queries


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_every_file_parses_as_bigquery(f: Any) -> None:
    statements = sqlglot.parse(f.text, read="bigquery", error_level=ErrorLevel.RAISE)
    assert statements and all(s is not None for s in statements)
    assert f.statements  # and names only whitelisted tables
    rendered = BigQueryBackend("cp-analysis-prod", {"base": "base", "derived": "derived"})
    for stmt in f.statements:
        sql = rendered.sql(render(stmt, rendered))
        if logical_tables(stmt):
            assert "`cp-analysis-prod`.`base`." in sql or "`cp-analysis-prod`.`derived`." in sql
        # BigQuery SQL out of the renderer parses again, to the same tree.
        again = sqlglot.parse_one(sql, read="bigquery", error_level=ErrorLevel.RAISE)
        assert again.sql("bigquery") == sql


@pytest.fixture(scope="module")
def empty_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = warehouse(tmp_path_factory.mktemp("empty"))
    svc = Service(DuckDBBackend(root), QueriesMetrics(), "r0")
    svc.ensure_tables()
    svc.backend.close()
    return root


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_every_statement_runs_on_duckdb(f: Any, empty_warehouse: Path) -> None:
    backend = DuckDBBackend(empty_warehouse)
    try:
        svc = Service(backend, QueriesMetrics(), "r1")
        for stmt in f.statements:
            sql = backend.sql(render(stmt, backend))
            assert "->" not in sql  # DuckDB 2 refuses the old lambda syntax
            backend.run_atomic([render(stmt, backend)], SAMPLE_PARAMS)
        if f.mode == "partitions":  # and wrapped as the service runs it
            backend.run_atomic(
                [render(s, backend) for s in svc.partition_statements(f, MERGED_REDUCED_SCANS)],
                SAMPLE_PARAMS,
            )
    finally:
        backend.close()


def test_derived_query_has_the_table_columns(empty_warehouse: Path) -> None:
    backend = DuckDBBackend(empty_warehouse)
    try:
        f = next(f for f in ordered_files() if f.target == "merged_reduced_scans")
        cur = backend.con.execute(
            backend.sql(render(f.statement, backend)),
            {"start_date": dt.date(2021, 1, 1), "end_date": dt.date(2021, 1, 2)},
        )
        assert tuple(d[0] for d in cur.description) == MERGED_REDUCED_SCANS.column_names
    finally:
        backend.close()


# -- identifiers: whitelist and AST rendering -------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM secrets.users", "unknown dataset"),
        ("SELECT * FROM base.users", "not a known table"),
        ("SELECT * FROM echo_scan", "must be written"),
        ("SELECT * FROM `other-project.base.echo_scan`", "no project"),
        ("DELETE FROM derived.merged_reduced_scans_v3 WHERE TRUE", "not a known table"),
    ],
)
def test_table_names_outside_the_whitelist_are_refused(sql: str, message: str) -> None:
    with pytest.raises(SqlTemplateError, match=message):
        logical_tables(parse_bigquery(sql)[0])


def test_ctes_and_aliases_survive_rendering() -> None:
    stmt = parse_bigquery(
        "WITH e AS (SELECT * FROM base.echo_scan AS x WHERE x.date = @d) SELECT * FROM e"
    )[0]
    bq = BigQueryBackend("my-project", {"base": "base_v2", "derived": "derived"})
    assert bq.sql(render(stmt, bq)) == (
        "WITH e AS (SELECT * FROM `my-project`.`base_v2`.`echo_scan` AS x WHERE x.date = @d) "
        "SELECT * FROM e"
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("derived`; DROP TABLE base.echo_scan; --", "dataset"),
        ("derived.x", "dataset"),
        ("", "dataset"),
        ("proj`", "project"),
        ("UPPER-case", "project"),
    ],
)
def test_configured_names_are_validated(value: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"invalid {kind}"):
        valid_identifier(value, kind)


def test_backends_refuse_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BigQueryBackend("my-project", {"base": "base", "derived": "x`y"})
    with pytest.raises(ValueError):
        DuckDBBackend(tmp_path, {"derived": 'x"; DROP TABLE echo_scan; --'})


# -- DuckDB gaps -------------------------------------------------------------------------------


@pytest.fixture
def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    netfuncs.install(con)
    return con


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(to_duckdb(parse_bigquery(sql)[0])).fetchall()


def test_with_offset_stays_zero_based(duck: duckdb.DuckDBPyConnection) -> None:
    sql = "SELECT o, x FROM UNNEST(['a', 'b', 'c']) AS x WITH OFFSET AS o WHERE o > 0 ORDER BY o"
    assert _run(duck, sql) == [(1, "b"), (2, "c")]  # BigQuery's answer


def test_array_agg_limit(duck: duckdb.DuckDBPyConnection) -> None:
    sql = "SELECT ARRAY_AGG(x ORDER BY x DESC LIMIT 2) FROM UNNEST([1, 5, 3]) AS x"
    assert _run(duck, sql) == [([5, 3],)]


def test_date_trunc_on_a_date_is_a_date(duck: duckdb.DuckDBPyConnection) -> None:
    assert _run(duck, "SELECT DATE_TRUNC(DATE '2021-05-30', MONTH)") == [(dt.date(2021, 5, 1),)]


@pytest.mark.parametrize(
    ("host", "reg", "suffix"),
    [
        ("dnscorp1.trueinternet.co.th.", "trueinternet.co.th", "co.th"),
        ("rdns37b.ultradns.net.", "ultradns.net", "net"),
        ("ns3082997.ip-145-239-6.eu.", "ip-145-239-6.eu", "eu"),
        ("www.Example.Co.UK", "Example.Co.UK", "Co.UK"),
        ("co.uk", None, "co.uk"),
        ("control", None, None),
        ("192.0.2.1", None, None),
        ("a..b.com", None, None),
        (None, None, None),
        # The Public Suffix List, ICANN section (as BigQuery): multi-label suffixes,
        # wildcard and exception rules; private entries (github.io) are not suffixes.
        ("www.shop.com.br", "shop.com.br", "com.br"),
        ("a.b.github.io", "github.io", "io"),
        ("x.y.kawasaki.jp", "x.y.kawasaki.jp", "y.kawasaki.jp"),
        ("www.city.kawasaki.jp", "city.kawasaki.jp", "kawasaki.jp"),
        ("ns1.example.gov.uk", "example.gov.uk", "gov.uk"),
        ("https://user@www.example.co.uk:8080/a?b", "example.co.uk", "co.uk"),
        ("host.invalidtld", None, None),
        ("[::1]", None, None),
        (".leading.example.org", "example.org", "org"),
    ],
)
def test_net_functions(duck: duckdb.DuckDBPyConnection, host: str | None, reg: Any, suffix: Any):
    literal = "NULL" if host is None else f"'{host}'"
    got = _run(duck, f"SELECT NET.REG_DOMAIN({literal}), NET.PUBLIC_SUFFIX({literal})")
    assert got == [(reg, suffix)]


def test_other_net_functions_are_refused() -> None:
    with pytest.raises(UnsupportedSql, match=r"NET\.IP_FROM_STRING"):
        to_duckdb(parse_bigquery("SELECT NET.IP_FROM_STRING('1.2.3.4')")[0])


def test_untranslatable_sql_raises() -> None:
    with pytest.raises(UnsupportedSql):
        to_duckdb(parse_bigquery("SELECT APPROX_TOP_COUNT(x, 2) FROM t")[0])


# -- BigQuery backend (fake client) -------------------------------------------------------------


class _Job:
    total_bytes_processed = 1000
    total_bytes_billed = 10485760

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def result(self, timeout: float | None = None) -> list[Any]:
        class Row(dict):
            def items(self):  # type: ignore[override]
                return super().items()

        return [Row(r) for r in self.rows]


class FakeClient:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, Any]] = []
        self.tables: list[Any] = []

    def query(self, sql: str, job_config: Any = None) -> _Job:
        self.jobs.append((sql, job_config))
        return _Job([])

    def create_dataset(self, name: str, exists_ok: bool = False) -> None:
        pass

    def create_table(self, table: Any, exists_ok: bool = False) -> None:
        self.tables.append(table)


def test_bigquery_partition_replacement_is_one_transaction() -> None:
    client = FakeClient()
    bq = BigQueryBackend("cp-prod", {"base": "base", "derived": "derived"}, client=client)
    svc = Service(bq, QueriesMetrics(), "run-1")
    f = next(f for f in ordered_files() if f.mode == "partitions")
    params = {k: v for k, v in SAMPLE_PARAMS.items() if k not in ("run_id", "now")}
    svc.atomic(svc.partition_statements(f, MERGED_REDUCED_SCANS), params)
    [(script, config)] = client.jobs
    statements = sqlglot.parse(script, read="bigquery", error_level=ErrorLevel.RAISE)
    kinds = [type(s).__name__ for s in statements if s is not None]
    assert kinds == ["Transaction", "Delete", "Insert", "Delete", "Insert", "Commit"]
    assert "DELETE FROM `cp-prod`.`derived`.`merged_reduced_scans` WHERE date BETWEEN" in script
    assert "ORDER BY" not in script  # clustering is BigQuery's job
    typed = {p.name: (p.type_, p.value) for p in config.query_parameters}
    assert typed == {
        "start_date": ("DATE", dt.date(2021, 5, 30)),
        "end_date": ("DATE", dt.date(2021, 5, 31)),
        "target": ("STRING", "merged_reduced_scans"),
        "run_id": ("STRING", "run-1"),
        "now": ("TIMESTAMP", svc.now),
    }
    assert config.labels == {"service": "cp-queries"}
    assert bq.stats.bytes_billed == 10485760


def test_bigquery_tables_are_partitioned_and_clustered() -> None:
    client = FakeClient()
    bq = BigQueryBackend("cp-prod", {"base": "base", "derived": "derived"}, client=client)
    bq.ensure_table(MERGED_REDUCED_SCANS, "derived")
    [table] = client.tables
    assert table.table_id == "merged_reduced_scans" and table.dataset_id == "derived"
    assert table.time_partitioning.field == "date"
    assert table.clustering_fields == ["source", "country_name", "network", "domain"]
    assert [f.name for f in table.schema] == list(MERGED_REDUCED_SCANS.column_names)


def test_bigquery_parameters() -> None:
    rows = bq_param("source_rows", SAMPLE_PARAMS["source_rows"])
    assert rows.array_type == "STRUCT"
    [struct] = rows.values
    assert struct.struct_types == {
        "source": "STRING",
        "scan_type": "STRING",
        "files": "INT64",
        "last_processed_at": "TIMESTAMP",
        "date": "DATE",
        "row_count": "INT64",
    }
    empty = bq_param("sources", Array("STRING", []))
    assert (empty.array_type, empty.values) == ("STRING", [])
    empty_rows = bq_param("source_rows", Array("STRUCT", [], SOURCE_ROW_FIELDS))
    assert empty_rows.values == []
    with pytest.raises(TypeError):
        bq_param("x", [])


def test_bigquery_dry_run_and_export() -> None:
    client = FakeClient()
    bq = BigQueryBackend(
        "cp-prod", {"base": "base", "derived": "derived"}, client=client, dry_run=True
    )
    stmt = render(parse_bigquery("SELECT * FROM base.echo_scan WHERE date = @date")[0], bq)
    assert bq.export_parquet(stmt, {"date": dt.date(2021, 5, 30)}, "gs://b/x/date=2021-05-30") == []
    [(sql, config)] = client.jobs
    assert sql.startswith(
        "EXPORT DATA OPTIONS (uri='gs://b/x/date=2021-05-30/part-*.parquet', FORMAT='PARQUET'"
    )
    assert config.dry_run is True
    with pytest.raises(ValueError, match="gs://"):
        bq.export_parquet(stmt, {"date": dt.date(2021, 5, 30)}, "/local/folder")


# -- country names -----------------------------------------------------------------------------


def test_country_names_file() -> None:
    rows, digest = load_country_names()
    codes = {r["country_code"]: r for r in rows}
    assert sum(r["status"] == "official" for r in rows) == 249
    assert codes["XK"]["status"] == "user-assigned"
    assert codes["CI"]["country_name"] == "Côte d'Ivoire"
    assert len(digest) == 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"code,name\nDE,Germany\n", "header"),
        (b"country_code,country_name,status\nDEU,Germany,official\n", "bad code"),
        (b"country_code,country_name,status\nDE,Germany,official\nDE,X,official\n", "duplicate"),
        (b"country_code,country_name,status\nDE,,official\n", "empty name"),
        (b"country_code,country_name,status\nDE,Germany,maybe\n", "status"),
        (b"country_code,country_name,status\n", "no rows"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_country_names_are_validated(data: bytes, message: str) -> None:
    with pytest.raises(CountryNamesError, match=message):
        parse_country_names(data)


def test_exp_table_quoting() -> None:
    # The renderer's identifiers are always quoted: a name can never become SQL.
    t = exp.table_("merged_reduced_scans", db="derived", catalog="cp-prod", quoted=True)
    assert t.sql("bigquery") == "`cp-prod`.`derived`.`merged_reduced_scans`"


def test_bigquery_dry_run_validates_every_statement() -> None:
    client = FakeClient()
    bq = BigQueryBackend(
        "cp-prod", {"base": "base", "derived": "derived"}, client=client, dry_run=True
    )
    cfg = QueriesConfig(backend="bigquery", bq_project="cp-prod", dry_run=True)
    summary = run(cfg, backend=bq)
    assert summary.validated_statements == len(client.jobs) > 15
    assert all(config.dry_run for _, config in client.jobs)
    assert client.tables == []  # nothing created
    for sql_text, _ in client.jobs:
        sqlglot.parse(sql_text, read="bigquery", error_level=ErrorLevel.RAISE)


def test_base_table_names_agree_with_the_launcher() -> None:
    from services.beam_launcher.warehouse.rows import ALL_TABLES, SCAN_TABLES

    assert {t: s.name for t, s in SCAN_TABLES.items()} == SCAN_TABLE_NAMES
    assert set(BASE_TABLE_NAMES) == {t.name for t in ALL_TABLES}


def test_the_service_does_not_import_the_launcher() -> None:
    # The queries image ships services/common and services/queries only.
    code = (
        "import sys, services.queries.__main__, services.queries.export; "
        "bad = [m for m in sys.modules "
        "if m.startswith(('services.beam_launcher', 'apache_beam'))]; "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, check=False)
    assert done.returncode == 0


def test_missing_base_tables_fail_clearly(tmp_path: Path) -> None:
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()  # a database without tables
    with pytest.raises(QueriesFailed, match="base tables missing: echo_scan"):
        run(QueriesConfig(warehouse=str(tmp_path), quality=False))
