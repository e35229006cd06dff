"""One run of the queries service: tables → country names → derived partitions →
state → quality checks → export.

Example:
    >>> cfg = QueriesConfig(warehouse="wh")
    >>> (cfg.backend, cfg.mode)
    ('duckdb', 'incremental')
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from services.common import lifecycle, progress
from services.common.logsetup import get_logger
from services.common.rowschema import TableSpec
from services.queries import export as export_mod
from services.queries import quality
from services.queries.backends import Array, Backend, BigQueryBackend, DuckDBBackend
from services.queries.countries import load_country_names
from services.queries.incremental import (
    MAX_DATE,
    MIN_DATE,
    ChangeSet,
    chunk_ranges,
    date_range,
    diff,
    ledger_scans,
    scan_window,
)
from services.queries.metrics import QueriesMetrics
from services.queries.sqlfiles import SqlFile, all_files, ordered_files, render, sql_file
from services.queries.tables import (
    BASE_TABLE_NAMES,
    DERIVED_TABLES,
    QUERY_PARTITIONS,
    STATE_TABLES,
)

SPECS: dict[str, TableSpec] = {t.name: t for t in (*DERIVED_TABLES, *STATE_TABLES)}
SOURCE_ROW_FIELDS = {
    "source": "STRING",
    "scan_type": "STRING",
    "files": "INT64",
    "last_processed_at": "TIMESTAMP",
    "date": "DATE",
    "row_count": "INT64",
}
EXPORT_TMP_MAX_AGE_S = 6 * 3600.0  # .tmp-* export files swept at this age if another run lives
COUNTRY_ROW_FIELDS = {"country_code": "STRING", "country_name": "STRING", "status": "STRING"}


class QueriesFailed(RuntimeError):
    """The run could not complete (configuration or a failed query)."""


@dataclass
class QueriesConfig:
    warehouse: str | None = None  # duckdb: the launcher's warehouse folder
    backend: str = "duckdb"  # duckdb | bigquery
    bq_project: str | None = None
    base_dataset: str = "base"  # bigquery: the launcher's dataset (its --bq-dataset)
    derived_dataset: str = "derived"
    bq_location: str | None = None
    dry_run: bool = False  # bigquery: validate every statement, run nothing
    full: bool = False
    start: dt.date | None = None
    end: dt.date | None = None
    export: str | None = None
    country_names: str | None = None  # default: resources/country_names.csv
    quality: bool = True
    quality_days: int = 30
    max_days_per_job: int = 92

    @property
    def mode(self) -> str:
        if self.start or self.end:
            return "range"
        return "full" if self.full else "incremental"

    def validate(self) -> None:
        if self.full and (self.start or self.end):
            raise QueriesFailed("--full and --start/--end exclude each other")
        if (self.start is None) != (self.end is None):
            raise QueriesFailed("--start and --end go together")
        if self.start and self.end and self.start > self.end:
            raise QueriesFailed("--start is after --end")
        if self.backend == "duckdb" and not self.warehouse:
            raise QueriesFailed("the duckdb backend needs --warehouse")
        if self.backend == "bigquery" and not self.bq_project:
            raise QueriesFailed("the bigquery backend needs --bq-project")
        if self.backend not in ("duckdb", "bigquery"):
            raise QueriesFailed(f"unknown backend {self.backend!r}")
        if self.dry_run and self.backend != "bigquery":
            raise QueriesFailed("--dry-run needs the bigquery backend")
        if self.max_days_per_job < 1 or self.quality_days < 1:
            raise QueriesFailed("--max-days-per-job and --quality-days must be positive")


@dataclass
class QueriesSummary:
    run_id: str
    backend: str
    mode: str
    sources_changed: int = 0
    partitions_recomputed: dict[str, list[str]] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    tables_replaced: list[str] = field(default_factory=list)
    quality_window: list[str] | None = None
    quality: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Per scan type over the quality window and every date this run rebuilt: base rows,
    # rows kept in merged_reduced_scans, rows left out by reason (per date:
    # quality["dropped_rows"]).
    dropped_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    exported_files: dict[str, int] = field(default_factory=dict)
    validated_statements: int = 0
    statements: int = 0
    bytes_billed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def make_backend(cfg: QueriesConfig) -> Backend:
    datasets = {"base": cfg.base_dataset, "derived": cfg.derived_dataset}
    if cfg.backend == "bigquery":
        return BigQueryBackend(
            cfg.bq_project or "", datasets, location=cfg.bq_location, dry_run=cfg.dry_run
        )
    # Locally the launcher's tables are in the default schema of warehouse.duckdb.
    return DuckDBBackend(cfg.warehouse or "", {"derived": cfg.derived_dataset})


def _between() -> exp.Expression:
    return exp.Between(
        this=exp.column("date"),
        low=exp.Parameter(this=exp.var("start_date")),
        high=exp.Parameter(this=exp.var("end_date")),
    )


class Service:
    """Runs the SQL files of one run on a backend (statements rendered per backend)."""

    def __init__(self, backend: Backend, metrics: QueriesMetrics, run_id: str) -> None:
        self.backend = backend
        self.metrics = metrics
        self.run_id = run_id
        self.now = dt.datetime.now(dt.UTC)
        self.log: Any = get_logger("queries", run_id=run_id, backend=backend.name)

    # -- plumbing ------------------------------------------------------------------------

    def render(self, stmt: exp.Expression) -> exp.Expression:
        return render(stmt, self.backend)

    def query(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        f = sql_file(name)
        return self.backend.query(self.render(f.statement), self._params(params))

    def atomic(self, stmts: Sequence[exp.Expression], params: Mapping[str, Any]) -> None:
        """One transaction (rolled back on any error, a stop signal included)."""
        lifecycle.check()  # after a stop signal no new transaction begins
        self.backend.run_atomic([self.render(s) for s in stmts], self._params(params))

    def _params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"run_id": self.run_id, "now": self.now, **params}

    def ensure_tables(self) -> None:
        """Create this service's tables; the launcher's must exist (it creates them)."""
        missing = self.backend.missing_tables("base", BASE_TABLE_NAMES)
        if missing:
            raise QueriesFailed(
                f"base tables missing: {', '.join(missing)} (the launcher creates them; "
                "run it first)"
            )
        for spec in (*DERIVED_TABLES, *STATE_TABLES):
            self.backend.ensure_table(spec, "derived")

    def state(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.query("internal/state_get.sql", {})}

    def put_state_statements(self) -> list[exp.Expression]:
        return list(sql_file("internal/state_put.sql").statements)

    # -- replace mode ----------------------------------------------------------------------

    def replace_statements(self, f: SqlFile, spec: TableSpec) -> list[exp.Expression]:
        target = exp.table_(spec.name, db="derived")
        cols = list(spec.column_names)
        select = exp.select(*cols).from_(exp.Subquery(this=f.statement.copy(), alias="q"))
        return [
            exp.delete(target.copy(), where=exp.true()),
            exp.insert(select, target.copy(), columns=cols),
        ]

    def replace_table(
        self, f: SqlFile, spec: TableSpec, fingerprint: str, params: Mapping[str, Any]
    ) -> bool:
        key = f"table:{spec.name}"
        counts = self.query("internal/row_count.sql", {})
        empty = not counts or counts[0]["row_count"] == 0
        if not empty and self.state().get(key) == fingerprint:
            return False
        stmts = self.replace_statements(f, spec) + self.put_state_statements()
        self.atomic(stmts, {**params, "key": key, "value": fingerprint})
        self.metrics.tables_replaced.labels(target=spec.name).inc()
        self.log.info("table_replaced", table=spec.name, fingerprint=fingerprint[:12])
        return True

    # -- partitions mode ---------------------------------------------------------------------

    def partition_statements(self, f: SqlFile, spec: TableSpec) -> list[exp.Expression]:
        """Replace the partitions @start_date..@end_date of ``spec`` and record them."""
        target = exp.table_(spec.name, db="derived")
        record = exp.table_(QUERY_PARTITIONS.name, db="derived")
        cols = list(spec.column_names)
        select = (
            exp.select(*cols)
            .from_(exp.Subquery(this=f.statement.copy(), alias="q"))
            .where(_between())
        )
        if self.backend.name == "duckdb":  # DuckDB has no clustering: store rows in its order
            select = select.order_by(*spec.clustering)
        is_target = exp.EQ(
            this=exp.column("target"), expression=exp.Parameter(this=exp.var("target"))
        )
        counts = (
            exp.select(
                exp.Parameter(this=exp.var("target")),
                exp.column("date"),
                exp.Count(this=exp.Star()),
                exp.Parameter(this=exp.var("run_id")),
                exp.Parameter(this=exp.var("now")),
            )
            .from_(target.copy())
            .where(_between())
            .group_by("date")
        )
        return [
            exp.delete(target.copy(), where=_between()),
            exp.insert(select, target.copy(), columns=cols),
            exp.delete(record.copy(), where=exp.and_(is_target, _between())),
            exp.insert(counts, record.copy(), columns=list(QUERY_PARTITIONS.column_names)),
        ]

    def rebuild(
        self,
        f: SqlFile,
        spec: TableSpec,
        dates: set[dt.date],
        max_days: int,
        params: Mapping[str, Any],
    ) -> tuple[list[dt.date], int]:
        """Rebuild ``dates`` of ``spec`` (one transaction per contiguous range)."""
        stmts = self.partition_statements(f, spec)
        for start, end in chunk_ranges(dates, max_days):
            t0 = time.monotonic()
            self.atomic(
                stmts, {**params, "start_date": start, "end_date": end, "target": spec.name}
            )
            self.log.info(
                "partitions_rebuilt",
                target=spec.name,
                start=start.isoformat(),
                end=end.isoformat(),
                seconds=round(time.monotonic() - t0, 3),
            )
        rows = sum(
            int(r["row_count"] or 0)
            for r in self.query("internal/partitions.sql", {"target": spec.name})
            if r["run_id"] == self.run_id
        )
        self.metrics.partitions_recomputed.labels(target=spec.name).inc(len(dates))
        self.metrics.rows_written.labels(target=spec.name).inc(rows)
        return sorted(dates), rows

    # -- incremental state ---------------------------------------------------------------------

    def changes(self, everything: bool) -> ChangeSet:
        ledger = ledger_scans(self.query("internal/ledger_sources.sql", {}))
        consumed = self.query("internal/consumed_sources.sql", {})
        cs = diff(ledger, consumed, everything)
        lookup = sorted(s for s in cs.changed if s in ledger)
        if cs.all_sources or lookup:
            start, end = (MIN_DATE, MAX_DATE) if cs.all_sources else scan_window(lookup)
            rows = self.query(
                "internal/source_dates.sql",
                {
                    "all_sources": cs.all_sources,
                    "sources": Array("STRING", [] if cs.all_sources else lookup),
                    "start_date": start,
                    "end_date": end,
                },
            )
            for r in rows:
                if r["source"] in cs.changed:
                    cs.dates_now.setdefault(r["source"], {})[r["date"]] = int(r["row_count"])
        return cs

    def save_sources(self, cs: ChangeSet) -> None:
        if not cs.changed and not cs.all_sources:
            return
        stmts = list(sql_file("internal/save_sources.sql").statements)
        rows = cs.source_rows()
        if not rows:
            stmts = stmts[:1]  # nothing to insert (an empty STRUCT array has no type)
        self.atomic(
            stmts,
            {
                "all_sources": cs.all_sources,
                "sources": Array("STRING", sorted(cs.changed)),
                "source_rows": Array("STRUCT", rows, SOURCE_ROW_FIELDS),
            },
        )

    def put_state(self, key: str, value: str) -> None:
        self.atomic(self.put_state_statements(), {"key": key, "value": value})

    def existing_partitions(self, target: str) -> set[dt.date]:
        return {r["date"] for r in self.query("internal/partitions.sql", {"target": target})}

    # -- checks ------------------------------------------------------------------------------

    def run_check(self, f: SqlFile, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
        assert f.check is not None
        rows = self.backend.query(
            self.render(f.statement), self._params({"start_date": start, "end_date": end})
        )
        return quality.publish(f.check, rows, self.metrics)


def sample_params(day: dt.date) -> dict[str, Any]:
    """A value for every parameter any SQL file uses (dry runs and tests)."""
    now = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return {
        "start_date": day - dt.timedelta(days=1),
        "end_date": day,
        "date": day,
        "all_sources": False,
        "sources": Array("STRING", ["CP_Quack-echo-2021-05-30-01-01-01"]),
        "source_rows": Array(
            "STRUCT",
            [
                {
                    "source": "CP_Quack-echo-2021-05-30-01-01-01",
                    "scan_type": "echo",
                    "files": 1,
                    "last_processed_at": now,
                    "date": day,
                    "row_count": 1,
                }
            ],
            SOURCE_ROW_FIELDS,
        ),
        "country_rows": Array(
            "STRUCT",
            [{"country_code": "DE", "country_name": "Germany", "status": "official"}],
            COUNTRY_ROW_FIELDS,
        ),
        "key": "validate",
        "value": "validate",
        "target": "merged_reduced_scans",
        "run_id": "validate",
        "now": now,
    }


def validate_all(svc: Service) -> int:
    """Submit every statement the service can run (BigQuery dry run: nothing changes)."""
    params = sample_params(dt.datetime.now(dt.UTC).date())
    count = 0
    for f in ordered_files():
        if f.mode == "replace":
            stmts = svc.replace_statements(f, SPECS[f.target or ""])
        elif f.mode == "partitions":
            stmts = svc.partition_statements(f, SPECS[f.target or ""])
        else:
            stmts = list(f.statements)
        for stmt in stmts:
            svc.backend.query(svc.render(stmt), {**params})
            count += 1
    for f in all_files():
        if f.name in {o.name for o in ordered_files()}:
            continue
        for stmt in f.statements:
            svc.backend.query(svc.render(stmt), {**params})
            count += 1
    return count


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def run(
    cfg: QueriesConfig, backend: Backend | None = None, metrics: QueriesMetrics | None = None
) -> QueriesSummary:
    """Execute one run; raises QueriesFailed (or the backend's error) on failure."""
    cfg.validate()
    started = time.monotonic()
    metrics = metrics or QueriesMetrics()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S") + "-" + secrets.token_hex(3)
    backend = backend or make_backend(cfg)
    svc = Service(backend, metrics, run_id)
    summary = QueriesSummary(run_id=run_id, backend=backend.name, mode=cfg.mode)
    try:
        if cfg.dry_run:
            summary.validated_statements = validate_all(svc)
            return summary
        files = ordered_files()
        country_rows, country_digest = load_country_names(cfg.country_names)
        params: dict[str, Any] = {
            "country_rows": Array("STRUCT", country_rows, COUNTRY_ROW_FIELDS),
        }
        svc.ensure_tables()
        steps = [f for f in files if f.mode in ("replace", "partitions")]
        steps += [f for f in files if f.mode == "check"] if cfg.quality else []
        shown = progress.task("queries", unit="SQL files", line_unit="rows written")
        shown.add_total(files=len(steps))

        for f in files:
            if f.mode == "replace":
                spec = SPECS[f.target or ""]
                if svc.replace_table(f, spec, _digest(f.text, country_digest), params):
                    summary.tables_replaced.append(spec.name)
                shown.advance(files=1)

        partition_files = [f for f in files if f.mode == "partitions"]
        cs: ChangeSet | None = None
        if cfg.mode != "range":
            cs = svc.changes(everything=cfg.full)
            summary.sources_changed = len(cs.changed)
            metrics.sources_changed.inc(len(cs.changed))
            svc.log.info("changes", sources_changed=len(cs.changed), all_sources=cs.all_sources)
        state = svc.state()
        definitions: dict[str, str] = {}
        for f in partition_files:
            spec = SPECS[f.target or ""]
            definition = _digest(f.text, country_digest)
            definitions[spec.name] = definition
            if cs is None:
                assert cfg.start and cfg.end
                dates = set(date_range(cfg.start, cfg.end))
            elif cs.all_sources or state.get(f"definition:{spec.name}") != definition:
                dates = cs.all_dates | svc.existing_partitions(spec.name)
            else:
                dates = cs.affected_dates
            done, rows = svc.rebuild(f, spec, dates, cfg.max_days_per_job, params)
            summary.partitions_recomputed[spec.name] = [d.isoformat() for d in done]
            summary.rows_written[spec.name] = rows
            shown.advance(files=1, lines=rows)
        if cs is not None:
            svc.save_sources(cs)
            for target, definition in definitions.items():
                if state.get(f"definition:{target}") != definition:
                    svc.put_state(f"definition:{target}", definition)

        if cfg.quality:
            start, end = _quality_window(cfg, svc)
            summary.quality_window = [start.isoformat(), end.isoformat()]
            rebuilt = [
                dt.date.fromisoformat(d) for v in summary.partitions_recomputed.values() for d in v
            ]
            for f in files:
                if f.mode == "check":
                    lo, hi = start, end
                    if f.check == "dropped_rows" and rebuilt:  # also every date rebuilt now
                        lo, hi = min(lo, *rebuilt), max(hi, *rebuilt)
                    summary.quality[f.check or f.name] = svc.run_check(f, lo, hi)
                    shown.advance(files=1)
            if "dropped_rows" in summary.quality:
                summary.dropped_rows = quality.dropped_totals(summary.quality["dropped_rows"])
                _say_dropped(svc.log, summary.dropped_rows)

        if cfg.export:
            temps = lifecycle.TempLease(cfg.export, "queries", EXPORT_TMP_MAX_AGE_S)
            temps.claim_and_sweep()  # .tmp-* files of exports no longer alive go
            try:
                summary.exported_files = export_mod.export(svc, cfg.export, full=cfg.full)
            finally:
                temps.release()
    finally:
        summary.statements = backend.stats.statements
        summary.bytes_billed = backend.stats.bytes_billed
        metrics.statements.labels(backend=backend.name).inc(backend.stats.statements)
        metrics.bytes_billed.labels(backend=backend.name).inc(backend.stats.bytes_billed)
        backend.close()
        summary.seconds = round(time.monotonic() - started, 3)
    metrics.duration.set(summary.seconds)
    metrics.last_success.set_to_current_time()
    svc.log.info(
        "run_done",
        mode=summary.mode,
        sources_changed=summary.sources_changed,
        partitions={k: len(v) for k, v in summary.partitions_recomputed.items()},
        rows_written=summary.rows_written,
        seconds=summary.seconds,
    )
    return summary


def _say_dropped(log: Any, totals: Mapping[str, Mapping[str, Any]]) -> None:
    """One line with the rows left out of merged_reduced_scans per scan type and reason;
    a WARNING when a scan type with base rows has none left there."""
    dropped = {t: dict(v["dropped"]) for t, v in totals.items() if v["dropped"]}
    if dropped:
        log.info("rows_left_out_of_merged_reduced_scans", by_scan_type=dropped)
    empty = {
        t: {"base_rows": v["base_rows"], "dropped": dict(v["dropped"])}
        for t, v in totals.items()
        if v["base_rows"] and not v[quality.KEPT]
    }
    if empty:
        log.warning(
            "scan_types_missing_from_merged_reduced_scans",
            scan_types=sorted(empty),
            detail=empty,
        )


def _quality_window(cfg: QueriesConfig, svc: Service) -> tuple[dt.date, dt.date]:
    """--start/--end; else all dates (--full) or the last --quality-days with data."""
    if cfg.start and cfg.end:
        return cfg.start, cfg.end
    dates = [
        r["date"] for r in svc.query("internal/consumed_sources.sql", {}) if r["date"] is not None
    ]
    newest = max(dates) if dates else dt.datetime.now(dt.UTC).date()
    if cfg.full:
        return (min(dates) if dates else newest), newest
    return newest - dt.timedelta(days=cfg.quality_days - 1), newest
