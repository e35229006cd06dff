"""The native parser's Arrow buffers (``_hqfast.process_batch_arrow``) equal the reference.

``process_columns(..., arrow=True)`` returns the simple columns (STRING, INTEGER,
BOOLEAN, and the DATE/TIMESTAMP strings) as Arrow arrays the C code wrote byte by byte;
they must hold exactly the values of the pure-Python reference's rows (types included),
and ``TableSpec.columns_to_arrow`` of them must be the table ``to_arrow`` makes of those
rows, slow lines (handed back to Python) spliced in at their rows. Without the compiled
module these tests skip (not in CI), except the pure-Python fallback's.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.beam_launcher.hyperquack import processing
from services.beam_launcher.hyperquack.processing import (
    ColumnOutput,
    FileTask,
    HyperquackProcessor,
    rows_to_columns,
)
from services.beam_launcher.warehouse.rows import HYPERQUACK_SCAN
from tests.conftest import REAL_HQ_SCANS
from tests.helpers_native import (
    COLUMNS,
    ECHO_V2,
    FIRST_LINES,
    HTTPS_V1,
    MODULE,
    SCANS,
    SLOW_WITH_ROWS,
    Pair,
    assert_bad_arguments_raise,
    batches,
    exploding_pair,
    generated_lines,
    memory_growth,
    mutated_lines,
    needs_module,
    pair,
    partly_native,
    real_fixture,
    sample_resources,
    v2_line,
)


def _table_or_error(make: Any) -> Any:
    """The table ``make()`` builds, or the type of the exception it raises."""
    try:
        return make()
    except Exception as exc:  # the same failure is what we compare
        return type(exc)


def check_arrow(p: Pair, task: FileTask, first: int, lines: list[bytes]) -> ColumnOutput:
    """``process_columns(arrow=True)`` equals the reference rows, value for value and as a
    table; the arrays are valid Arrow data."""
    got = p.fast.process_columns(task, first, lines, True)
    want = p.ref.process_lines(task, first, lines)
    assert got.n_rows == len(want.rows)
    assert got.dead_letters == want.dead_letters
    assert dict(got.stats) == dict(want.stats)
    assert not set(got.columns) & set(got.arrays)
    assert sorted([*got.columns, *got.arrays]) == sorted(COLUMNS)
    expected = rows_to_columns(want.rows, COLUMNS)
    for name, array in got.arrays.items():
        array.validate(full=True)
        assert len(array) == got.n_rows, name
        values = array.to_pylist()
        assert values == expected[name], name
        assert [type(v) for v in values] == [type(v) for v in expected[name]], name
    for name, column in got.columns.items():
        assert column == expected[name], name
    table = _table_or_error(
        lambda: HYPERQUACK_SCAN.columns_to_arrow(got.columns | got.arrays, got.n_rows)
    )
    reference = _table_or_error(lambda: HYPERQUACK_SCAN.to_arrow(want.rows))
    if isinstance(reference, pa.Table):
        assert isinstance(table, pa.Table) and table.equals(reference)
    else:  # the reference's rows do not convert: neither do the arrays
        assert table is reference
    return got


@needs_module
@pytest.mark.parametrize("rel", sorted(REAL_HQ_SCANS))
def test_real_fixture_arrow_equals_rows(rel: str) -> None:
    p = pair("real")
    task, lines = real_fixture(rel)
    out = check_arrow(p, task, 1, lines)
    assert out.n_rows and len(out.arrays) == sum(k != "list" for k in MODULE.COLUMN_KINDS)
    check_arrow(p, task, 1001, lines + lines)


@needs_module
@pytest.mark.parametrize("scan_type", ["echo", "discard", "http", "https"])
@pytest.mark.parametrize("version", [1, 2])
def test_generated_scans_arrow_equals_rows(scan_type: str, version: int) -> None:
    p = pair("sample")
    task, lines = generated_lines(scan_type, version, 400)
    for start in range(0, len(lines), 150):
        check_arrow(p, task, start + 1, lines[start : start + 150])


@needs_module
def test_raw_buffers_hold_the_column_lists_values() -> None:
    """process_batch_arrow writes what process_batch_columns lists (same slow lines)."""
    p = pair("sample")
    task, lines = generated_lines("https", 2, 120)
    # partly_native: rows written, then dropped when the line goes slow (here also last, so
    # what it wrote must not stay past the end of any buffer)
    lines = [*lines[:50], b"junk", SLOW_WITH_ROWS, partly_native(3), b"\n", *lines[50:]]
    lines.append(_partly_native_with_headers())
    ctx = p.fast._native_context(task)
    lists, slow, slow_at, counts = MODULE.process_batch_columns(lines, 5, ctx)
    built, slow2, slow_at2, counts2 = MODULE.process_batch_arrow(lines, 5, ctx)
    assert (slow2, slow_at2, counts2) == (slow, slow_at, counts)
    assert slow == [50, 51, 52, len(lines) - 1]
    n_rows = counts[1]
    for name, kind, column, item in zip(
        MODULE.COLUMNS, MODULE.COLUMN_KINDS, lists, built, strict=True
    ):
        if kind == "list":
            assert item == column, name
            continue
        n, nulls, validity, values, chars = item
        assert n == n_rows and nulls == column.count(None), name
        assert (validity is None) == (nulls == 0), name
        assert (chars is not None) == (kind in ("utf8", "list_utf8")), name
        size = {"utf8": 4 * (n + 1), "list_utf8": 4 * (n + 1), "int64": 8 * n}.get(
            kind, (n + 7) // 8
        )
        assert len(values) == size, name  # exactly the Arrow layout, no slack
        if kind == "list_utf8":  # the items: one offset per item (and a first 0), no slack
            items, text = chars
            n_items = sum(len(v) for v in column if v is not None)
            assert len(items) == 4 * (n_items + 1), name
            assert len(text) == sum(len(x.encode()) for v in column if v for x in v), name
        array = processing._wrapped(kind, item)
        array.validate(full=True)
        assert array.to_pylist() == column, name


def _partly_native_with_headers() -> bytes:
    """partly_native with headers in the response the C code writes before going slow."""
    record = orjson.loads(_record(response={"headers": {"A": ["x" * 10, "y"]}}))
    record["response"].append(dict(record["response"][1], start_time="2021-05-30 00:00:00Z"))
    return orjson.dumps(record)


def _record(**changes: Any) -> bytes:
    """A v2 record (v2_line(0)) with its blocked response changed."""
    record = orjson.loads(v2_line(0))
    record["response"][1].update(changes)
    return orjson.dumps(record)


@needs_module
def test_unusual_strings_and_integers() -> None:
    """Non-ASCII text, empty strings, long bodies, extreme integers and nulls."""
    p = pair("sample")
    lines = [
        _record(response={"status_line": "HTTP/1.1 200 ÖK", "body": "é" * 3 + "😀" + "ß"}),
        _record(response={"status_line": "", "body": "", "headers": {}}),
        _record(response={"status_line": "x", "body": "b" * 200_000}),
        _record(response={"tls": {"version": 2**63 - 1, "cipher_suite": -(2**63)}}),
        _record(response={"tls": {"version": 2**63, "cipher_suite": 1}}),  # not int64: slow
        _record(response={"tls": {"version": True, "cipher_suite": 1}}),  # a bool: slow
        _record(error=None, matches_template=None, response=None),
        _record(response="HTTP/1.1 403 Forbidden\u2028"),
    ]
    for k in range(len(lines)):
        check_arrow(p, FileTask.for_test(HTTPS_V1), 7, lines[k:] + lines[:k])


@needs_module
def test_header_lists() -> None:
    """Headers (a list of strings per row, laid out in C): none, empty values, many,
    non-ASCII, several values per name, a null and a non-string value (slow), in every
    order, so lists of every size follow each other and a refused list in the middle of a
    batch leaves the builder as it was."""
    p = pair("sample")
    lines = [
        _record(response={"headers": {}}),
        _record(response={"headers": {"A": [""], "": ["x"]}}),
        _record(response={"headers": {f"H{i}": [f"v{i}", "w"] for i in range(40)}}),
        _record(response={"headers": {"Ünï": ["çødé 😀", "\u2028"]}}),
        _record(response={"headers": None}),
        _record(response={"headers": {"A": [1]}}),
        _record(response={"headers": {"A": None}}),
        _record(response={"headers": {"Server": ["nginx"], "Content-Length": ["0"]}}),
    ]
    for k in range(len(lines)):
        check_arrow(p, FileTask.for_test(HTTPS_V1), 3, lines[k:] + lines[:k])


@needs_module
def test_slow_lines_are_spliced_into_the_arrays() -> None:
    p = pair("sample")
    task = FileTask.for_test(HTTPS_V1)
    good = [v2_line(i) for i in range(4)]
    lines = [
        SLOW_WITH_ROWS,  # rows before any native row
        good[0],
        SLOW_WITH_ROWS,
        b"junk",
        partly_native(7),
        good[1],
        SLOW_WITH_ROWS,
        SLOW_WITH_ROWS,  # two slow lines' rows at the same position
        good[2],
        b"",
        SLOW_WITH_ROWS,  # rows after the last native row
    ]
    before = p.fast.native_slow_lines
    out = check_arrow(p, task, 10, lines)
    assert p.fast.native_slow_lines - before == 7
    assert out.arrays["source_line"].to_pylist() == [
        10, 11, 11, 12, 14, 14, 14, 15, 15, 16, 17, 18, 18, 20,
    ]  # fmt: skip
    for k in range(len(lines)):
        check_arrow(p, task, 1, lines[k:] + lines[:k])


@needs_module
def test_python_callback_error_is_dead_lettered_like_python() -> None:
    p = exploding_pair()
    out = check_arrow(p, FileTask.for_test(ECHO_V2), 1, [v2_line(i) for i in range(2)])
    assert out.stats["dead_letters.internal_error"] == 2
    assert out.n_rows == 0 and all(len(a) == 0 for a in out.arrays.values())


@needs_module
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=batches(), scan=SCANS, first=FIRST_LINES)
def test_mutated_records_arrow_equals_rows(lines: list[bytes], scan: str, first: int) -> None:
    check_arrow(pair("sample"), FileTask.for_test(scan), first, lines)


@needs_module
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_records_arrow_equals_rows_real_resources(data: st.DataObject) -> None:
    check_arrow(pair("real"), FileTask.for_test(HTTPS_V1), 1, mutated_lines(data, 4))


# --- fallbacks and guards -------------------------------------------------------------------


def test_without_native_arrow_gives_the_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C path: arrow=True is the transposed Python path (no arrays), the same table."""
    monkeypatch.setenv("CP_NATIVE_PARSER", "0")
    proc = HyperquackProcessor(sample_resources())
    assert not proc.native
    ref = HyperquackProcessor(sample_resources(), use_native=False)
    task, lines = generated_lines("http", 2, 60)
    lines = [*lines[:30], b"junk", SLOW_WITH_ROWS, *lines[30:]]
    got = proc.process_columns(task, 1, lines, True)
    want = ref.process_lines(task, 1, lines)
    assert got.arrays == {} and got.columns == rows_to_columns(want.rows, COLUMNS)
    table = HYPERQUACK_SCAN.columns_to_arrow(got.columns | got.arrays, got.n_rows)
    assert table.equals(HYPERQUACK_SCAN.to_arrow(want.rows))


