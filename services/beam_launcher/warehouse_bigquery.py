"""The production warehouse: BigQuery tables partitioned by date, clustered by country/ASN.

A run loads its rows into per-run staging tables (Beam's BigQuery sink, file loads),
then one multi-statement transaction replaces the processed files' rows in the base
tables, the dead letters and the ledger. Re-running a file therefore never duplicates or
loses rows, and a failed run leaves the base tables untouched.

Example:
    >>> [f.name for f in schema_fields(DEAD_LETTER)][:3]
    ['date', 'scan_type', 'source']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from services.beam_launcher.rows import (
    ALL_TABLES,
    DEAD_LETTER,
    PROCESSED_FILES,
    SATELLITE_SCAN,
    SCAN_TABLES,
)
from services.beam_launcher.warehouse_local import FileVerdict, LedgerEntry
from services.common.bqclient import bigquery_client, point_beam_at_emulator
from services.common.rowschema import TableSpec


def schema_fields(spec: TableSpec) -> list[Any]:
    """The spec as google-cloud-bigquery SchemaField objects (validated by the client)."""
    from google.cloud.bigquery import SchemaField

    return [SchemaField.from_api_repr(f) for f in spec.bigquery_schema()]


def staging_table(spec: TableSpec, run_id: str) -> str:
    return f"_staging_{run_id.replace('-', '_')}_{spec.name}"


class _RowsOf(beam.DoFn):
    def __init__(self, table: str) -> None:
        self.table = table

    def process(self, item: tuple[tuple[str, str], list[dict[str, Any]]]) -> Iterable[Any]:
        (table, _file_key), rows = item
        if table == self.table:
            yield from rows


class BigQueryStagingSink:
    """Load rows into one staging table per target table with Beam's BigQuery sink."""

    def __init__(
        self, project: str, dataset: str, run_id: str, tables: Iterable[TableSpec]
    ) -> None:
        self.project = project
        self.dataset = dataset
        self.run_id = run_id
        self.tables = list(tables)

    def write(self, keyed_rows: Any) -> Any:
        point_beam_at_emulator()  # only when $BIGQUERY_EMULATOR_HOST is set
        if isinstance(keyed_rows, list | tuple):  # free on Dataflow
            keyed_rows = keyed_rows | "AllRows" >> beam.Flatten()
        results = []
        for spec in self.tables:
            target = f"{self.project}:{self.dataset}.{staging_table(spec, self.run_id)}"
            results.append(
                keyed_rows
                | f"RowsOf_{spec.name}" >> beam.ParDo(_RowsOf(spec.name))
                | f"Load_{spec.name}"
                >> beam.io.WriteToBigQuery(
                    table=target,
                    schema={"fields": spec.bigquery_schema()},
                    method=beam.io.WriteToBigQuery.Method.FILE_LOADS,
                    create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                    write_disposition=beam.io.BigQueryDisposition.WRITE_TRUNCATE,
                )
            )
        return results


def table_ref(project: str, dataset: str, name: str) -> str:
    return f"`{project}.{dataset}.{name}`"


def commit_script(
    project: str, dataset: str, run_id: str, verdicts: list[FileVerdict], tables: list[TableSpec]
) -> str:
    """The transaction that publishes a run (file keys are passed as query parameters).

    Parameters: ``@ok_keys`` (files whose rows are published), ``@ok_sources`` (Satellite
    scans whose rows are published: they are replaced per scan), ``@all_keys`` (every
    judged file: its dead letters are replaced) and ``@ledger_keys`` (ledger rows replaced).
    """
    stmts = ["BEGIN TRANSACTION;"]
    for spec in tables:
        if spec.name == SATELLITE_SCAN.name:
            cond = "source IN UNNEST(@ok_sources)"
        else:
            keys = "@all_keys" if spec.name == DEAD_LETTER.name else "@ok_keys"
            cond = f"CONCAT(source, '/', source_file) IN UNNEST({keys})"
        target = table_ref(project, dataset, spec.name)
        staged = table_ref(project, dataset, staging_table(spec, run_id))
        stmts.append(f"DELETE FROM {target} WHERE {cond};")
        stmts.append(f"INSERT INTO {target} SELECT * FROM {staged} WHERE {cond};")
    ledger = table_ref(project, dataset, PROCESSED_FILES.name)
    stmts.append(f"DELETE FROM {ledger} WHERE file_key IN UNNEST(@ledger_keys);")
    stmts.append(f"INSERT INTO {ledger} SELECT * FROM UNNEST(@ledger_rows);")
    stmts.append("COMMIT TRANSACTION;")
    return "\n".join(stmts)


