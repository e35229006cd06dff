"""Prometheus metrics of the queries service (own registry, pushed or written per run).

Counters describe the work a run did; ``cp_quality_*`` gauges carry the results of the
data-quality queries (``sql/9N_quality_*.sql``) for the run's quality window.

Example:
    >>> m = QueriesMetrics()
    >>> m.partitions_recomputed.labels(target="merged_reduced_scans").inc(2)
    >>> m.registry.get_sample_value(
    ...     "cp_queries_partitions_recomputed_total", {"target": "merged_reduced_scans"})
    2.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class QueriesMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.partitions_recomputed = Counter(
            "cp_queries_partitions_recomputed",
            "Date partitions of a derived table rebuilt",
            ["target"],
            registry=r,
        )
        self.rows_written = Counter(
            "cp_queries_rows_written",
            "Rows written into derived tables",
            ["target"],
            registry=r,
        )
        self.tables_replaced = Counter(
            "cp_queries_tables_replaced",
            "Whole-table rewrites (e.g. country_names after its file changed)",
            ["target"],
            registry=r,
        )
        self.sources_changed = Counter(
            "cp_queries_sources_changed",
            "Scans whose ledger entries changed since the previous run",
            registry=r,
        )
        self.statements = Counter(
            "cp_queries_statements", "SQL statements/jobs run", ["backend"], registry=r
        )
        self.bytes_billed = Counter(
            "cp_queries_bytes_billed",
            "Bytes billed by BigQuery for the run's jobs",
            ["backend"],
            registry=r,
        )
        self.exported_files = Counter(
            "cp_queries_exported_files",
            "Parquet files written by the researcher export",
            ["table"],
            registry=r,
        )
        self.duration = Gauge(
            "cp_queries_run_duration_seconds", "Wall time of the last run", registry=r
        )
        self.last_failure = Gauge(
            "cp_queries_last_failure_timestamp_seconds",
            "Unix time of the last run that failed or was stopped by a signal",
            registry=r,
        )
        self.last_success = Gauge(
            "cp_queries_last_success_timestamp_seconds",
            "Unix time of the last successful run",
            registry=r,
        )
        # --- data quality (values of the last run's quality window) ---------------------
        self.ledger_lines = Gauge(
            "cp_quality_ledger_lines",
            "Non-empty raw lines the ledger says were read, by scan type and scan date",
            ["scan_type", "date"],
            registry=r,
        )
        self.ledger_rows = Gauge(
            "cp_quality_ledger_rows",
            "Rows the ledger says were written (ok files), by scan type and scan date",
            ["scan_type", "date"],
            registry=r,
        )
        self.table_rows = Gauge(
            "cp_quality_table_rows",
            "Rows the base table holds for the scans of that scan date",
            ["scan_type", "date"],
            registry=r,
        )
        self.completeness = Gauge(
            "cp_quality_completeness_ratio",
            "table rows / ledger rows written (1: nothing lost or duplicated)",
            ["scan_type", "date"],
            registry=r,
        )
        self.line_coverage = Gauge(
            "cp_quality_line_coverage_ratio",
            "(lines that became rows + dead letters) / lines, over files that wrote rows "
            "(1: every raw line is accounted for)",
            ["scan_type", "date"],
            registry=r,
        )
        self.rejected_files = Gauge(
            "cp_quality_rejected_files",
            "Files of the scan date whose latest ledger status is rejected",
            ["scan_type", "date"],
            registry=r,
        )
        self.enrichment = Gauge(
            "cp_quality_enrichment_ratio",
            "Share of rows with IP metadata (field asn or country), by table and date",
            ["table", "date", "field"],
            registry=r,
        )
        self.newest_date = Gauge(
            "cp_quality_newest_date_seconds",
            "Unix time (00:00 UTC) of the newest date with rows, by table",
            ["table"],
            registry=r,
        )
        self.newest_complete_date = Gauge(
            "cp_quality_newest_complete_date_seconds",
            "Unix time (00:00 UTC) of the newest complete date, by table (README)",
            ["table"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "cp_quality_dead_letters",
            "Dead letters in the quality window, by scan type, stage and reason",
            ["scan_type", "stage", "error_class"],
            registry=r,
        )
        self.dropped_rows = Gauge(
            "cp_quality_dropped_rows",
            "Base rows left out of merged_reduced_scans, by scan type, date and reason",
            ["scan_type", "date", "reason"],
            registry=r,
        )