@needs_module
def test_module_without_the_arrow_entry_uses_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "_native_arrow", None)  # a module built before it existed
    p = pair("sample")
    task, lines = generated_lines("echo", 2, 40)
    got = p.fast.process_columns(task, 1, [*lines, SLOW_WITH_ROWS], True)
    assert got.arrays == {}
    assert got.columns == p.fast.process_columns(task, 1, [*lines, SLOW_WITH_ROWS]).columns


@needs_module
def test_native_arrow_exception_redoes_the_batch_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = pair("sample")
    task = FileTask.for_test(ECHO_V2)
    lines = [v2_line(i) for i in range(3)] + [b"junk"]
    want = p.ref.process_lines(task, 1, lines)

    def broken(*_args: Any) -> Any:
        raise MemoryError("no room for a buffer")

    monkeypatch.setattr(processing, "_native_arrow", broken)
    got = p.fast.process_columns(task, 1, lines, True)
    assert got.stats.pop("native_fallback_batches") == 1
    assert got.arrays == {} and got.columns == rows_to_columns(want.rows, COLUMNS)
    assert got.dead_letters == want.dead_letters and dict(got.stats) == dict(want.stats)


def test_arrow_entry_needs_kinds_that_fit_the_schema() -> None:
    def entry(*_args: Any) -> Any:
        raise AssertionError("not called")

    class Good:
        COLUMNS = ("server_ip", "domain", "retry", "matches_template", "start_time")
        COLUMN_KINDS = ("list", "utf8", "int64", "bool", "utf8")
        process_batch_columns = staticmethod(entry)
        process_batch_arrow = staticmethod(entry)

    class WrongType(Good):
        COLUMN_KINDS = ("list", "int64", "int64", "bool", "utf8")

    class Repeated(Good):
        COLUMNS = ("received_headers",)
        COLUMN_KINDS = ("utf8",)

    class UnknownKind(Good):
        COLUMN_KINDS = ("list", "utf16", "int64", "bool", "utf8")

    class Short(Good):
        COLUMN_KINDS = ("list",)

    class NoKinds(Good):
        COLUMN_KINDS = ()

    class ColumnsOnly:  # built before the Arrow entry existed
        COLUMNS = ("server_ip",)
        process_batch_columns = staticmethod(entry)

    assert processing._arrow_entry(Good) is entry
    for bad in (WrongType, Repeated, UnknownKind, Short, NoKinds, ColumnsOnly, None):
        assert processing._arrow_entry(bad) is None, bad


