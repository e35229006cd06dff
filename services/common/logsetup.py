"""One structlog setup for every service: JSON lines on stderr.

Example:
    >>> configure_logging("INFO")
    >>> get_logger("demo").bind(run_id="r1")  # doctest: +ELLIPSIS
    <...>
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False


class _StderrPrinter:
    """Writes each rendered line to the *current* sys.stderr (robust to redirection)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(level: str | None = None) -> None:
    """JSON logs with ISO UTC timestamps; level from argument or $LOG_LEVEL (INFO)."""
    global _configured
    level_name = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    numeric = getattr(logging, level_name, logging.INFO)
    logging.basicConfig(
        stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(message)s"
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: _StderrPrinter(),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str, **context: Any) -> Any:
    """A bound logger carrying `logger=name` and any extra context."""
    if not _configured:
        configure_logging()
    return structlog.get_logger().bind(logger=name, **context)
