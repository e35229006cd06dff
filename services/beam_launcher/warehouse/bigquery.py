"""The production warehouse: BigQuery tables partitioned by date, clustered by country/ASN.

A run loads its rows into per-run staging tables (Beam's BigQuery sink, file loads),
then one multi-statement transaction replaces the processed files' rows in the base
tables, the dead letters and the ledger. Re-running a file therefore never duplicates or
loses rows, and a failed run leaves the base tables untouched.

Runs side by side, on any host: which run processes a file is decided by a lease row in
``_file_leases`` (one MERGE, atomic, claims every unit not held or whose lease has
expired; a MERGE that collides with a concurrent change fails and is retried on the new
data, so two runs never both win a unit). Leases expire (``LEASE_TTL_S``, renewed while
the run lives), so a crashed run blocks nothing for long. Commits that collide with a concurrent
transaction are retried. A run's staging tables ``_staging_<run>_<table>`` are dropped
after its commit and on failure or abort; a starting run drops those of dead runs (their
lease in the temp location is dead, or, without a lease, older than a day).

``--full`` without a date window builds each table's new version beside the live one as
its own table ``<table>__v<N>`` and switches the stable table to it when complete, in
steps a rerun can repeat (:meth:`BigQueryWarehouse._switch`); readers keep querying the
real table ``<table>``.

Example:
    >>> [f.name for f in schema_fields(DEAD_LETTER)][:3]
    ['date', 'scan_type', 'source']
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import apache_beam as beam

from services.beam_launcher.warehouse.local import (
    Claim,
    FileVerdict,
    LedgerEntry,
    _test_kill_point,
)
from services.beam_launcher.warehouse.rebuild import (
    SwitchRefused,
    TableVersion,
    WarehouseTarget,
    building_version,
    count_problems,
    find_version,
)
from services.beam_launcher.warehouse.rows import (
    ALL_TABLES,
    DEAD_LETTER,
    PROCESSED_FILES,
    SATELLITE_SCAN,
    SCAN_TABLES,
)
from services.beam_launcher.warehouse.schema_versions import (
    ADDITIVE,
    BUILDING,
    DEFAULT_SWITCH_WAIT_S,
    LIVE,
    NEW_TABLE,
    OLD,
    SCHEMA_TABLE,
    SCHEMA_VERSIONS,
    SWITCH_WAIT_ENV,
    TABLE_VERSIONS,
    TABLE_VERSIONS_SPEC,
    VERSION_FILES,
    VERSION_FILES_SPEC,
    SchemaChangeRefused,
    SchemaCheck,
    SchemaRecord,
    next_version_id,
    switch_wait_seconds,
    version_name,
)
from services.common import lifecycle
from services.common.bqclient import bigquery_client, emulator_host
from services.common.logsetup import get_logger
from services.common.rowschema import RECORD, REPEATED, Column, TableSpec

LEASE_TABLE = "_file_leases"
LEASE_TTL_S = 3600  # a lease not renewed for this long is free again
LEASE_RENEW_S = LEASE_TTL_S / 4
STAGING_MAX_AGE_S = 24 * 3600.0  # a staging table without a lease is swept after this
STAGING_PREFIX = "_staging_"
_STAGING_NAME = re.compile(r"^_staging_(\d{8}t\d{6})_([0-9a-f]{6})_([a-z]{3})_[a-z_]+$")
# Messages of BigQuery (and of the emulator's engine) when a DML statement or transaction
# collided with a concurrent one; such a statement is safe to run again.
CONFLICT_MARKERS = ("concurrent update", "could not serialize access", "conflict")
CONFLICT_ATTEMPTS = 8
SWITCHING = "switching"  # a version whose switch began (see BigQueryWarehouse._switch)
PREPARING = "preparing"  # a switch waits for commits in flight before copying the table
SWITCH_MARKED = (PREPARING, SWITCHING)  # a nightly's commit into the table is refused
SWITCH_POLL_S = 5.0
# The text of the error a commit raises when a switch of one of its tables is marked
# (no word of CONFLICT_MARKERS: such a commit is not retried, the next run does it).
SWITCH_REFUSAL = "table switch in progress"
T = TypeVar("T")


class CommitRefused(RuntimeError):
    """A commit refused because a switch of one of its tables is marked: nothing changed."""


def is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in CONFLICT_MARKERS)


def retry_conflicts(fn: Callable[[], T], what: str, log: Any = None) -> T:
    """``fn()``, run again (with backoff) while it fails on a concurrent update."""
    log = log or get_logger("beam_launcher")
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return fn()
        except Exception as exc:
            lifecycle.reraise_if_aborted(exc)
            if attempt == CONFLICT_ATTEMPTS or not is_conflict(exc):
                raise
            log.info("bigquery_conflict_retry", what=what, attempt=attempt, error=str(exc)[:200])
            time.sleep(min(0.2 * 2**attempt, 10.0))
    raise AssertionError("unreachable")


def schema_fields(spec: TableSpec) -> list[Any]:
    """The spec as google-cloud-bigquery SchemaField objects (validated by the client)."""
    from google.cloud.bigquery import SchemaField

    return [SchemaField.from_api_repr(f) for f in spec.bigquery_schema()]


def staging_table(spec: TableSpec, run_id: str) -> str:
    return f"{STAGING_PREFIX}{run_id.replace('-', '_')}_{spec.name}"


def staging_run_id(table: str) -> str | None:
    """The run (``<time>-<hex>-<family>``) a staging table name belongs to, if it is one."""
    m = _STAGING_NAME.match(table)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


LEASE_FIELDS = (
    ("unit", "STRING", "REQUIRED"),
    ("run_id", "STRING", "REQUIRED"),
    ("holder", "STRING", "NULLABLE"),
    ("claimed_at", "TIMESTAMP", "NULLABLE"),
    ("expires_at", "TIMESTAMP", "REQUIRED"),
)


def claim_statement(project: str, dataset: str) -> str:
    """One MERGE: every unit of ``@units`` that is free or whose lease expired becomes ours."""
    leases = table_ref(project, dataset, LEASE_TABLE)
    expiry = "TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @ttl_s SECOND)"
    return (
        f"MERGE {leases} AS l "
        "USING (SELECT unit FROM UNNEST(@units) AS unit) AS c ON l.unit = c.unit "
        "WHEN MATCHED AND l.expires_at < CURRENT_TIMESTAMP() THEN UPDATE SET "
        f"run_id = @run_id, holder = @holder, claimed_at = CURRENT_TIMESTAMP(), "
        f"expires_at = {expiry} "
        "WHEN NOT MATCHED THEN INSERT (unit, run_id, holder, claimed_at, expires_at) "
        f"VALUES (c.unit, @run_id, @holder, CURRENT_TIMESTAMP(), {expiry})"
    )


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
    project: str,
    dataset: str,
    run_id: str,
    verdicts: list[FileVerdict],
    tables: list[TableSpec],
    builds: Mapping[str, str] | None = None,
) -> str:
    """The transaction that publishes a run (file keys are passed as query parameters).

    Parameters: ``@ok_keys`` (files whose rows are published), ``@ok_sources`` (Satellite
    scans whose rows are published: they are replaced per scan), ``@all_keys`` (every
    judged file: its dead letters are replaced) and ``@ledger_keys`` (ledger rows replaced).
    ``builds`` (table -> the name of its version being built beside, ``--full``): those
    tables' rows go into that version's table and their files' ledger rows into
    ``version_files`` (``@version_keys``: ``<version>|<file key>``, ``@version_rows``).
    A check before the ledger rows fails the transaction (``ERROR()``, text
    ``SWITCH_REFUSAL``) while a version of a stable table it writes is ``preparing`` or
    ``switching`` (see :meth:`BigQueryWarehouse._switch`).
    """
    builds = dict(builds or {})
    built = {SCAN_TABLES[v.task.scan_type].name for v in verdicts} & set(builds)
    live_files = any(SCAN_TABLES[v.task.scan_type].name not in builds for v in verdicts)
    stmts = ["BEGIN TRANSACTION;"]
    guard = ""
    guarded = guarded_tables(tables, builds)
    if guarded:
        # Before the ledger rows of the files written to the stable tables: a switch marked
        # on one of these tables (it copies, then replaces the stable table) fails the whole
        # transaction, so no row is lost to it. A statement of its own, SELECT IF(…, ERROR(),
        # TRUE): ERROR() inside IF is evaluated only when the condition holds (BigQuery
        # gives ERROR no evaluation order otherwise, so not SELECT ERROR() … WHERE …), and
        # bqemulator 1.4.0 answers 500 to IF … THEN RAISE.
        versions = table_ref(project, dataset, TABLE_VERSIONS)
        marked = ", ".join(f"'{s}'" for s in SWITCH_MARKED)
        names = ", ".join(f"'{t}'" for t in guarded)
        guard = (
            f"SELECT IF((SELECT COUNT(*) FROM {versions} WHERE table_name IN ({names}) "
            f"AND state IN ({marked})) > 0, ERROR('{SWITCH_REFUSAL}: a version of "
            f"{', '.join(guarded)} is being switched to'), TRUE) AS switch_check;"
        )
    for spec in tables:
        if spec.name == SATELLITE_SCAN.name:
            cond = "source IN UNNEST(@ok_sources)"
        else:
            keys = "@all_keys" if spec.name == DEAD_LETTER.name else "@ok_keys"
            cond = f"CONCAT(source, '/', source_file) IN UNNEST({keys})"
        target = table_ref(project, dataset, builds.get(spec.name, spec.name))
        staged = table_ref(project, dataset, staging_table(spec, run_id))
        # Columns by name: a column added by a migration comes last in the live table.
        cols = ", ".join(f"`{c}`" for c in spec.column_names)
        stmts.append(f"DELETE FROM {target} WHERE {cond};")
        stmts.append(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {staged} WHERE {cond};")
    ledger = table_ref(project, dataset, PROCESSED_FILES.name)
    if live_files or not built:
        if guard:
            stmts.append(guard)
        stmts.append(f"DELETE FROM {ledger} WHERE file_key IN UNNEST(@ledger_keys);")
        stmts.append(f"INSERT INTO {ledger} SELECT * FROM UNNEST(@ledger_rows);")
    if built:
        versions = table_ref(project, dataset, VERSION_FILES)
        names = ", ".join(f"`{c}`" for c in VERSION_FILES_SPEC.column_names)
        stmts.append(
            f"DELETE FROM {versions} WHERE CONCAT(table_version, '|', file_key) "
            "IN UNNEST(@version_keys);"
        )
        stmts.append(f"INSERT INTO {versions} ({names}) SELECT {names} FROM UNNEST(@version_rows);")
    stmts.append("COMMIT TRANSACTION;")
    return "\n".join(stmts)


def guarded_tables(tables: Iterable[TableSpec], builds: Mapping[str, Any]) -> list[str]:
    """The scan tables a commit writes as they are (not a version built beside).

    >>> guarded_tables([SCAN_TABLES["echo"], DEAD_LETTER], {})
    ['echo_scan']
    """
    scan = {s.name for s in SCAN_TABLES.values()}
    return sorted(s.name for s in tables if s.name in scan and s.name not in builds)


def lease_scan_type(unit: str) -> str | None:
    """The scan type of a lease unit (``<scan>/<file>`` or a Satellite ``<scan>``).

    >>> lease_scan_type("CP_Quack-echo-2021-05-30-01-01-01/results.json")
    'echo'
    """
    from services.common.scans import UnknownScanName, parse_scan_name

    try:
        return parse_scan_name(unit.split("/", 1)[0]).scan_type
    except UnknownScanName:
        return None


class BigQueryWarehouse:
    """Tables, ledger and run commits on BigQuery (client created lazily)."""

    def __init__(
        self,
        project: str,
        dataset: str,
        location: str | None = None,
        client: Any = None,
        switch_wait_s: float | None = None,
    ):
        self.project = project
        self.dataset = dataset
        self.location = location
        self._client = client
        # How long a switch waits for other runs' leases (default: $CP_SWITCH_WAIT_SECONDS,
        # else DEFAULT_SWITCH_WAIT_S); ValueError naming the variable when it is not valid.
        if switch_wait_s is None:
            env = os.environ.get(SWITCH_WAIT_ENV, "").strip()
            try:
                switch_wait_s = switch_wait_seconds(env or DEFAULT_SWITCH_WAIT_S)
            except ValueError as exc:
                raise ValueError(f"${SWITCH_WAIT_ENV}: {exc}") from None
        self.switch_wait_s = switch_wait_seconds(switch_wait_s)

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
        from google.cloud import bigquery

        self.client.create_dataset(f"{self.project}.{self.dataset}", exists_ok=True)
        for spec in ALL_TABLES:
            self.client.create_table(self._table(spec), exists_ok=True)
        leases = bigquery.Table(
            f"{self.project}.{self.dataset}.{LEASE_TABLE}",
            [bigquery.SchemaField(n, t, mode=m) for n, t, m in LEASE_FIELDS],
        )
        leases.description = "Which launcher run processes which file (or Satellite scan) now."
        self.client.create_table(leases, exists_ok=True)
        self.client.create_table(self._table(SCHEMA_VERSIONS), exists_ok=True)
        self._ensure_version_tables()  # a commit checks table_versions for a switch

    def schema_records(self) -> dict[str, SchemaRecord]:
        """The ``schema_versions`` rows; empty when the dataset has none yet."""
        import orjson
        from google.api_core.exceptions import NotFound

        sql = (
            "SELECT table_name, schema_version, schema_hash, columns, pipeline_version FROM "
            f"{table_ref(self.project, self.dataset, SCHEMA_TABLE)}"
        )
        try:
            rows = list(self.client.query(sql).result())
        except NotFound:
            return {}
        return {
            r["table_name"]: SchemaRecord(
                r["table_name"],
                int(r["schema_version"]),
                r["schema_hash"],
                orjson.loads(r["columns"]),
                r["pipeline_version"],
            )
            for r in rows
        }

    def apply_schema(
        self, check: SchemaCheck, pipeline_version: str, rebuilt: Iterable[str] = ()
    ) -> list[str]:
        """Add the new NULLABLE columns of additive tables in place, then record the
        code's schema versions of new, additive and ``rebuilt`` tables.

        New top-level columns: one ``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` per table
        (BigQuery appends them; the commit names its columns). New fields inside a
        RECORD: a schema update (``update_table``) appending them to the RECORD.
        """
        from google.cloud import bigquery

        specs = {s.name: s for s in ALL_TABLES}
        for table in check.of_kind(ADDITIVE):
            spec = specs[table]
            added = check.changes[table].added
            top = [spec.column(a) for a in added if "." not in a]
            if top:
                clauses = ", ".join(
                    f"ADD COLUMN IF NOT EXISTS `{c.name}` {ddl_type(c)}" for c in top
                )
                self.client.query(
                    f"ALTER TABLE {table_ref(self.project, self.dataset, table)} {clauses}"
                ).result()
            if any("." in a for a in added):
                live = self.client.get_table(f"{self.project}.{self.dataset}.{table}")
                merged = merged_schema(
                    [f.to_api_repr() for f in live.schema], spec.bigquery_schema(), table
                )
                live.schema = [bigquery.SchemaField.from_api_repr(f) for f in merged]
                self.client.update_table(live, ["schema"])
        record = [*check.of_kind(NEW_TABLE, ADDITIVE), *rebuilt]
        target = table_ref(self.project, self.dataset, SCHEMA_TABLE)
        for table in record:
            rec = SchemaRecord.of(specs[table], pipeline_version)
            params = [
                bigquery.ScalarQueryParameter("table_name", "STRING", rec.table),
                bigquery.ScalarQueryParameter("schema_version", "INT64", rec.version),
                bigquery.ScalarQueryParameter("schema_hash", "STRING", rec.hash),
                bigquery.ScalarQueryParameter("columns", "STRING", rec.columns_json()),
                bigquery.ScalarQueryParameter("pipeline_version", "STRING", rec.pipeline_version),
            ]
            merge = (
                f"MERGE {target} AS t USING (SELECT @table_name AS table_name) AS s "
                "ON t.table_name = s.table_name "
                "WHEN MATCHED THEN UPDATE SET schema_version = @schema_version, "
                "schema_hash = @schema_hash, columns = @columns, "
                "pipeline_version = @pipeline_version, updated_at = CURRENT_TIMESTAMP() "
                "WHEN NOT MATCHED THEN INSERT (table_name, schema_version, schema_hash, "
                "columns, pipeline_version, updated_at) VALUES (@table_name, "
                "@schema_version, @schema_hash, @columns, @pipeline_version, "
                "CURRENT_TIMESTAMP())"
            )
            config = bigquery.QueryJobConfig(query_parameters=params)

            def submit(sql: str = merge, cfg: Any = config) -> Any:
                return self.client.query(sql, job_config=cfg).result()

            retry_conflicts(submit, "record schema version")
        return record

    def ledger(self, keys: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        """The ledger (only ``keys`` when given); empty when the dataset has none yet."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        sql = (
            "SELECT file_key, version, status, pipeline_version FROM "
            f"{table_ref(self.project, self.dataset, PROCESSED_FILES.name)}"
        )
        config = None
        if keys is not None:
            sql += " WHERE file_key IN UNNEST(@keys)"
            config = bigquery.QueryJobConfig(
                query_parameters=[bigquery.ArrayQueryParameter("keys", "STRING", sorted(keys))]
            )
        try:
            rows = list(self.client.query(sql, job_config=config).result())
        except NotFound:  # nothing written yet: a run with nothing to write creates nothing
            return {}
        return {
            r["file_key"]: LedgerEntry(r["version"], r["status"], r["pipeline_version"])
            for r in rows
        }

    # -- leases ---------------------------------------------------------------------------

    def claim(self, units: list[str], run_id: str, ttl_s: int = LEASE_TTL_S) -> Claim:
        """Lease ``units`` to ``run_id`` where free or expired; report who holds the rest."""
        from google.cloud import bigquery

        claim = Claim()
        if not units:
            return claim
        doc = lifecycle.lease_doc("beam_launcher")
        holder = f"host {doc['host']}, pid {doc['pid']}"
        params = [
            bigquery.ArrayQueryParameter("units", "STRING", units),
            bigquery.ScalarQueryParameter("run_id", "STRING", run_id),
            bigquery.ScalarQueryParameter("holder", "STRING", holder),
            bigquery.ScalarQueryParameter("ttl_s", "INT64", ttl_s),
        ]
        merge = claim_statement(self.project, self.dataset)
        retry_conflicts(
            lambda: self.client.query(
                merge, job_config=bigquery.QueryJobConfig(query_parameters=params)
            ).result(),
            "claim leases",
        )
        held = self.client.query(
            "SELECT unit, run_id, holder FROM "
            f"{table_ref(self.project, self.dataset, LEASE_TABLE)} WHERE unit IN UNNEST(@units)",
            job_config=bigquery.QueryJobConfig(query_parameters=params[:1]),
        ).result()
        owners = {r["unit"]: (r["run_id"], r["holder"]) for r in held}
        for unit in units:
            owner, where = owners.get(unit, (None, None))
            if owner == run_id:
                claim.mine.append(unit)
            else:
                claim.others[unit] = f"run {owner} ({where})"
        return claim

    def _lease_dml(self, sql: str, run_id: str, what: str, ttl_s: int = LEASE_TTL_S) -> int:
        from google.cloud import bigquery

        params = [bigquery.ScalarQueryParameter("run_id", "STRING", run_id)]
        if "@ttl_s" in sql:
            params.append(bigquery.ScalarQueryParameter("ttl_s", "INT64", ttl_s))
        job = retry_conflicts(
            lambda: self.client.query(
                sql, job_config=bigquery.QueryJobConfig(query_parameters=params)
            ),
            what,
        )
        job.result()
        return int(job.num_dml_affected_rows or 0)

    def renew(self, run_id: str, ttl_s: int = LEASE_TTL_S) -> int:
        """Push this run's lease expiry ``ttl_s`` ahead; returns the leases renewed."""
        return self._lease_dml(
            f"UPDATE {table_ref(self.project, self.dataset, LEASE_TABLE)} SET expires_at = "
            "TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @ttl_s SECOND) WHERE run_id = @run_id",
            run_id,
            "renew leases",
            ttl_s,
        )

    def release(self, run_id: str) -> int:
        """Drop this run's leases; returns how many."""
        return self._lease_dml(
            f"DELETE FROM {table_ref(self.project, self.dataset, LEASE_TABLE)} "
            "WHERE run_id = @run_id",
            run_id,
            "release leases",
        )

    # -- staging tables -------------------------------------------------------------------

    def drop_staging(self, staging_id: str, tables: Iterable[TableSpec] = ALL_TABLES) -> None:
        for spec in tables:
            self.client.delete_table(
                f"{self.project}.{self.dataset}.{staging_table(spec, staging_id)}",
                not_found_ok=True,
            )

    def sweep_staging(self, lease_root: str, max_age_s: float = STAGING_MAX_AGE_S) -> None:
        """Drop staging tables of runs that are gone; log one line.

        A table's run is judged by its lease in ``lease_root`` (the temp location) the way
        :class:`services.common.lifecycle.StagingArea` judges staging folders: same host,
        pid and start time; other hosts, age. A table without a lease is dropped when it
        is older than ``max_age_s``.
        """
        from google.api_core.exceptions import NotFound

        log: Any = get_logger("beam_launcher")
        removed: list[str] = []
        kept_live = kept_unknown = 0
        try:
            tables = list(self.client.list_tables(f"{self.project}.{self.dataset}"))
        except NotFound:
            return
        now = dt.datetime.now(dt.UTC)
        for item in tables:
            name = item.table_id
            if not name.startswith(STAGING_PREFIX):
                continue
            run = staging_run_id(name)
            lease = f"{lease_root}/{run}{lifecycle.LEASE_SUFFIX}"
            doc = lifecycle.read_lease(lease) if run else None
            if doc is not None:
                state = lifecycle.lease_state(doc, max_age_s)
            else:
                created = item.created or self.client.get_table(item.reference).created
                young = created is not None and (now - created).total_seconds() < max_age_s
                state = "unknown" if young else "dead"
            if state == "alive":
                kept_live += 1
            elif state == "unknown":
                kept_unknown += 1
            else:
                self.client.delete_table(item.reference, not_found_ok=True)
                removed.append(name)
        log.info(
            "bigquery_staging_swept",
            dataset=f"{self.project}.{self.dataset}",
            removed_tables=len(removed),
            removed=removed[:20],
            kept_live=kept_live,
            kept_unknown_owner=kept_unknown,
            owner_check=(
                f"lease in {lease_root}: pid and start time on this host, other hosts when "
                f"older than {max_age_s:g}s; tables without a lease when older than {max_age_s:g}s"
            ),
        )

    def ledger_rows(self, scan_types: Iterable[str]) -> list[tuple[str, str, int, int]]:
        """(scan type, pipeline version, rows, files) of the ok ledger rows: one query."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        sql = (
            "SELECT scan_type, pipeline_version, SUM(rows_written) AS n_rows, "
            "COUNT(*) AS n_files FROM "
            f"{table_ref(self.project, self.dataset, PROCESSED_FILES.name)} "
            "WHERE status = 'ok' AND scan_type IN UNNEST(@types) "
            "GROUP BY scan_type, pipeline_version ORDER BY scan_type, pipeline_version"
        )
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ArrayQueryParameter("types", "STRING", sorted(set(scan_types)))
            ]
        )
        try:
            rows = list(self.client.query(sql, job_config=config).result())
        except NotFound:
            return []
        return [
            (r["scan_type"], r["pipeline_version"], int(r["n_rows"] or 0), int(r["n_files"]))
            for r in rows
        ]

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
        builds: Mapping[str, TableVersion] | None = None,
    ) -> None:
        """Publish staged rows of ``staging_id``; ledger rows carry ``run_id``. ``builds``
        (table -> its version being built beside): see :func:`commit_script`."""
        from google.cloud import bigquery

        run_id = run_id or staging_id
        builds = dict(builds or {})
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
        by_date = self._staged_rows_by_date(staging_id, verdicts, builds)

        def fields(v: FileVerdict) -> list[Any]:
            return [
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
            ]

        def table_of(v: FileVerdict) -> str:
            return SCAN_TABLES[v.task.scan_type].name

        live = [v for v in verdicts if table_of(v) not in builds]
        built = [v for v in verdicts if table_of(v) in builds]
        ledger_rows = [bigquery.StructQueryParameter(None, *fields(v)) for v in live]
        version_rows = [
            bigquery.StructQueryParameter(
                None,
                bigquery.ScalarQueryParameter("table_version", "STRING", builds[table_of(v)].name),
                *fields(v),
                bigquery.ScalarQueryParameter(
                    "rows_by_date", "STRING", by_date.get(v.task.file_key)
                ),
            )
            for v in built
        ]
        names = {t: b.name for t, b in builds.items()}
        script = commit_script(self.project, self.dataset, staging_id, verdicts, tables, names)
        params: list[Any] = [
            bigquery.ArrayQueryParameter("ok_keys", "STRING", ok_keys),
            bigquery.ArrayQueryParameter("all_keys", "STRING", all_keys),
            bigquery.ArrayQueryParameter("ok_sources", "STRING", ok_sources),
        ]
        if live or not built:
            params += [
                bigquery.ArrayQueryParameter(
                    "ledger_keys", "STRING", [v.task.file_key for v in live]
                ),
                bigquery.ArrayQueryParameter("ledger_rows", "STRUCT", ledger_rows),
            ]
        if built:
            params += [
                bigquery.ArrayQueryParameter(
                    "version_keys",
                    "STRING",
                    [f"{builds[table_of(v)].name}|{v.task.file_key}" for v in built],
                ),
                bigquery.ArrayQueryParameter("version_rows", "STRUCT", version_rows),
            ]
        config = bigquery.QueryJobConfig(query_parameters=params)
        # A transaction aborted by a concurrent one (another run's commit) changed nothing:
        # it is submitted again.
        try:
            retry_conflicts(
                lambda: self.client.query(script, job_config=config).result(),
                "commit transaction",
            )
        except Exception as exc:
            if SWITCH_REFUSAL not in str(exc):
                raise
            tables_ = guarded_tables(tables, builds)
            get_logger("beam_launcher", run_id=run_id).error(
                "commit_refused_switch",
                tables=tables_,
                files=len(all_keys),
                effect="nothing written; the files stay unprocessed in the ledger and "
                "the next run commits them into the switched table",
            )
            raise CommitRefused(
                f"commit refused: a switch of {', '.join(tables_)} is in progress; nothing "
                "was written, the next run processes these files again"
            ) from None
        self.drop_staging(staging_id, tables)

    # -- rebuild beside, then switch (--full without a date window) ------------------------

    def _ref(self, name: str) -> str:
        return f"{self.project}.{self.dataset}.{name}"

    def _run(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=list(params))
        return list(self.client.query(sql, job_config=config).result())

    def _staged_rows_by_date(
        self, staging_id: str, verdicts: list[FileVerdict], builds: Mapping[str, TableVersion]
    ) -> dict[str, str]:
        """file key -> JSON {date: rows} of its staged rows, for tables being rebuilt (a
        Satellite scan's rows count for its first ok file, as on the local warehouse)."""
        out: dict[str, dict[str, int]] = {}
        for table in sorted(builds):
            ok = [
                v
                for v in verdicts
                if v.status == "ok" and SCAN_TABLES[v.task.scan_type].name == table
            ]
            if not ok:
                continue
            staged = table_ref(self.project, self.dataset, staging_table(_spec(table), staging_id))
            first: dict[str, str] = {}
            for v in ok:
                first.setdefault(v.task.source, v.task.file_key)
            for r in self._run(
                f"SELECT source, source_file, CAST(date AS STRING) AS day, COUNT(*) AS n "
                f"FROM {staged} GROUP BY source, source_file, day"
            ):
                if table == SATELLITE_SCAN.name:
                    key = first.get(r["source"])
                else:
                    key = f"{r['source']}/{r['source_file']}"
                if key is not None:
                    days = out.setdefault(key, {})
                    days[r["day"]] = days.get(r["day"], 0) + int(r["n"])
        import orjson

        return {k: orjson.dumps(dict(sorted(d.items()))).decode() for k, d in out.items()}

    def _ensure_version_tables(self) -> None:
        self.client.create_table(self._table(TABLE_VERSIONS_SPEC), exists_ok=True)
        self.client.create_table(self._table(VERSION_FILES_SPEC), exists_ok=True)

    def versions(self) -> list[TableVersion]:
        """The ``table_versions`` rows (none before the first rebuild beside)."""
        import orjson
        from google.api_core.exceptions import NotFound

        try:
            rows = self._run(
                "SELECT table_name, version_id, folder, schema_version, schema_hash, columns, "
                f"state FROM {table_ref(self.project, self.dataset, TABLE_VERSIONS)} "
                "ORDER BY table_name, created_at, version_id"
            )
        except NotFound:
            return []
        return [
            TableVersion(
                r["table_name"],
                r["version_id"],
                r["folder"],
                int(r["schema_version"]),
                r["schema_hash"],
                orjson.loads(r["columns"]),
                r["state"],
            )
            for r in rows
        ]

    def building(self) -> dict[str, TableVersion]:
        """Table -> its version being built (or being switched to)."""
        return {v.table: v for v in self.versions() if v.state in (BUILDING, PREPARING, SWITCHING)}

    def _insert_version(self, v: TableVersion, pipeline_version: str) -> None:
        import orjson
        from google.cloud import bigquery

        self._run(
            f"INSERT INTO {table_ref(self.project, self.dataset, TABLE_VERSIONS)} "
            "(table_name, version_id, folder, schema_version, schema_hash, columns, state, "
            "pipeline_version, created_at) VALUES (@t, @v, @f, @sv, @sh, @c, @s, @pv, "
            "CURRENT_TIMESTAMP())",
            [
                bigquery.ScalarQueryParameter("t", "STRING", v.table),
                bigquery.ScalarQueryParameter("v", "STRING", v.version_id),
                bigquery.ScalarQueryParameter("f", "STRING", v.folder),
                bigquery.ScalarQueryParameter("sv", "INT64", v.schema_version),
                bigquery.ScalarQueryParameter("sh", "STRING", v.schema_hash),
                bigquery.ScalarQueryParameter("c", "STRING", orjson.dumps(v.columns).decode()),
                bigquery.ScalarQueryParameter("s", "STRING", v.state),
                bigquery.ScalarQueryParameter("pv", "STRING", pipeline_version),
            ],
        )

    def _set_state(self, v: TableVersion, state: str) -> None:
        from google.cloud import bigquery

        self._run(
            f"UPDATE {table_ref(self.project, self.dataset, TABLE_VERSIONS)} SET state = @s "
            "WHERE table_name = @t AND version_id = @v",
            [
                bigquery.ScalarQueryParameter("s", "STRING", state),
                bigquery.ScalarQueryParameter("t", "STRING", v.table),
                bigquery.ScalarQueryParameter("v", "STRING", v.version_id),
            ],
        )

    def start_rebuild(
        self, tables: Iterable[str], pipeline_version: str
    ) -> dict[str, TableVersion]:
        """Register, or resume, a version of each scan table in ``tables`` with the code's
        columns, built as its own table ``<table>__v<N>`` (same partitioning and
        clustering) beside the live one; returns table -> that version. A building
        version of other columns becomes ``old``. The stable tables do not change."""
        specs = {s.name: s for s in SCAN_TABLES.values()}
        log = get_logger("beam_launcher")
        self._ensure_version_tables()
        records = self.schema_records()
        versions = self.versions()
        out: dict[str, TableVersion] = {}
        for table in sorted(set(tables)):
            code = SchemaRecord.of(specs[table], pipeline_version)
            mine = [v for v in versions if v.table == table]
            pending = [v for v in mine if v.state in (BUILDING, PREPARING, SWITCHING)]
            resumed = [v for v in pending if v.schema_hash == code.hash]
            if resumed:
                out[table] = resumed[-1]
                log.info("rebuild_beside", table=table, version=resumed[-1].name, resumed=True)
                continue
            for v in pending:
                self._set_state(v, OLD)
                log.warning("rebuild_abandoned", version=v.name, reason="other columns")
            taken = [v.version_id for v in mine]
            if not any(v.state == LIVE for v in mine):  # the stable table as it is now
                rec = records.get(table, code)
                live_id = next_version_id(rec.version, taken)
                taken.append(live_id)
                live = TableVersion(
                    table,
                    live_id,
                    version_name(table, live_id),
                    rec.version,
                    rec.hash,
                    rec.columns,
                    LIVE,
                )
                self._insert_version(live, pipeline_version)
            new = building_version(code, taken)
            vid = new.version_id
            # a table no version owns (left by a crash before its row was written): not data
            self.client.delete_table(self._ref(new.name), not_found_ok=True)
            fresh = self._table(specs[table])
            named = type(fresh)(self._ref(new.name), fresh.schema)
            named.time_partitioning = fresh.time_partitioning
            named.clustering_fields = fresh.clustering_fields
            named.description = f"{specs[table].description} (version {vid}, built beside)"
            self.client.create_table(named)
            self._insert_version(new, pipeline_version)
            out[table] = new
            log.info("rebuild_beside", table=table, version=new.name, resumed=False)
        return out

    def version_ledger(self, builds: Mapping[str, TableVersion]) -> dict[str, LedgerEntry]:
        """The ledger of building versions (``version_files``)."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        names = sorted(v.name for v in builds.values())
        if not names:
            return {}
        try:
            rows = self._run(
                "SELECT file_key, version, status, pipeline_version FROM "
                f"{table_ref(self.project, self.dataset, VERSION_FILES)} "
                "WHERE table_version IN UNNEST(@names)",
                [bigquery.ArrayQueryParameter("names", "STRING", names)],
            )
        except NotFound:
            return {}
        return {
            r["file_key"]: LedgerEntry(r["version"], r["status"], r["pipeline_version"])
            for r in rows
        }

    def count_problems(self, v: TableVersion) -> list[str]:
        """Where a version's table disagrees with its ledger: rows per date (from
        ``rows_by_date``; a ledger without it, of a version that was live, is compared in
        total with ``rows_written``). Empty: they agree."""
        from google.cloud import bigquery

        scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == v.table)
        if v.state == LIVE:
            ledger = self._run(
                "SELECT CAST(NULL AS STRING) AS rows_by_date, rows_written FROM "
                f"{table_ref(self.project, self.dataset, PROCESSED_FILES.name)} "
                "WHERE scan_type = @st AND status = 'ok'",
                [bigquery.ScalarQueryParameter("st", "STRING", scan_type)],
            )
            source = v.table
        else:
            ledger = self._run(
                "SELECT rows_by_date, rows_written FROM "
                f"{table_ref(self.project, self.dataset, VERSION_FILES)} "
                "WHERE table_version = @n AND status = 'ok'",
                [bigquery.ScalarQueryParameter("n", "STRING", v.name)],
            )
            source = v.name
        found = {
            r["day"]: int(r["n"])
            for r in self._run(
                "SELECT CAST(date AS STRING) AS day, COUNT(*) AS n FROM "
                f"{table_ref(self.project, self.dataset, source)} GROUP BY day"
            )
        }
        rows = [(r["rows_by_date"], r["rows_written"]) for r in ledger]
        return count_problems(found, rows, f"in {source}")

    def finish_rebuild(
        self,
        build: TableVersion,
        expected: Mapping[str, str | None],
        pipeline_version: str,
        own_run: str | None = None,
    ) -> dict[str, Any]:
        """Check a building version and switch the stable table to it when it is complete:
        every file of ``expected`` (file_key -> version) ok in its ledger with that
        version, and its rows per date equal to its ledger's. Returns what was found
        (``state``: ``switched`` or ``building``; ``switch_refused`` when other runs' leases
        outlasted the switch's wait). ``own_run``: the caller's leases, not waited for."""
        from google.cloud import bigquery

        current = next((v for v in self.versions() if v.name == build.name), None)
        report: dict[str, Any] = {"table": build.table, "version": build.name}
        if current is None or current.state not in (BUILDING, PREPARING, SWITCHING):
            report["state"] = current.state if current else "dropped"
            return report
        ledger = {
            r["file_key"]: (r["version"], r["status"])
            for r in self._run(
                "SELECT file_key, version, status FROM "
                f"{table_ref(self.project, self.dataset, VERSION_FILES)} "
                "WHERE table_version = @n",
                [bigquery.ScalarQueryParameter("n", "STRING", build.name)],
            )
        }
        missing = sorted(k for k, version in expected.items() if ledger.get(k) != (version, "ok"))
        report.update(
            files_expected=len(expected),
            files_done=len(expected) - len(missing),
            files_missing=len(missing),
        )
        if missing:
            report.update(state=BUILDING, first_missing=missing[0])
            return report
        problems = self.count_problems(current)
        if problems:
            report.update(state=BUILDING, count_problems=problems)
            return report
        try:
            self._switch(current, pipeline_version, own_run)
        except SwitchRefused as exc:
            report.update(state=BUILDING, switch_refused=str(exc))
            return report
        report["state"] = "switched"
        return report

    def switch(
        self, table: str, version_id: str, pipeline_version: str, own_run: str | None = None
    ) -> dict[str, Any]:
        """Make an existing version live again (a rollback) once its rows per date equal
        its ledger's."""
        target, previous = find_version(self.versions(), table, version_id)
        if target.state == LIVE:
            return {"table": table, "version": target.name, "state": "already live"}
        problems = self.count_problems(target)
        if problems:
            raise SwitchRefused(f"{target.name} disagrees with its ledger: {'; '.join(problems)}")
        self._switch(target, pipeline_version, own_run)
        return {"table": table, "version": target.name, "state": "switched", "previous": previous}

    def _switch(
        self, target: TableVersion, pipeline_version: str, own_run: str | None = None
    ) -> None:
        """Make ``target`` live; each step is safe to run again after a crash, so rerunning
        the same command finishes an interrupted switch:

        1. (target not yet ``switching``) the target is marked ``preparing``: from then on
           a commit into the stable table fails inside its transaction (see
           :func:`commit_script`), writing nothing. The switch waits (``switch_wait_s``)
           until no other run than ``own_run`` holds an unexpired lease on a file of the
           table's scan type (a commit that began before the mark holds its leases until
           it ended); on timeout the mark is undone and :class:`SwitchRefused` raised,
           nothing changed. Then the stable table's rows are kept as the live version's
           own table (copy job, WRITE_TRUNCATE) and the target is marked ``switching``
           (one DML statement: from here on the stable table is not copied again, as it
           may already hold the target's rows);
        2. one ``CREATE OR REPLACE TABLE <table> … AS SELECT * FROM <target>``: readers of
           the stable name see the old rows, then all the new ones (BigQuery replaces a
           table in one operation; DDL cannot join a transaction);
        3. one transaction: the live version's ledger rows move to ``version_files``, the
           target's into ``processed_files``, states and the schema record follow.
        """
        from google.cloud import bigquery

        table = target.table
        scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == table)
        spec = SCAN_TABLES[scan_type]
        live = next((v for v in self.versions() if v.table == table and v.state == LIVE), None)
        if target.state != SWITCHING:
            self._prepare_switch(target, scan_type, own_run)
            if live is not None:
                copy = bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE")
                self.client.copy_table(
                    self._ref(table), self._ref(live.name), job_config=copy
                ).result()
            self._set_state(target, SWITCHING)
        _test_kill_point("bq_before_replace")
        options = ""
        if spec.partition_field:
            options += f" PARTITION BY `{spec.partition_field}`"
        if spec.clustering:
            options += " CLUSTER BY " + ", ".join(f"`{c}`" for c in spec.clustering)
        self._run(
            f"CREATE OR REPLACE TABLE {table_ref(self.project, self.dataset, table)}{options} "
            f"AS SELECT * FROM {table_ref(self.project, self.dataset, target.name)}"
        )
        _test_kill_point("bq_before_ledger_swap")
        self.swap_ledgers(target, live, pipeline_version)
        get_logger("beam_launcher").info(
            "table_switched",
            table=table,
            version=target.name,
            previous=live.name if live else None,
        )

    def other_leases(self, scan_type: str, own_run: str | None) -> list[str]:
        """Unexpired leases of runs other than ``own_run`` on ``scan_type``'s files:
        ``<unit> (run <id>)``."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        try:
            rows = self._run(
                f"SELECT unit, run_id FROM {table_ref(self.project, self.dataset, LEASE_TABLE)} "
                "WHERE expires_at > CURRENT_TIMESTAMP() AND run_id != @own",
                [bigquery.ScalarQueryParameter("own", "STRING", own_run or "")],
            )
        except NotFound:
            return []
        return sorted(
            f"{r['unit']} (run {r['run_id']})"
            for r in rows
            if lease_scan_type(r["unit"]) == scan_type
        )

    def _prepare_switch(self, target: TableVersion, scan_type: str, own_run: str | None) -> None:
        """Mark ``target`` ``preparing``, then wait for other runs' leases on the table's
        files to end; on timeout restore its state and raise :class:`SwitchRefused`."""
        log = get_logger("beam_launcher")
        before = target.state if target.state != PREPARING else BUILDING
        self._set_state(target, PREPARING)
        deadline = time.monotonic() + self.switch_wait_s
        waited = False
        while True:
            held = self.other_leases(scan_type, own_run)
            if not held:
                break
            if time.monotonic() >= deadline:
                self._set_state(target, before)
                log.error(
                    "switch_wait_timeout",
                    version=target.name,
                    waited_s=self.switch_wait_s,
                    leases=len(held),
                    first=held[0],
                    state_restored=before,
                )
                raise SwitchRefused(
                    f"{target.table} was not switched to {target.name}: after "
                    f"{self.switch_wait_s:g} s other runs still hold {len(held)} lease(s) on "
                    f"{scan_type} files (first: {held[0]}); nothing changed, run it again "
                    "when they have finished"
                )
            if not waited:
                log.info(
                    "switch_waiting_for_leases",
                    version=target.name,
                    leases=len(held),
                    first=held[0],
                    max_wait_s=self.switch_wait_s,
                )
                waited = True
            lifecycle.check()
            time.sleep(min(SWITCH_POLL_S, max(0.0, deadline - time.monotonic())))
        if waited:
            log.info("switch_leases_ended", version=target.name)

    def swap_ledgers(
        self, target: TableVersion, live: TableVersion | None, pipeline_version: str
    ) -> None:
        """Step 3 of :meth:`_switch`: one transaction over the ledgers, states and record."""
        import orjson
        from google.cloud import bigquery

        scan_type = next(t for t, s in SCAN_TABLES.items() if s.name == target.table)
        versions = table_ref(self.project, self.dataset, TABLE_VERSIONS)
        vfiles = table_ref(self.project, self.dataset, VERSION_FILES)
        ledger = table_ref(self.project, self.dataset, PROCESSED_FILES.name)
        schema = table_ref(self.project, self.dataset, SCHEMA_TABLE)
        cols = ", ".join(f"`{c}`" for c in PROCESSED_FILES.column_names)
        stmts = ["BEGIN TRANSACTION;"]
        if live is not None:
            stmts += [
                f"DELETE FROM {vfiles} WHERE table_version = @live;",
                f"INSERT INTO {vfiles} (table_version, {cols}) "
                f"SELECT @live, {cols} FROM {ledger} WHERE scan_type = @scan_type;",
                f"UPDATE {versions} SET state = 'old' WHERE table_name = @table "
                "AND version_id = @live_id;",
            ]
        stmts += [
            f"DELETE FROM {ledger} WHERE scan_type = @scan_type;",
            f"INSERT INTO {ledger} ({cols}) SELECT {cols} FROM {vfiles} "
            "WHERE table_version = @target;",
            f"DELETE FROM {vfiles} WHERE table_version = @target;",
            f"UPDATE {versions} SET state = 'live', switched_at = CURRENT_TIMESTAMP() "
            "WHERE table_name = @table AND version_id = @target_id;",
            f"DELETE FROM {schema} WHERE table_name = @table;",
            f"INSERT INTO {schema} (table_name, schema_version, schema_hash, columns, "
            "pipeline_version, updated_at) VALUES (@table, @sv, @sh, @columns, @pv, "
            "CURRENT_TIMESTAMP());",
            "COMMIT TRANSACTION;",
        ]
        params = [
            bigquery.ScalarQueryParameter("live", "STRING", live.name if live else ""),
            bigquery.ScalarQueryParameter("live_id", "STRING", live.version_id if live else ""),
            bigquery.ScalarQueryParameter("scan_type", "STRING", scan_type),
            bigquery.ScalarQueryParameter("table", "STRING", target.table),
            bigquery.ScalarQueryParameter("target", "STRING", target.name),
            bigquery.ScalarQueryParameter("target_id", "STRING", target.version_id),
            bigquery.ScalarQueryParameter("sv", "INT64", target.schema_version),
            bigquery.ScalarQueryParameter("sh", "STRING", target.schema_hash),
            bigquery.ScalarQueryParameter(
                "columns", "STRING", orjson.dumps(target.columns).decode()
            ),
            bigquery.ScalarQueryParameter("pv", "STRING", pipeline_version),
        ]
        retry_conflicts(lambda: self._run("\n".join(stmts), params), "switch ledgers")

    def drop_version(self, table: str, version_id: str) -> dict[str, Any]:
        """Remove a version that is not live: its table, ledger rows and record."""
        from google.cloud import bigquery

        target, _live = find_version(self.versions(), table, version_id)
        if target.state in (LIVE, PREPARING, SWITCHING):
            raise SwitchRefused(
                f"{target.name} is {target.state} (readers of {table} read it): switch "
                f"{table} to another version first"
            )
        self.client.delete_table(self._ref(target.name), not_found_ok=True)
        self._run(
            f"DELETE FROM {table_ref(self.project, self.dataset, VERSION_FILES)} "
            "WHERE table_version = @n",
            [bigquery.ScalarQueryParameter("n", "STRING", target.name)],
        )
        self._run(
            f"DELETE FROM {table_ref(self.project, self.dataset, TABLE_VERSIONS)} "
            "WHERE table_name = @t AND version_id = @v",
            [
                bigquery.ScalarQueryParameter("t", "STRING", table),
                bigquery.ScalarQueryParameter("v", "STRING", version_id),
            ],
        )
        get_logger("beam_launcher").info("table_version_dropped", version=target.name)
        return {"table": table, "version": target.name, "state": "dropped"}

    def table_versions(self) -> list[dict[str, Any]]:
        """Every table version with its state and rows (the live one: the stable table)."""
        from google.api_core.exceptions import NotFound

        out: list[dict[str, Any]] = []
        for v in self.versions():
            name = v.table if v.state == LIVE else v.name
            try:
                rows = self.client.get_table(self._ref(name)).num_rows
            except NotFound:
                rows = None
            out.append(v.listing(table_read=name, rows=rows))
        return out


def ddl_type(col: Column) -> str:
    """A column's type in BigQuery DDL (``ALTER TABLE … ADD COLUMN``).

    >>> from services.common.rowschema import Column
    >>> ddl_type(Column("r", "RECORD", "", "REPEATED", (Column("n", "INTEGER", ""),)))
    'ARRAY<STRUCT<`n` INT64>>'
    """
    if col.type == RECORD:
        base = "STRUCT<" + ", ".join(f"`{f.name}` {ddl_type(f)}" for f in col.fields) + ">"
    else:
        base = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}.get(col.type, col.type)
    return f"ARRAY<{base}>" if col.mode == REPEATED else base


def merged_schema(
    live: list[dict[str, Any]], code: list[dict[str, Any]], where: str
) -> list[dict[str, Any]]:
    """The live fields in their order, new fields of ``code`` appended (also inside
    RECORDs): what a BigQuery schema update may do. Raises :class:`SchemaChangeRefused`
    when a RECORD's fields would then be in another order than ``code``'s (BigQuery
    matches STRUCT fields by position, so its rows would not load).

    >>> merged_schema([{"name": "a"}], [{"name": "b"}, {"name": "a"}], "t")
    [{'name': 'a'}, {'name': 'b'}]
    """
    by_name = {f["name"]: f for f in code}
    out = []
    for f in live:
        new = by_name.get(f["name"])
        if new is not None and new.get("fields") and f.get("fields"):
            path = f"{where}.{f['name']}"
            fields = merged_schema(f["fields"], new["fields"], path)
            if [x["name"] for x in fields] != [x["name"] for x in new["fields"]]:
                raise SchemaChangeRefused(
                    f"{path}: a new field of a RECORD must come after its existing fields "
                    "in the row definition on BigQuery (fields are appended there, and "
                    "STRUCTs match by position)"
                )
            f = {**f, "fields": fields}
        out.append(f)
    known = {f["name"] for f in live}
    return out + [f for f in code if f["name"] not in known]


class BigQueryTarget(WarehouseTarget[BigQueryWarehouse]):
    """Adapter used by the run: BigQuery tables, stats files under a gs:// temp location."""

    def __init__(self, project: str, dataset: str, temp_location: str, location: str | None = None):
        if not project or not dataset or not temp_location:
            raise ValueError(
                "the bigquery sink needs --bq-project, --bq-dataset and --temp-location"
            )
        self.warehouse = BigQueryWarehouse(project, dataset, location)
        self.temp_location = temp_location.rstrip("/")
        self.name = f"bigquery:{project}.{dataset}"
        self._renewer: tuple[threading.Event, threading.Thread] | None = None
        self._staged: list[str] = []  # staging ids whose tables may exist
        self.builds: dict[str, TableVersion] = {}  # this run's rebuild beside (--full)
        self._lease_run: str | None = None  # run id holding leases

    def staging_root(self) -> str:
        """Where runs stage their stats (``<temp location>/<run>``, with a lease each)."""
        return self.temp_location

    def stats_dir(self, run_id: str) -> str:
        return f"{self.temp_location}/{run_id}/_stats"

    def sink(self, run_id: str, tables: list[str]) -> BigQueryStagingSink:
        if run_id not in self._staged:  # its tables go on cleanup, or on a stop signal
            self._staged.append(run_id)
        lifecycle.hold(self)
        specs = [_spec(t) for t in tables]
        return BigQueryStagingSink(self.warehouse.project, self.warehouse.dataset, run_id, specs)

    def commit(
        self, staging_id: str, verdicts: list[FileVerdict], tables: list[str], run_id: str
    ) -> dict[str, int]:
        specs = [_spec(t) for t in tables]
        self.warehouse.commit(staging_id, verdicts, specs, run_id, self.builds)
        return {}

    def cleanup(self, run_id: str) -> None:
        """After a commit, a failure or an abort: the run's stats files and staging tables."""
        from services.common import storage

        try:
            self.warehouse.drop_staging(run_id)
            if run_id in self._staged:
                self._staged.remove(run_id)
        finally:
            storage.storage_for(self.temp_location).delete(f"{self.temp_location}/{run_id}")

    def release_all(self) -> tuple[int, int]:
        """On a stop signal: drop the staging tables of runs not cleaned up yet, and this
        process's leases (normally both go as the run unwinds; this catches a signal that
        interrupted that cleanup). Returns (runs cleaned, 0)."""
        done = 0
        for run_id in list(self._staged):
            try:
                self.warehouse.drop_staging(run_id)
                self._staged.remove(run_id)
                done += 1
            except Exception as exc:  # the start-up sweep of a later run takes them
                get_logger("beam_launcher").warning(
                    "staging_tables_left", run_id=run_id, error=f"{type(exc).__name__}: {exc}"
                )
        if self._lease_run is not None:
            with contextlib.suppress(Exception):  # expire by themselves otherwise
                self.release([], self._lease_run)
        return done, 0

    def sweep_staging(self) -> None:
        """Staging tables of dead runs (before the temp location's leases are swept)."""
        self.warehouse.sweep_staging(self.temp_location)

    def claim(self, units: list[str], run_id: str) -> Claim:
        self._lease_run = run_id
        lifecycle.hold(self)
        claim = self.warehouse.claim(units, run_id)
        if claim.mine:
            self._start_renewal(run_id)
        return claim

    def release(self, units: list[str], run_id: str) -> int:
        self._stop_renewal()
        released = self.warehouse.release(run_id)
        self._lease_run = None
        return released

    def _start_renewal(self, run_id: str) -> None:
        """Renew this run's leases every ``LEASE_RENEW_S`` while it works."""
        if self._renewer is not None:
            return
        stop = threading.Event()
        log: Any = get_logger("beam_launcher", run_id=run_id)

        def renew() -> None:
            while not stop.wait(LEASE_RENEW_S):
                try:
                    self.warehouse.renew(run_id)
                except Exception as exc:  # the next attempt may succeed; leases then expire
                    log.warning("lease_renewal_failed", error=f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        self._renewer = (stop, thread)

    def _stop_renewal(self) -> None:
        if self._renewer is not None:
            stop, thread = self._renewer
            stop.set()
            thread.join(timeout=5)
            self._renewer = None

    def reset(self, scan_types: Iterable[str]) -> None:
        self.warehouse.reset(scan_types)

    def finish_rebuild(
        self, build: TableVersion, expected: Mapping[str, str | None], pipeline_version: str
    ) -> dict[str, Any]:
        return self.warehouse.finish_rebuild(build, expected, pipeline_version, self._lease_run)


def _spec(name: str) -> TableSpec:
    for spec in ALL_TABLES:
        if spec.name == name:
            return spec
    raise KeyError(name)


def point_beam_at_emulator() -> str | None:
    """Send this process's Beam BigQuery calls (file loads) to ``$BIGQUERY_EMULATOR_HOST``.

    Beam's own API client has a fixed endpoint; with the variable set it is replaced for
    this process (the local runners run their workers in it). Returns the URL used.
    """
    host = emulator_host()
    if host is None:
        return None
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

    url = f"{host}/bigquery/v2/"
    bigquery_v2_client.BigqueryV2.BASE_URL = url
    return url