@needs_module
def test_built_module_passes_the_arrow_guard() -> None:
    assert processing._arrow_entry(MODULE) is MODULE.process_batch_arrow
    assert processing._native_arrow is MODULE.process_batch_arrow
    assert len(MODULE.COLUMN_KINDS) == len(MODULE.COLUMNS)


# --- memory and arguments -------------------------------------------------------------------


@needs_module
def test_no_leaks_on_repeated_hostile_arrow_batches() -> None:
    p = pair("sample")
    task = FileTask.for_test(ECHO_V2)
    good = [v2_line(i) for i in range(20)]
    hostile = [b"junk", b"[1, 2]", partly_native(3), SLOW_WITH_ROWS, partly_native(4)]
    batch = good + hostile + good

    def run() -> None:
        for _ in range(30):
            p.fast.process_columns(task, 1, batch, True)
            MODULE.process_batch_arrow(batch, 1, p.fast._native_context(task))

    growth = memory_growth(run)
    assert growth < 64 * 1024, f"memory grew by {growth} bytes"


@needs_module
def test_bad_arguments_raise_instead_of_crashing() -> None:
    ctx = pair("sample").fast._native_context(FileTask.for_test(ECHO_V2))
    assert_bad_arguments_raise(MODULE.process_batch_arrow, ctx)
    with pytest.raises(TypeError):
        MODULE.process_batch_arrow([b"{}"], 1)
    built, slow, slow_at, counts = MODULE.process_batch_arrow([b"{}", 5, "str"], 1, ctx)
    assert slow == [0, 1, 2] and slow_at == [0, 0, 0] and counts == (0, 0, 0, 0, 0, 0)
    for kind, item in zip(MODULE.COLUMN_KINDS, built, strict=True):
        if kind == "list":
            assert item == []
        else:
            assert len(processing._wrapped(kind, item)) == 0