class BigQueryWarehouse:
    """Tables, ledger and run commits on BigQuery (client created lazily)."""

    def __init__(self, project: str, dataset: str, location: str | None = None, client: Any = None):
        self.project = project
        self.dataset = dataset
        self.location = location
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = bigquery_client(self.project, self.location)
        return self._client

    def _table(self, spec: TableSpec) -> Any:
        from google.cloud import bigquery

        table = bigquery.Table(f"{self.project}.{self.dataset}.{spec.name}", schema_fields(spec))
        if spec.partition_field:
            table.time_partitioning = bigquery.TimePartitioning(field=spec.partition_field)
        if spec.clustering:
            table.clustering_fields = list(spec.clustering)
        table.description = spec.description
        return table

    def ensure_tables(self) -> None:
        self.client.create_dataset(f"{self.project}.{self.dataset}", exists_ok=True)
        for spec in ALL_TABLES:
            self.client.create_table(self._table(spec), exists_ok=True)

    def ledger(self) -> dict[str, LedgerEntry]:
        sql = (
            "SELECT file_key, version, status, pipeline_version FROM "
            f"{table_ref(self.project, self.dataset, PROCESSED_FILES.name)}"
        )
        return {
            r["file_key"]: LedgerEntry(r["version"], r["status"], r["pipeline_version"])
            for r in self.client.query(sql).result()
        }

    def reset(self, scan_types: Iterable[str]) -> None:
        from google.cloud import bigquery

        types = sorted(set(scan_types))
        for t in types:
            self.client.delete_table(
                f"{self.project}.{self.dataset}.{SCAN_TABLES[t].name}", not_found_ok=True
            )
        self.ensure_tables()
        for spec in (DEAD_LETTER, PROCESSED_FILES):
            job = self.client.query(
                f"DELETE FROM {table_ref(self.project, self.dataset, spec.name)} "
                "WHERE scan_type IN UNNEST(@types)",
                job_config=bigquery.QueryJobConfig(
                    query_parameters=[bigquery.ArrayQueryParameter("types", "STRING", types)]
                ),
            )
            job.result()

    def commit(
        self,
        staging_id: str,
        verdicts: list[FileVerdict],
        tables: list[TableSpec],
        run_id: str | None = None,
    ) -> None:
        """Publish staged rows of ``staging_id``; ledger rows carry ``run_id``."""
        from google.cloud import bigquery

        run_id = run_id or staging_id
        # Beam's file loads create a staging table only when it has rows to load (a run
        # without dead letters leaves none): an empty one stands in, so the script's
        # INSERT … SELECT finds every table it names.
        for spec in tables:
            staged = f"{self.project}.{self.dataset}.{staging_table(spec, staging_id)}"
            self.client.create_table(bigquery.Table(staged, schema_fields(spec)), exists_ok=True)
        now = dt.datetime.now(dt.UTC)
        judged = [v for v in verdicts if v.status != "skipped"]
        ok_keys = [v.task.file_key for v in judged if v.status == "ok"]
        ok_sources = sorted(
            {v.task.source for v in judged if v.status == "ok" and v.task.scan_type == "satellite"}
        )
        all_keys = [v.task.file_key for v in judged]
        ledger_rows = [
            bigquery.StructQueryParameter(
                None,
                bigquery.ScalarQueryParameter("file_key", "STRING", v.task.file_key),
                bigquery.ScalarQueryParameter("scan_type", "STRING", v.task.scan_type),
                bigquery.ScalarQueryParameter("source", "STRING", v.task.source),
                bigquery.ScalarQueryParameter("path", "STRING", v.task.url),
                bigquery.ScalarQueryParameter("size_bytes", "INT64", v.task.size),
                bigquery.ScalarQueryParameter("version", "STRING", v.task.version),
                bigquery.ScalarQueryParameter(
                    "pipeline_version", "STRING", v.task.pipeline_version
                ),
                bigquery.ScalarQueryParameter("status", "STRING", v.status),
                bigquery.ScalarQueryParameter("reason", "STRING", v.reason or None),
                bigquery.ScalarQueryParameter("lines", "INT64", v.stats.get("lines", 0)),
                bigquery.ScalarQueryParameter(
                    "rows_written", "INT64", v.stats.get("rows", 0) if v.status == "ok" else 0
                ),
                bigquery.ScalarQueryParameter(
                    "dead_letters", "INT64", v.stats.get("dead_letters", 0)
                ),
                bigquery.ScalarQueryParameter(
                    "cert_parse_errors", "INT64", v.stats.get("cert_parse_errors", 0)
                ),
                bigquery.ScalarQueryParameter("run_id", "STRING", run_id),
                bigquery.ScalarQueryParameter("processed_at", "TIMESTAMP", now),
            )
            for v in verdicts
        ]
        job = self.client.query(
            commit_script(self.project, self.dataset, staging_id, verdicts, tables),
            job_config=bigquery.QueryJobConfig(
                query_parameters=[
                    bigquery.ArrayQueryParameter("ok_keys", "STRING", ok_keys),
                    bigquery.ArrayQueryParameter("all_keys", "STRING", all_keys),
                    bigquery.ArrayQueryParameter("ok_sources", "STRING", ok_sources),
                    bigquery.ArrayQueryParameter(
                        "ledger_keys", "STRING", [v.task.file_key for v in verdicts]
                    ),
                    bigquery.ArrayQueryParameter("ledger_rows", "STRUCT", ledger_rows),
                ]
            ),
        )
        job.result()
        for spec in tables:
            self.client.delete_table(
                f"{self.project}.{self.dataset}.{staging_table(spec, staging_id)}",
                not_found_ok=True,
            )


