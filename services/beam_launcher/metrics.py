"""Prometheus metrics of the beam_launcher (one declaration point).

Metrics live in their own registry so a batch run can push exactly these to a
Pushgateway (grouping: job and scan type) and tests can read them back.

Example:
    >>> m = LauncherMetrics()
    >>> m.files.labels(scan_type="echo", status="ok").inc()
    >>> labels = {"scan_type": "echo", "status": "ok"}
    >>> m.registry.get_sample_value("cp_launcher_files_total", labels)
    1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class LauncherMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.files = Counter(
            "cp_launcher_files",
            "Input files judged, by status (ok/rejected)",
            ["scan_type", "status"],
            registry=r,
        )
        self.files_skipped = Counter(
            "cp_launcher_files_skipped",
            "Input files skipped (already processed or unknown)",
            ["reason"],
            registry=r,
        )
        self.lines = Counter(
            "cp_launcher_lines", "Non-empty input lines read", ["scan_type"], registry=r
        )
        self.rows = Counter(
            "cp_launcher_rows", "Base-table rows written", ["scan_type"], registry=r
        )
        self.dead_letters = Counter(
            "cp_launcher_dead_letters",
            "Lines sent to dead_letter, by error class",
            ["scan_type", "error_class"],
            registry=r,
        )
        self.cert_parse_errors = Counter(
            "cp_launcher_cert_parse_errors",
            "Certificates that could not be parsed",
            ["scan_type"],
            registry=r,
        )
        self.coverage = Gauge(
            "cp_launcher_enrichment_coverage_ratio",
            "Share of the last run's rows with IP metadata, by field",
            ["scan_type", "field"],
            registry=r,
        )
        self.ip_metadata_missing = Gauge(
            "cp_launcher_ip_metadata_missing_lookups",
            "Lookups of the last run with no routeviews file for the date (stale/missing)",
            ["scan_type"],
            registry=r,
        )
        self.beam_counter = Gauge(
            "cp_launcher_beam_counter",
            "Beam counters of the last run (namespace censoredplanet), read back from the job",
            ["name"],
            registry=r,
        )
        self.reprocess_selected = Counter(
            "cp_launcher_reprocess_selected_files",
            "Files selected because an older pipeline version wrote their ledger row "
            "(--reprocess-pipeline-older-than), by that old version",
            ["scan_type", "pipeline_version"],
            registry=r,
        )
        self.ledger_rows = Gauge(
            "cp_launcher_ledger_rows",
            "Base-table rows of ok files in the ledger at the end of the run, by the pipeline "
            "version that wrote them (share per version: a backfill's progress)",
            ["scan_type", "pipeline_version"],
            registry=r,
        )
        self.ledger_files = Gauge(
            "cp_launcher_ledger_files",
            "Ok files in the ledger at the end of the run, by the pipeline version that wrote them",
            ["scan_type", "pipeline_version"],
            registry=r,
        )
        self.schema_version = Gauge(
            "cp_launcher_schema_version",
            "Schema version of each warehouse table after the run's schema check (rows.py "
            "SCHEMA_VERSION; under a breaking change the live one, until a rebuild switches)",
            ["table"],
            registry=r,
        )
        self.rebuild_files = Gauge(
            "cp_launcher_rebuild_files",
            "Files of a rebuild beside the live table (--full): done (ok in the building "
            "version's ledger) and expected (the input's files of its scan type), per table and "
            "building version (<table>__v<N>); set at the end of each rebuild run",
            ["table", "table_version", "state"],
            registry=r,
        )
        self.bytes_read = Counter("cp_launcher_bytes_read", "Bytes of scan files read", registry=r)
        self.duration = Gauge(
            "cp_launcher_run_duration_seconds", "Wall time of the last run", registry=r
        )
        self.last_failure = Gauge(
            "cp_launcher_last_failure_timestamp_seconds",
            "Unix time of the last run that failed or was stopped by a signal",
            registry=r,
        )
        self.last_success = Gauge(
            "cp_launcher_last_success_timestamp_seconds",
            "Unix time of the last run that finished without rejected files",
            registry=r,
        )
