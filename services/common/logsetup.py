"""One logging setup for every service: one Cloud Logging JSON object per line on stderr.

Each line carries the fields Cloud Logging (GKE's agent) reads from a JSON payload:
``severity`` (DEBUG, INFO, WARNING, ERROR, CRITICAL), ``message`` (the event name, e.g.
``run_start``), ``timestamp`` (RFC 3339, UTC) and, when known,
``logging.googleapis.com/labels`` with the run id, scan type and stage as strings. The
other structured fields stay as they are. Standard-library log records (Beam,
google-cloud, google-auth, urllib3, kubernetes, ``warnings.warn``) go through the same
renderer, and an exception becomes an ``exception`` field holding the traceback text.

Example:
    >>> configure_logging("INFO", stage="demo")
    >>> get_logger("demo").bind(run_id="r1")  # doctest: +ELLIPSIS
    <...>
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
import threading
import types
from collections.abc import MutableMapping
from typing import Any

import structlog

LABELS_KEY = "logging.googleapis.com/labels"
SOURCE_KEY = "logging.googleapis.com/sourceLocation"
# Fields that also become Cloud Logging labels (values are sent as strings).
LABEL_FIELDS = ("stage", "run_id", "scan_type")
SEVERITIES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Loggers of libraries we use; kept at WARNING unless the run logs at DEBUG.
THIRD_PARTY = (
    "apache_beam",
    "google",
    "googleapiclient",
    "urllib3",
    "requests",
    "kubernetes",
    "absl",
    "grpc",
)

_METHOD_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "msg": "INFO",
    "log": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}

_configured = False
_write_lock = threading.Lock()
# Labels of this process (stage, scan type, run id). Also bound with bind_contextvars;
# this copy reaches threads that libraries start, which do not inherit context vars.
_process_labels: dict[str, str] = {}

EventDict = MutableMapping[str, Any]


def severity_of_level(levelno: int) -> str:
    """Cloud Logging severity name for a standard-library level number.

    >>> severity_of_level(logging.WARNING), severity_of_level(5), severity_of_level(60)
    ('WARNING', 'DEBUG', 'CRITICAL')
    """
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


def _rfc3339(ts: float) -> str:
    """``2021-05-30T01:02:03.000456Z`` for a POSIX time."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_line(line: str) -> None:
    """One whole line to the *current* sys.stderr (robust to redirection and threads)."""
    with _write_lock:
        stream = sys.stderr
        stream.write(line + "\n")
        stream.flush()


