"""Argument helpers shared by the services' command lines.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_ops_arguments(p)
    >>> p.parse_args(["--log-level", "DEBUG"]).log_level
    'DEBUG'
    >>> date_arg("2021-05-30")
    datetime.date(2021, 5, 30)
"""

from __future__ import annotations

import argparse
import datetime as dt

from services.common.config import env_or
from services.common.scans import SCAN_TYPES


def date_arg(text: str) -> dt.date:
    """argparse type for YYYY-MM-DD dates."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def scan_types_arg(text: str) -> tuple[str, ...] | None:
    """argparse type for a comma list of scan types; "" or "all" means every type (None)."""
    if text in ("", "all"):
        return None
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in SCAN_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scan type(s) {', '.join(unknown)}; known: {', '.join(SCAN_TYPES)}"
        )
    return types


def add_ops_arguments(p: argparse.ArgumentParser) -> None:
    """--metrics-file, --pushgateway and --log-level, the same for every batch stage."""
    p.add_argument(
        "--metrics-file",
        default=env_or("CP_METRICS_FILE"),
        help="write the run's metrics here in Prometheus text format ($CP_METRICS_FILE)",
    )
    p.add_argument(
        "--pushgateway",
        default=env_or("CP_PUSHGATEWAY"),
        help="push the run's metrics to this Pushgateway ($CP_PUSHGATEWAY)",
    )
    p.add_argument("--log-level", default=env_or("LOG_LEVEL", "INFO"), help="($LOG_LEVEL)")


def add_retry_arguments(p: argparse.ArgumentParser, env_prefix: str, backoff: float) -> None:
    """``--retries`` (default 4) and ``--backoff`` (first delay, doubled per retry).

    Defaults come from ``$<env_prefix>_RETRIES`` / ``$<env_prefix>_BACKOFF``.

    >>> p = argparse.ArgumentParser()
    >>> add_retry_arguments(p, "CP_TEST_NOT_SET", 0.5)
    >>> p.parse_args([]).retries, p.parse_args(["--backoff", "2"]).backoff
    (4, 2.0)
    """
    retries_env, backoff_env = f"{env_prefix}_RETRIES", f"{env_prefix}_BACKOFF"
    p.add_argument(
        "--retries",
        type=int,
        default=int(env_or(retries_env, "4") or 4),
        help=f"retries of transient errors (5xx, timeouts, connection) (default 4; ${retries_env})",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=float(env_or(backoff_env, str(backoff)) or backoff),
        help=f"first retry delay in seconds, doubled per retry (default {backoff:g}; "
        f"${backoff_env})",
    )
