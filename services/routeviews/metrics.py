"""Prometheus metrics of the routeviews mirror (one declaration point, own registry).

The registry can be written to a node-exporter textfile (``--metrics-file``) or pushed
to a Pushgateway (``--pushgateway``, job ``cp_routeviews``) at the end of a run.

Example:
    >>> m = MirrorMetrics()
    >>> m.files.labels(kind="routeviews", result="mirrored").inc()
    >>> m.registry.get_sample_value(
    ...     "cp_routeviews_files_total", {"kind": "routeviews", "result": "mirrored"})
    1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

RESULTS = ("mirrored", "skipped", "missing", "failed")
COMPILE_RESULTS = ("compiled", "present", "failed")


class MirrorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.files = Counter(
            "cp_routeviews_files",
            "Reference files handled, by kind and result (mirrored/skipped/missing/failed)",
            ["kind", "result"],
            registry=r,
        )
        self.bytes = Counter(
            "cp_routeviews_bytes", "Bytes downloaded and published", ["kind"], registry=r
        )
        self.listing_failures = Counter(
            "cp_routeviews_listing_failures",
            "Creation logs or directory indexes that could not be read",
            ["kind"],
            registry=r,
        )
        self.last_failure = Gauge(
            "cp_routeviews_last_failure_timestamp_seconds",
            "Unix time of the last run that failed or was stopped by a signal",
            registry=r,
        )
        self.last_success = Gauge(
            "cp_routeviews_last_success_timestamp_seconds",
            "Unix time of the last run of this kind that ended without failures",
            ["kind"],
            registry=r,
        )
        self.newest_file = Gauge(
            "cp_routeviews_newest_file_timestamp_seconds",
            "Date (unix time, 00:00 UTC) of the newest file of this kind at the destination",
            ["kind"],
            registry=r,
        )
        self.compiled = Counter(
            "cp_routeviews_compiled",
            "Parsed forms of mirrored files published under compiled/, by kind and result "
            "(compiled/present/failed)",
            ["kind", "result"],
            registry=r,
        )
        self.duration = Gauge(
            "cp_routeviews_run_duration_seconds", "Wall time of the last run", registry=r
        )
        # Every (kind, result) series exists from the start, so rate() and absent() work.
        self._kinds: set[str] = set()

    def touch(self, kind: str) -> None:
        """Create the kind's series at zero."""
        if kind in self._kinds:
            return
        self._kinds.add(kind)
        for result in RESULTS:
            self.files.labels(kind=kind, result=result)
        self.bytes.labels(kind=kind)
        self.listing_failures.labels(kind=kind)
        for result in COMPILE_RESULTS:
            self.compiled.labels(kind=kind, result=result)
