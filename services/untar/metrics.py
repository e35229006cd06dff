"""Prometheus metrics of untar (one declaration point, own registry).

Example:
    >>> m = UntarMetrics()
    >>> m.archives.labels(result="unpacked").inc()
    >>> m.registry.get_sample_value("cp_untar_archives_total", {"result": "unpacked"})
    1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ARCHIVE_RESULTS = ("unpacked", "skipped", "failed", "rejected", "unknown_name")


class UntarMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.found = Counter(
            "cp_untar_archives_found",
            "Archives with a valid scan name found in the raw location (after filters)",
            registry=r,
        )
        self.archives = Counter(
            "cp_untar_archives",
            "Archives handled, by result (unpacked/skipped/failed/rejected/unknown_name)",
            ["result"],
            registry=r,
        )
        for result in ARCHIVE_RESULTS:
            self.archives.labels(result=result)
        self.members = Counter(
            "cp_untar_members",
            "Archive members, by result (written/skipped)",
            ["result"],
            registry=r,
        )
        self.bytes_read = Counter(
            "cp_untar_bytes_read", "Compressed archive bytes read", registry=r
        )
        self.bytes_written = Counter(
            "cp_untar_bytes_written", "Bytes of gzip files written", registry=r
        )
        self.duration = Gauge(
            "cp_untar_run_duration_seconds", "Wall time of the last run", registry=r
        )
        self.last_failure = Gauge(
            "cp_untar_last_failure_timestamp_seconds",
            "Unix time of the last run that failed or was stopped by a signal",
            registry=r,
        )
        self.last_success = Gauge(
            "cp_untar_last_success_timestamp_seconds",
            "Unix time of the last run without failed or rejected archives",
            registry=r,
        )
