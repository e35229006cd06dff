"""Satellite observation lines → rows, one batch at a time (C fast path + Python reference).

:func:`parse_observation_batch` is what ``ParseSatelliteBatch`` (satellite/pipeline.py) does
with a batch of an observations file (``results.json``, ``interference.json``, ...) and
what ``bench/bench_satellite.py`` measures. Each line is stripped, decoded with
``orjson.loads`` and flattened with :func:`satellite.flatten_observation`; every row gets
``_row_id`` = ``"<measurement_id>:<index>"``. Blank lines are counted, bad lines become
dead letters.

When the C extension ``services/beam_launcher/native/_satfast.c`` is built (``python -m
services.beam_launcher.native.build``) and ``$CP_NATIVE_PARSER`` is not ``0``, it does the
decoding and the v2.2 flattening of the ordinary records of a batch; every other line
(other formats, odd types or timestamps, invalid JSON, blank lines, ...) takes the Python
path unchanged. Rows, row order, stats and dead letters are the same either way
(tests/test_native_satellite.py). Should the C call fail for a batch, the stat
``native_errors`` is bumped and the whole batch is redone in Python.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from services.beam_launcher import native
from services.beam_launcher.hyperquack.parse import BadRecord, FileContext, file_digest
from services.beam_launcher.hyperquack.processing import FileTask, parse_line
from services.beam_launcher.satellite import parse as satellite
from services.common.rowschema import Row

__all__ = ["native_module", "parse_observation_batch", "parser_path"]

_API_VERSION = 2


@functools.cache
def _load_native() -> Any | None:
    """The configured ``_satfast`` module, or None when it is not built (or is stale)."""
    module = native.load(native.MODULES["satellite"])
    if module is None:
        return None
    if getattr(module, "API_VERSION", None) != _API_VERSION:
        return None
    module.configure(
        {**satellite._ROW_TEMPLATE, "_format": satellite.V2_2},
        satellite._ANSWER_TEMPLATE,
        tuple(satellite._REPEATED_ANSWER_FIELDS),
        dict.fromkeys(satellite._MATCHES_CONTROL_FIELDS, False),
        dict(satellite._MATCH_TAGS),
        frozenset(satellite.CONTROL_DOMAINS),
        frozenset(satellite.CONTROL_IPS),
    )
    return module


def native_module() -> Any | None:
    """The C module when it is built and ``$CP_NATIVE_PARSER`` is not ``0``, else None."""
    return _load_native() if native.enabled() else None


def parser_path() -> str:
    """``"native"`` or ``"python"``: the path :func:`parse_observation_batch` takes now."""
    return "native" if native_module() is not None else "python"


def _bump(stats: dict[str, int], name: str, n: int = 1) -> None:
    stats[name] = stats.get(name, 0) + n


def _count_warnings(rows: list[Row], stats: dict[str, int]) -> list[Row]:
    """Bump ``row_warnings.<code>`` for each ``_warnings`` code of the rows (kept rows that
    say something about the input, e.g. a missing error text); returns ``rows``."""
    for codes in [row["_warnings"] for row in rows if "_warnings" in row]:
        for code in codes:
            _bump(stats, f"row_warnings.{code}")
    return rows


def _python_line(
    task: FileTask,
    ctx: FileContext,
    line_no: int,
    raw: bytes,
    record: Any,
    out: list[Row],
    stats: dict[str, int],
    dead: list[Row],
) -> None:
    """The reference path for one line (``record``: the decoded line, or None to decode)."""

    def rows_of(record: Any, raw: bytes) -> list[Row]:
        if not isinstance(record, dict):
            raise BadRecord("not_an_object", f"record is a JSON {type(record).__name__}")
        rows = satellite.flatten_observation(
            record, task.source_file, line_no, raw, ctx, task.scan_date
        )
        for i, row in enumerate(rows):
            row["_row_id"] = f"{row['measurement_id']}:{i}"
        return rows

    rows = parse_line(task, line_no, raw, stats, dead, rows_of, record)
    if rows is not None:
        _bump(stats, "rows", len(rows))
        out += rows


def _native_batch(
    native: Any, task: FileTask, first: int, lines: list[bytes]
) -> tuple[list[Row], int, list[tuple[int, int, Any]]]:
    """The C call: (rows of the lines done in C, their count, the lines left to Python as
    (offset, position of their rows in ``rows``, decoded record or None))."""
    trusted = satellite._base_name(task.source_file) in satellite._CONTROL_RESOLVER_FILES
    result: tuple[list[Row], int, list[tuple[int, int, Any]]] = native.flatten_v2_2_batch(
        lines,
        first,
        orjson.loads,
        file_digest(task.source, task.source_file),
        task.source,
        task.source_file,
        task.pipeline_version,
        trusted,
    )
    return result


def parse_observation_batch(
    task: FileTask,
    first: int,
    lines: list[bytes],
    stats: dict[str, int],
    dead: list[Row],
    native: Any | None = ...,
) -> list[Row]:
    """Rows of one batch of an observations file, in line order.

    Args:
        task: the file; first: line number of ``lines[0]`` (1-based); lines: raw lines
            (with or without their line ends).
        stats: counters to bump (``lines``, ``blank_lines``, ``rows``, ``dead_letters``,
            ``dead_letters.<class>``, ``row_warnings.<code>`` per ``_warnings`` code of
            a kept row, and ``native_errors`` if the C path failed).
        dead: dead letters are appended to it.
        native: the C module to use, None for the pure-Python path; by default
            :func:`native_module`.
    """
    if native is ...:
        native = native_module()
    if native is not None:
        if type(lines) is not list:
            lines = list(lines)
        try:
            rows, fast_lines, slow = _native_batch(native, task, first, lines)
        except Exception:  # a bug or an odd batch: count it and redo it in Python
            _bump(stats, "native_errors")
        else:
            if fast_lines:
                _bump(stats, "lines", fast_lines)
                _bump(stats, "rows", len(rows))
            if not slow:
                return _count_warnings(rows, stats)
            ctx = task.context()
            out: list[Row] = []
            done = 0
            for offset, position, record in slow:  # splice the Python lines' rows in
                out += rows[done:position]
                done = position
                _python_line(task, ctx, first + offset, lines[offset], record, out, stats, dead)
            out += rows[done:]
            return _count_warnings(out, stats)
    ctx = task.context()
    out = []
    for offset, raw in enumerate(lines):
        _python_line(task, ctx, first + offset, raw, None, out, stats, dead)
    return _count_warnings(out, stats)