class _StderrPrinter:
    """structlog's output: each rendered line to the current sys.stderr."""

    def msg(self, message: str) -> None:
        _write_line(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _add_process_labels(_logger: Any, _method: str, ed: EventDict) -> EventDict:
    """Process-wide labels as defaults (threads started by libraries lack context vars)."""
    for key, value in _process_labels.items():
        ed.setdefault(key, value)
    return ed


def _from_record(_logger: Any, _method: str, ed: EventDict) -> EventDict:
    """Severity, time, logger name and source location of a standard-library record."""
    record = ed.get("_record")
    if isinstance(record, logging.LogRecord):
        ed["severity"] = severity_of_level(record.levelno)
        ed["timestamp"] = _rfc3339(record.created)
        ed.setdefault("logger", record.name)
        ed[SOURCE_KEY] = {
            "file": record.pathname,
            "line": record.lineno,
            "function": record.funcName,
        }
    return ed


def _timestamp(_logger: Any, _method: str, ed: EventDict) -> EventDict:
    if "timestamp" not in ed:
        ed["timestamp"] = _rfc3339(dt.datetime.now(dt.UTC).timestamp())
    return ed


def cloud_logging_fields(_logger: Any, method: str, ed: EventDict) -> EventDict:
    """Rename structlog's fields to Cloud Logging's and add the labels.

    >>> cloud_logging_fields(None, "warning", {"event": "x", "run_id": 7, "stage": "untar"})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'severity': 'WARNING', 'message': 'x',
     'logging.googleapis.com/labels': {'stage': 'untar', 'run_id': '7'},
     'run_id': 7, 'stage': 'untar'}
    """
    severity = ed.pop("severity", None) or _METHOD_SEVERITY.get(method.lower(), "INFO")
    ed.pop("level", None)
    if "message" in ed:  # a caller's own "message" field must not hide the event name
        ed["msg"] = ed.pop("message")
    message = ed.pop("event", "")
    labels = {k: str(ed[k]) for k in LABEL_FIELDS if ed.get(k) is not None}
    out: dict[str, Any] = {"severity": severity, "message": str(message).rstrip()}
    if "reason" in ed:  # next to the event name: what a person reads first
        out["reason"] = ed.pop("reason")
    if "timestamp" in ed:
        out["timestamp"] = ed.pop("timestamp")
    if labels:
        out[LABELS_KEY] = labels
    out.update(ed)
    return out


def _json(_logger: Any, _method: str, ed: EventDict) -> str:
    """ASCII-only JSON: valid whatever encoding stderr has."""
    return json.dumps(ed, default=repr)


def write_event(event: str, severity: str = "ERROR", **fields: Any) -> None:
    """Write one line now, through the same renderer, whatever the configured level.

    For the last word of a process (``run_failed``, ``usage_error``), which must never be
    filtered out and may come before :func:`configure_logging` has run. The process
    labels and bound context are included.
    """
    ed: dict[str, Any] = {**_process_labels, **structlog.contextvars.get_contextvars()}
    ed.update(fields)
    ed.update(event=event, severity=severity)
    _timestamp(None, "", ed)
    with contextlib.suppress(Exception):  # stderr closed: nothing left to tell
        _write_line(_json(None, "", cloud_logging_fields(None, severity.lower(), ed)))


def _chains() -> tuple[list[Any], list[Any]]:
    """(structlog processors, ProcessorFormatter processors for foreign records)."""
    head: list[Any] = [structlog.contextvars.merge_contextvars, _add_process_labels]
    tail: list[Any] = [
        _timestamp,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        cloud_logging_fields,
        _json,
    ]
    own = [*head, *tail]
    foreign = [
        *head,
        _from_record,
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        *tail,
    ]
    return own, foreign


class _JsonStderrHandler(logging.Handler):
    """Root handler: standard-library records as Cloud Logging JSON lines on stderr."""

    def __init__(self) -> None:
        super().__init__()
        _own, foreign = _chains()
        self.setFormatter(structlog.stdlib.ProcessorFormatter(processors=foreign))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # e.g. bad %-arguments: say so in one JSON line
            ed: dict[str, Any] = {**_process_labels, **structlog.contextvars.get_contextvars()}
            ed.update(
                event="log_record_unformattable",
                severity="ERROR",
                timestamp=_rfc3339(record.created),
                logger=record.name,
                msg=repr(record.msg),
                args=repr(record.args),
                error=f"{type(exc).__name__}: {exc}",
            )
            line = _json(None, "error", cloud_logging_fields(None, "error", ed))
        with contextlib.suppress(Exception):  # stderr closed: nothing left to tell
            _write_line(line)


def _route_stdlib(numeric: int) -> None:
    """Send every standard-library record (and warnings) through one JSON handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        # Ours from an earlier call, or a plain StreamHandler (basicConfig, libraries).
        if isinstance(handler, _JsonStderrHandler) or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.addHandler(_JsonStderrHandler())
    third_party = logging.DEBUG if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    root.setLevel(third_party)
    for name in THIRD_PARTY:
        library_logger = logging.getLogger(name)
        library_logger.setLevel(third_party)
        # google-api-core turns propagation off for "google" when it finds that logger
        # unconfigured (GOOGLE_SDK_PYTHON_LOGGING_SCOPE handling); its records must still
        # reach our root handler.
        library_logger.propagate = True
    logging.captureWarnings(True)
    install_excepthooks()


def install_excepthooks() -> None:
    """Uncaught exceptions (main and other threads) as one CRITICAL JSON line each."""
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_thread


def _log_uncaught(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: types.TracebackType | None,
) -> None:
    """An uncaught exception as one CRITICAL JSON line (not a raw multi-line traceback)."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    get_logger("uncaught").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    thread = args.thread.name if args.thread else None
    get_logger("uncaught").critical(
        "uncaught_exception",
        thread=thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(level: str | None = None, **labels: str | None) -> None:
    """Cloud Logging JSON lines on stderr; level from argument or $LOG_LEVEL (INFO).

    ``labels`` (``stage``, ``scan_type``, ``run_id``; None values are skipped) are bound
    to every later line of this process, library lines included. Libraries log at
    WARNING and above unless the level is DEBUG.
    """
    level_name = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    numeric = getattr(logging, level_name, None)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    _configure(numeric, route_stdlib=True)
    structlog.contextvars.clear_contextvars()
    _process_labels.clear()
    bind_labels(**labels)
    if not isinstance(getattr(logging, level_name, None), int):
        get_logger("logsetup").warning("log_level_unknown", given=level_name, using="INFO")


def _configure(numeric: int, route_stdlib: bool) -> None:
    global _configured
    own, _foreign = _chains()
    structlog.configure(
        processors=own,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: _StderrPrinter(),
        cache_logger_on_first_use=False,
    )
    if route_stdlib:
        _route_stdlib(numeric)
    _configured = True


def forget_configuration() -> None:
    """Back to the state of a process that never configured logging: no root handlers,
    root at WARNING, structlog's defaults, no labels, Python's exception hooks.

    For a process forked from a configured one that then hosts library code the way a
    fresh process would (a Beam SDK worker forked by the launcher,
    ``services/beam_launcher/zygote.py``), so its lines take the same path.
    """
    global _configured
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _process_labels.clear()
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__
    _configured = False


def bind_labels(**labels: Any) -> None:
    """Bind label fields (stage, scan_type, run_id) to every later line of this process."""
    given = {k: str(v) for k, v in labels.items() if v is not None}
    if given:
        structlog.contextvars.bind_contextvars(**given)
        _process_labels.update(given)


def get_logger(name: str, **context: Any) -> Any:
    """A bound logger carrying ``logger=name`` and any extra context.

    Label fields given here (e.g. the ``run_id`` a run creates) are also bound to the
    process (:func:`bind_labels`), so library lines logged during the run carry them.
    """
    if not _configured:
        # Library use (tests, Beam workers): leave any root handlers the host installed.
        _configure(logging.INFO, route_stdlib=not logging.getLogger().handlers)
    bind_labels(**{k: v for k, v in context.items() if k in LABEL_FIELDS})
    return structlog.get_logger().bind(logger=name, **context)


def scan_types_label(scan_types: tuple[str, ...] | None) -> str:
    """The ``scan_type`` label of a run over several types: ``all`` or ``echo,http``.

    >>> scan_types_label(None), scan_types_label(("echo", "http"))
    ('all', 'echo,http')
    """
    return "all" if not scan_types else ",".join(scan_types)
