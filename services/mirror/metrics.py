"""Prometheus metrics of the mirror (one declaration point, own registry).

Example:
    >>> m = MirrorMetrics()
    >>> m.archives.labels(result="copied").inc()
    >>> m.registry.get_sample_value("cp_mirror_archives_total", {"result": "copied"})
    1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ARCHIVE_RESULTS = ("copied", "skipped", "failed", "unknown_name")
RESOURCE_RESULTS = ("updated", "unchanged", "invalid", "failed")


class MirrorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.found = Counter(
            "cp_mirror_archives_found",
            "Archives listed at the source that pass the name, date and type filters",
            registry=r,
        )
        self.archives = Counter(
            "cp_mirror_archives",
            "Archives handled, by result (copied/skipped/failed/unknown_name)",
            ["result"],
            registry=r,
        )
        for result in ARCHIVE_RESULTS:
            self.archives.labels(result=result)
        self.bytes = Counter("cp_mirror_bytes", "Archive bytes copied", registry=r)
        self.duration = Gauge(
            "cp_mirror_run_duration_seconds", "Wall time of the last archive run", registry=r
        )
        self.last_failure = Gauge(
            "cp_mirror_last_failure_timestamp_seconds",
            "Unix time of the last run that failed or was stopped by a signal",
            registry=r,
        )
        self.last_success = Gauge(
            "cp_mirror_last_success_timestamp_seconds",
            "Unix time of the last archive run without failures",
            registry=r,
        )
        self.resource_files = Counter(
            "cp_mirror_resource_files",
            "Resource files checked, by result (updated/unchanged/invalid/failed)",
            ["result"],
            registry=r,
        )
        for result in RESOURCE_RESULTS:
            self.resource_files.labels(result=result)
        self.resources_last_success = Gauge(
            "cp_mirror_resources_last_success_timestamp_seconds",
            "Unix time of the last resource sync that ended with a valid current set",
            registry=r,
        )