class BigQueryTarget:
    """Adapter used by the run: BigQuery tables, stats files under a gs:// temp location."""

    def __init__(self, project: str, dataset: str, temp_location: str, location: str | None = None):
        if not project or not dataset or not temp_location:
            raise ValueError(
                "the bigquery sink needs --bq-project, --bq-dataset and --temp-location"
            )
        self.warehouse = BigQueryWarehouse(project, dataset, location)
        self.temp_location = temp_location.rstrip("/")
        self.name = f"bigquery:{project}.{dataset}"

    def staging_root(self) -> str:
        """Where runs stage their stats (``<temp location>/<run>``, with a lease each)."""
        return self.temp_location

    def stats_dir(self, run_id: str) -> str:
        return f"{self.temp_location}/{run_id}/_stats"

    def sink(self, run_id: str, tables: list[str]) -> BigQueryStagingSink:
        specs = [_spec(t) for t in tables]
        return BigQueryStagingSink(self.warehouse.project, self.warehouse.dataset, run_id, specs)

    def commit(
        self, staging_id: str, verdicts: list[FileVerdict], tables: list[str], run_id: str
    ) -> dict[str, int]:
        self.warehouse.commit(staging_id, verdicts, [_spec(t) for t in tables], run_id)
        return {}

    def cleanup(self, run_id: str) -> None:
        from services.common import storage

        storage.storage_for(self.temp_location).delete(f"{self.temp_location}/{run_id}")

    def ensure_tables(self) -> None:
        self.warehouse.ensure_tables()

    def ledger(self) -> dict[str, LedgerEntry]:
        return self.warehouse.ledger()

    def reset(self, scan_types: Iterable[str]) -> None:
        self.warehouse.reset(scan_types)


def _spec(name: str) -> TableSpec:
    for spec in ALL_TABLES:
        if spec.name == name:
            return spec
    raise KeyError(name)
