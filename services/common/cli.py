r"""Argument helpers and the last words shared by the services' command lines.

Every stderr line of a stage is a Cloud Logging JSON object (``services/common/logsetup.py``),
the last ones too: a usage error is one ``usage_error`` line (exit 2, from
:class:`JsonArgumentParser`), a failed run ends with one ``run_failed`` line
(:func:`fail`). Both have ``severity`` ``ERROR`` and a one-line ``reason`` for people.
``--help`` stays plain text on stdout.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_ops_arguments(p)
    >>> p.parse_args(["--log-level", "DEBUG"]).log_level
    'DEBUG'
    >>> date_arg("2021-05-30")
    datetime.date(2021, 5, 30)
    >>> one_line("Traceback:\n  boom\n")
    'Traceback: | boom'
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import orjson

from services.common import lifecycle, logsetup
from services.common.chain import ChainError, chain_after_success
from services.common.config import env_or
from services.common.scans import SCAN_TYPES

_STAGE_IN_PROG = re.compile(r"\bservices\.(\w+)")


def one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines stripped and joined with `` | ``."""
    return " | ".join(part.strip() for part in str(text).splitlines() if part.strip())


def fail(stage: str, reason: str, exit_code: int = 1, **fields: Any) -> int:
    """Log the one ``run_failed`` line a failed stage ends with; return ``exit_code``.

    Written whatever ``--log-level`` says; ``reason`` is made one line.
    """
    logsetup.write_event(
        "run_failed", "ERROR", stage=stage, reason=one_line(reason), exit_code=exit_code, **fields
    )
    return exit_code


def exception_reason(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, as failure reasons quote it."""
    return f"{type(exc).__name__}: {exc}"


def fail_on_exception(stage: str, exc: Exception, reason: str | None = None) -> int:
    """:func:`fail` for an exception that ended the run (``reason`` defaults to
    :func:`exception_reason`); with ``$CP_DEBUG`` set the exception is raised again."""
    code = fail(stage, reason or exception_reason(exc))
    if os.environ.get("CP_DEBUG"):
        raise exc
    return code


def print_summary(summary: Mapping[str, Any]) -> None:
    """The run's JSON summary (indented) on stdout."""
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def next_stage(stage: str) -> int:
    """Start the next stage after a successful run (no-op unless ``$CP_NEXT_STAGE`` names
    one, see :mod:`services.common.chain`); the exit code: 0, or 1 when it cannot start."""
    try:
        chain_after_success()
    except ChainError as exc:
        return fail(stage, f"could not start the next stage: {exc}")
    return 0


class JsonArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``usage_error`` JSON line (exit 2).

    ``stage`` labels the line; by default it is taken from ``prog``
    (``python -m services.<stage> ...``), so sub-command parsers need not repeat it.
    """

    def __init__(self, *args: Any, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        found = _STAGE_IN_PROG.search(self.prog or "")
        self.stage = stage or (found.group(1) if found else None)

    def error(self, message: str) -> NoReturn:
        logsetup.write_event(
            "usage_error",
            "ERROR",
            stage=self.stage,
            reason=one_line(message),
            usage=one_line(" ".join(self.format_usage().split())),
            help=f"{self.prog} --help",
            exit_code=2,
        )
        self.exit(2)


def run_stage(stage: str, main: Callable[[], int]) -> NoReturn:
    """Process entry point: JSON lines even before logging is configured, then
    :func:`services.common.lifecycle.run_main` (stop signals) and exit with main's code."""
    logsetup.bind_labels(stage=stage)
    logsetup.install_excepthooks()
    sys.exit(lifecycle.run_main(stage, main))


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
    """--metrics-file, --pushgateway, --log-level and --quiet, the same for every batch stage."""
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
    p.add_argument(
        "--log-level",
        default=env_or("LOG_LEVEL", "INFO"),
        help="least severity of the JSON log lines on stderr: DEBUG, INFO, WARNING, ERROR "
        "(default INFO; $LOG_LEVEL)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        default=env_or("CP_PROGRESS", "") == "0",
        help="no progress display on a terminal (CP_PROGRESS=0 does the same); without a "
        "terminal there is none anyway",
    )


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
