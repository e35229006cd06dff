"""Where the SQL runs: BigQuery in production, the local DuckDB warehouse in tests/dev.

Both backends take statements as sqlglot ASTs in BigQuery semantics whose tables were
already resolved (:func:`services.queries.sqlfiles.render`) and values as named
parameters. :meth:`Backend.run_atomic` runs several statements as one transaction: a
BigQuery multi-statement script between ``BEGIN TRANSACTION`` and ``COMMIT
TRANSACTION``; a DuckDB transaction on the DuckDB side.

Example:
    >>> bq_param("d", __import__("datetime").date(2021, 5, 30)).type_
    'DATE'
    >>> valid_identifier("derived", "dataset")
    'derived'
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from services.common import lifecycle
from services.common.rowschema import TableSpec
from services.queries import netfuncs
from services.queries.dialect import to_bigquery, to_duckdb
from services.queries.sqlfiles import parameters

__all__ = [
    "Array",
    "Backend",
    "BigQueryBackend",
    "DuckDBBackend",
    "JobStats",
    "bq_param",
    "valid_identifier",
]

_IDENTIFIER = {
    # BigQuery dataset names; also used for DuckDB schema names.
    "dataset": re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$"),
    # BigQuery project ids, optionally domain-scoped (example.com:my-project).
    "project": re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$"),
}


def valid_identifier(value: str, kind: str) -> str:
    """``value`` if it is a valid ``kind`` (dataset/project) name; ValueError otherwise."""
    if not _IDENTIFIER[kind].match(value or ""):
        raise ValueError(f"invalid {kind} name: {value!r}")
    return value


@dataclass(frozen=True)
class Array:
    """An array parameter with an explicit element type (needed when it may be empty)."""

    element_type: str  # BigQuery type: STRING, DATE, INT64, ..., or STRUCT
    values: Sequence[Any]
    fields: Mapping[str, str] | None = None  # STRUCT: field → BigQuery type


@dataclass
class JobStats:
    """What the backend did, for metrics."""

    statements: int = 0
    bytes_processed: int = 0
    bytes_billed: int = 0
    sql: list[str] = field(default_factory=list)  # last statements run (for logs/tests)


class Backend(Protocol):
    name: str
    stats: JobStats

    def table_ref(self, dataset: str, name: str) -> exp.Table: ...

    def ensure_table(self, spec: TableSpec, dataset: str) -> None: ...

    def missing_tables(self, dataset: str, names: Sequence[str]) -> list[str]: ...

    def query(self, stmt: exp.Expression, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    def run_atomic(self, stmts: Sequence[exp.Expression], params: Mapping[str, Any]) -> None: ...

    def export_parquet(
        self, stmt: exp.Expression, params: Mapping[str, Any], folder: str
    ) -> list[str]: ...

    def close(self) -> None: ...


def _used(stmts: Sequence[exp.Expression], params: Mapping[str, Any]) -> dict[str, Any]:
    names: set[str] = set()
    for s in stmts:
        names |= parameters(s)
    missing = names - set(params)
    if missing:
        raise KeyError(f"query parameters not given: {sorted(missing)}")
    return {k: params[k] for k in sorted(names)}


# ---------------------------------------------------------------------------------------
# DuckDB


class WarehouseMissing(FileNotFoundError):
    """The DuckDB warehouse named does not exist (nothing is created in its place)."""


class DuckDBBackend:
    """The local warehouse ``<warehouse>/warehouse.duckdb`` (the launcher's base tables in
    schema ``main``, this service's tables in schema ``derived`` by default)."""

    name = "duckdb"

    def __init__(
        self,
        warehouse: str | Path,
        datasets: Mapping[str, str] | None = None,
        database: str = "warehouse.duckdb",
    ) -> None:
        self.path = Path(warehouse) / database
        self.schemas = {"base": "main", "derived": "derived", **(datasets or {})}
        for value in self.schemas.values():
            valid_identifier(value, "dataset")
        if not self.path.is_file():  # a mistyped --warehouse must not become a new database
            raise WarehouseMissing(
                f"no warehouse at {self.path} (the launcher creates it; check --warehouse)"
            )
        # While this run has the database open, a launcher's commit waits for it (and this
        # run waits for a commit in progress) instead of failing on DuckDB's file lock.
        self._lock = contextlib.ExitStack()
        lock = self.path.parent / lifecycle.WAREHOUSE_LOCK
        self._lock.enter_context(lifecycle.flocked(lock, True, "queries run", "queries"))
        try:
            self.con = duckdb.connect(str(self.path))
        except BaseException:
            self._lock.close()
            raise
        netfuncs.install(self.con)
        self.stats = JobStats()

    def table_ref(self, dataset: str, name: str) -> exp.Table:
        return exp.table_(name, db=self.schemas[dataset], quoted=True)

    def ensure_table(self, spec: TableSpec, dataset: str) -> None:
        schema = exp.to_identifier(self.schemas[dataset], quoted=True).sql("duckdb")
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cols = ", ".join(
            f"{exp.to_identifier(c.name, quoted=True).sql('duckdb')} {c.duckdb_type()}"
            for c in spec.columns
        )
        table = self.table_ref(dataset, spec.name).sql("duckdb")
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")

    def missing_tables(self, dataset: str, names: Sequence[str]) -> list[str]:
        found = {
            r[0]
            for r in self.con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = current_database() AND table_schema = ?",
                [self.schemas[dataset]],
            ).fetchall()
        }
        return [n for n in names if n not in found]

    def sql(self, stmt: exp.Expression) -> str:
        return to_duckdb(stmt)

    def _execute(self, stmt: exp.Expression, params: Mapping[str, Any]) -> Any:
        sql = self.sql(stmt)
        self.stats.statements += 1
        self.stats.sql = [*self.stats.sql[-19:], sql]
        values = {k: _duck_value(v) for k, v in _used([stmt], params).items()}
        return self.con.execute(sql, values)

    def query(self, stmt: exp.Expression, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        cur = self._execute(stmt, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def run_atomic(self, stmts: Sequence[exp.Expression], params: Mapping[str, Any]) -> None:
        self.con.execute("BEGIN TRANSACTION")
        try:
            for stmt in stmts:
                self._execute(stmt, params)
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def export_parquet(
        self, stmt: exp.Expression, params: Mapping[str, Any], folder: str
    ) -> list[str]:
        """One Parquet file ``part-000000000000.parquet`` in ``folder`` (local or gs://)."""
        from services.common import storage

        sql = self.sql(stmt)
        self.stats.statements += 1
        values = {k: _duck_value(v) for k, v in _used([stmt], params).items()}
        # Streamed: DuckDB hands over record batches, each written as it comes into the
        # file (published only when complete), so memory does not grow with the partition.
        url = storage.join(folder, "part-000000000000.parquet")
        storage.storage_for(folder).delete(folder)
        # DuckDB's buffer pool would otherwise keep every block the scan read (memory
        # growing with the partition); the SQL runs without this limit.
        self.con.execute(f"SET memory_limit = '{EXPORT_MEMORY_LIMIT}'")
        try:
            reader: pa.RecordBatchReader = self.con.sql(sql, params=values).to_arrow_reader(
                EXPORT_BATCH_ROWS
            )
            with (
                storage.storage_for(url).open_write(url) as out,
                pq.ParquetWriter(out, reader.schema, compression="zstd") as writer,
            ):
                for batch in reader:
                    writer.write_batch(batch)
        finally:
            self.con.execute("RESET memory_limit")
        return [url]

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            self._lock.close()


#: Rows per record batch (and Parquet row group) of a streamed DuckDB export, and DuckDB's
#: memory limit while it runs. Measured (bench/bench_export.py, ~1 KB rows, 2 threads):
#: peak RSS 298 MB for a 100k-row partition, 404 MB for a 1M-row one; without the limit
#: DuckDB's buffer pool took 329 -> 1,066 MB, and the former whole-table export (the
#: partition held as one Arrow table, then as one Parquet buffer) 1,865 MB at 1M rows.
EXPORT_BATCH_ROWS = 20_000
EXPORT_MEMORY_LIMIT = "128MB"


def _duck_value(value: Any) -> Any:
    if isinstance(value, Array):
        return list(value.values)
    return value


# ---------------------------------------------------------------------------------------
# BigQuery

_BQ_SCALARS: tuple[tuple[type, str], ...] = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (str, "STRING"),
    (dt.datetime, "TIMESTAMP"),  # before date: datetime is a date subclass
    (dt.date, "DATE"),
    (bytes, "BYTES"),
)


def _bq_type(value: Any) -> str:
    for py, bq in _BQ_SCALARS:
        if isinstance(value, py):
            return bq
    raise TypeError(f"no BigQuery parameter type for {type(value).__name__}")


def bq_param(name: str | None, value: Any, type_: str | None = None) -> Any:
    """A google-cloud-bigquery query parameter for a Python value.

    Scalars map by type (None needs ``type_``); lists (or :class:`Array`) become ARRAY
    parameters; dicts become STRUCTs (a list of dicts: ARRAY<STRUCT>).
    """
    from google.cloud import bigquery

    if isinstance(value, Array):
        if value.element_type == "STRUCT" and not value.values:
            struct_type = bigquery.StructQueryParameterType(
                *[
                    bigquery.ScalarQueryParameterType(t, name=k)
                    for k, t in (value.fields or {}).items()
                ]
            )
            return bigquery.ArrayQueryParameter(name, struct_type, [])
        if value.element_type == "STRUCT":
            return bigquery.ArrayQueryParameter(
                name, "STRUCT", [_bq_struct(None, v, value.fields or {}) for v in value.values]
            )
        return bigquery.ArrayQueryParameter(name, value.element_type, list(value.values))
    if isinstance(value, list | tuple):
        if not value:
            raise TypeError(f"parameter {name}: empty list needs Array(type, [])")
        if isinstance(value[0], dict):
            return bigquery.ArrayQueryParameter(name, "STRUCT", [bq_param(None, v) for v in value])
        return bigquery.ArrayQueryParameter(name, _bq_type(value[0]), list(value))
    if isinstance(value, dict):
        return _bq_struct(name, value, {})
    if value is None:
        if type_ is None:
            raise TypeError(f"parameter {name}: None needs an explicit type")
        return bigquery.ScalarQueryParameter(name, type_, None)
    return bigquery.ScalarQueryParameter(name, type_ or _bq_type(value), value)


def _bq_struct(name: str | None, value: Mapping[str, Any], types: Mapping[str, str]) -> Any:
    from google.cloud import bigquery

    fields = [
        bq_param(k, v, types.get(k) or ("STRING" if v is None else None)) for k, v in value.items()
    ]
    return bigquery.StructQueryParameter(name, *fields)


class BigQueryBackend:
    """Query jobs with named parameters on BigQuery (client created lazily).

    ``dry_run=True`` validates every statement against BigQuery (syntax, tables, types)
    and estimates bytes, without running anything.
    """

    name = "bigquery"

    def __init__(
        self,
        project: str,
        datasets: Mapping[str, str],
        location: str | None = None,
        client: Any = None,
        dry_run: bool = False,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 3600.0,
    ) -> None:
        self.project = valid_identifier(project, "project")
        self.datasets = {k: valid_identifier(v, "dataset") for k, v in datasets.items()}
        self.location = location
        self._client = client
        self.dry_run = dry_run
        self.labels = dict(labels or {"service": "cp-queries"})
        self.timeout_s = timeout_s
        self.stats = JobStats()

    @property
    def client(self) -> Any:
        if self._client is None:
            from services.common.bqclient import bigquery_client

            self._client = bigquery_client(self.project, self.location)
        return self._client

    def table_ref(self, dataset: str, name: str) -> exp.Table:
        return exp.table_(name, db=self.datasets[dataset], catalog=self.project, quoted=True)

    def table_id(self, dataset: str, name: str) -> str:
        return f"{self.project}.{self.datasets[dataset]}.{name}"

    def ensure_table(self, spec: TableSpec, dataset: str) -> None:
        from google.cloud import bigquery

        if self.dry_run:
            return
        self.client.create_dataset(f"{self.project}.{self.datasets[dataset]}", exists_ok=True)
        table = bigquery.Table(
            self.table_id(dataset, spec.name),
            [bigquery.SchemaField.from_api_repr(f) for f in spec.bigquery_schema()],
        )
        if spec.partition_field:
            table.time_partitioning = bigquery.TimePartitioning(field=spec.partition_field)
        if spec.clustering:
            table.clustering_fields = list(spec.clustering)
        table.description = spec.description
        self.client.create_table(table, exists_ok=True)

    def missing_tables(self, dataset: str, names: Sequence[str]) -> list[str]:
        from google.api_core.exceptions import NotFound

        try:
            tables = self.client.list_tables(f"{self.project}.{self.datasets[dataset]}")
            found = {t.table_id for t in tables}
        except NotFound:
            found = set()
        return [n for n in names if n not in found]

    def sql(self, stmt: exp.Expression) -> str:
        return to_bigquery(stmt)

    def _job(self, sql: str, params: Mapping[str, Any]) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=[bq_param(k, v) for k, v in params.items()],
            dry_run=self.dry_run,
            use_query_cache=False,
            labels=self.labels,
        )
        self.stats.statements += 1
        self.stats.sql = [*self.stats.sql[-19:], sql]
        job = self.client.query(sql, job_config=config)
        if not self.dry_run:
            job.result(timeout=self.timeout_s)
        self.stats.bytes_processed += int(getattr(job, "total_bytes_processed", 0) or 0)
        self.stats.bytes_billed += int(getattr(job, "total_bytes_billed", 0) or 0)
        return job

    def query(self, stmt: exp.Expression, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        job = self._job(self.sql(stmt), _used([stmt], params))
        if self.dry_run:
            return []
        return [dict(row.items()) for row in job.result(timeout=self.timeout_s)]

    def script(self, stmts: Sequence[exp.Expression]) -> str:
        """The multi-statement transaction that :meth:`run_atomic` submits."""
        body = [self.sql(s) + ";" for s in stmts]
        return "\n".join(["BEGIN TRANSACTION;", *body, "COMMIT TRANSACTION;"])

    def run_atomic(self, stmts: Sequence[exp.Expression], params: Mapping[str, Any]) -> None:
        if self.dry_run:  # a dry run validates the statements one by one
            for stmt in stmts:
                self._job(self.sql(stmt), _used([stmt], params))
            return
        self._job(self.script(stmts), _used(stmts, params))

    def export_parquet(
        self, stmt: exp.Expression, params: Mapping[str, Any], folder: str
    ) -> list[str]:
        """``EXPORT DATA`` into ``folder`` (gs://) as ``part-*.parquet``."""
        if not folder.startswith("gs://"):
            raise ValueError("BigQuery exports to gs:// only")
        from services.common import storage

        uri = folder.rstrip("/") + "/part-*.parquet"
        export = exp.Export(
            this=stmt.copy(),
            options=exp.Properties(
                expressions=[
                    exp.Property(this=exp.var("uri"), value=exp.Literal.string(uri)),
                    exp.FileFormatProperty(this=exp.Literal.string("PARQUET")),
                    exp.Property(this=exp.var("compression"), value=exp.Literal.string("ZSTD")),
                    exp.Property(this=exp.var("overwrite"), value=exp.true()),
                ]
            ),
        )
        if not self.dry_run:
            storage.storage_for(folder).delete(folder)
        self._job(self.sql(export), _used([stmt], params))
        if self.dry_run:
            return []
        return sorted(o.url for o in storage.storage_for(folder).list(folder))

    def close(self) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()
