"""Hand a batch job's Prometheus registry over: a textfile and/or a Pushgateway push.

Both are optional; a failure is logged and never fails the job (the job's own result is
what matters, and ``*_last_success_timestamp_seconds`` going stale is what alerts).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> export_metrics(CollectorRegistry(), job="demo")  # nothing configured: no-op
    []
"""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway, write_to_textfile

from services.common.logsetup import get_logger

LAST_SUCCESS_SUFFIX = "_last_success_timestamp_seconds"


LAST_FAILURE_SUFFIX = "_last_failure_timestamp_seconds"


class _Pushed:
    """The registry as pushed: ``*_last_success_timestamp_seconds`` only after a success,
    ``*_last_failure_timestamp_seconds`` only when set (never as 0)."""

    def __init__(self, registry: CollectorRegistry, succeeded: bool) -> None:
        self.registry = registry
        self.succeeded = succeeded

    def collect(self) -> Any:
        out = []
        for m in self.registry.collect():
            if not self.succeeded and m.name.endswith(LAST_SUCCESS_SUFFIX):
                continue
            if m.name.endswith(LAST_FAILURE_SUFFIX) and not any(s.value for s in m.samples):
                continue
            out.append(m)
        return out


def export_metrics(
    registry: CollectorRegistry,
    job: str,
    metrics_file: str | None = None,
    pushgateway: str | None = None,
    grouping_key: dict[str, str] | None = None,
    succeeded: bool = True,
) -> list[str]:
    """Write ``metrics_file`` (node-exporter textfile format) and push; return what worked.

    Pushes use add semantics (POST): metrics of this run replace those of the same name
    in the group, others stay. After a failed run ``*_last_success_timestamp_seconds`` is
    not sent at all, so the previous success time survives and staleness alerts work;
    likewise ``*_last_failure_timestamp_seconds`` is sent only when a failure set it.
    """
    log: Any = get_logger("metrics_export", job=job)
    done: list[str] = []
    # A success never overwrites the last failure time, nor a failure the last success.
    source: Any = _Pushed(registry, succeeded)
    if metrics_file:
        try:
            write_to_textfile(metrics_file, source)  # writes a temp file, then renames
            done.append(metrics_file)
        except OSError as exc:
            log.warning("metrics_file_failed", path=metrics_file, error=str(exc))
    if pushgateway:
        try:
            pushadd_to_gateway(pushgateway, job=job, registry=source, grouping_key=grouping_key)
            done.append(pushgateway)
        except Exception as exc:  # network trouble must not fail the batch job
            detail = ""
            body = getattr(exc, "read", None)
            if callable(body):  # urllib HTTPError: the gateway says what it rejected
                try:
                    detail = body().decode("utf-8", "replace")[:2000]
                except Exception:
                    detail = ""
            log.warning(
                "metrics_push_failed", gateway=pushgateway, error=str(exc), detail=detail or None
            )
    return done


class RunMetrics(Protocol):
    """A stage's metrics: its own registry and its ``*_last_failure_timestamp_seconds``."""

    registry: CollectorRegistry
    last_failure: Gauge


def export_run_metrics(
    metrics: RunMetrics,
    job: str,
    metrics_file: str | None,
    pushgateway: str | None,
    *,
    failed: bool,
    send_last_success: bool = False,
    grouping_key: dict[str, str] | None = None,
) -> list[str]:
    """:func:`export_metrics` at the end of a run (or when a signal stops it).

    A failed run first sets ``last_failure`` to now and, unless ``send_last_success``
    (a stage whose last-success gauge is set per part that succeeded), is exported
    without its ``*_last_success_timestamp_seconds``.
    """
    if failed:
        metrics.last_failure.set_to_current_time()
    return export_metrics(
        metrics.registry,
        job,
        metrics_file,
        pushgateway,
        grouping_key=grouping_key,
        succeeded=send_last_success or not failed,
    )
