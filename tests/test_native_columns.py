"""The native columnar path (``_hqfast.process_batch_columns``) equals the row path.

``HyperquackProcessor.process_columns`` must return exactly the transpose of the rows,
dead letters and stats of the pure-Python reference (``process_lines`` with
``use_native=False``): same columns in schema order, same values and types, same length
everywhere. Lines the C code hands back to Python are spliced in at their row positions.
Helpers and data (real fixtures, generated scans, hypothesis-mutated records) come from
tests/helpers_native.py (shared with tests/test_native_hyperquack.py); without the
compiled module these tests skip (not in CI).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.beam_launcher.hyperquack import processing
from services.beam_launcher.hyperquack.processing import (
    FileTask,
    HyperquackProcessor,
    rows_to_columns,
)
from tests.conftest import REAL_HQ_SCANS
from tests.helpers_native import (
    COLUMNS,
    ECHO_V2,
    FIRST_LINES,
    HTTPS_V1,
    MODULE,
    SCANS,
    SLOW_WITH_ROWS,
    assert_bad_arguments_raise,
    assert_columns_equal_rows,
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

# --- real fixtures ------------------------------------------------------------------------


@needs_module
@pytest.mark.parametrize("rel", sorted(REAL_HQ_SCANS))
def test_real_fixture_columns_equal_rows(rel: str) -> None:
    p = pair("real")
    task, lines = real_fixture(rel)
    out = p.check_columns(task, 1, lines)
    assert out.n_rows and not out.dead_letters
    # ... and equal to the native row path, the C code handling every line itself.
    native_rows = p.fast.process_lines(task, 1, lines)
    assert out.columns == rows_to_columns(native_rows.rows, COLUMNS)
    columns, slow, slow_at, counts = MODULE.process_batch_columns(
        lines, 1, p.fast._native_context(task)
    )
    assert slow == [] and slow_at == []
    assert counts[1] == out.n_rows == len(columns[0])
    assert dict(zip(MODULE.COLUMNS, columns, strict=True)) == {
        name: out.columns[name] for name in MODULE.COLUMNS
    }
    p.check_columns(task, 1001, lines + lines)  # warm caches, other line numbers


# --- generated scans ----------------------------------------------------------------------


@needs_module
@pytest.mark.parametrize("scan_type", ["echo", "discard", "http", "https"])
@pytest.mark.parametrize("version", [1, 2])
def test_generated_scans_columns_equal_rows(scan_type: str, version: int) -> None:
    p = pair("sample")
    task, lines = generated_lines(scan_type, version, 400)
    for start in range(0, len(lines), 150):
        p.check_columns(task, start + 1, lines[start : start + 150])


# --- slow lines spliced into the columns --------------------------------------------------


@needs_module
def test_slow_lines_in_the_middle_are_spliced_at_their_rows() -> None:
    p = pair("sample")
    task = FileTask.for_test(HTTPS_V1)
    ctx = p.fast._native_context(task)
    good = [v2_line(i) for i in range(4)]
    lines = [
        good[0],
        SLOW_WITH_ROWS,
        good[1],
        b"junk",
        partly_native(7),  # rows written, then dropped: the line goes slow
        good[2],
        good[2],  # equal to the line before: values shared with dropped rows must not be
        b"",
        SLOW_WITH_ROWS,
        good[3],
    ]
    columns, slow, slow_at, counts = MODULE.process_batch_columns(lines, 10, ctx)
    assert slow == [1, 3, 4, 8]
    assert slow_at == [2, 4, 4, 8]  # each good v2 line has 2 rows
    assert counts[1] == len(columns[0]) == 10
    before = p.fast.native_slow_lines
    out = p.check_columns(task, 10, lines)
    assert p.fast.native_slow_lines - before == 4
    assert out.n_rows == 10 + 1 + 1 + 3  # the Python path added rows for 3 slow lines
    lines_of_rows = out.columns["source_line"]
    assert lines_of_rows == [10, 10, 11, 12, 12, 14, 14, 14, 15, 15, 16, 16, 18, 19, 19]
    assert out.dead_letters[0]["source_line"] == 13
    # the same lines in every order the hypothesis tests would rarely produce
    for k in range(len(lines)):
        p.check_columns(task, 1, lines[k:] + lines[:k])


@needs_module
def test_python_callback_error_is_dead_lettered_like_python() -> None:
    p = exploding_pair()
    lines = [v2_line(i) for i in range(2)]
    out = p.check_columns(FileTask.for_test(ECHO_V2), 1, lines)
    assert out.stats["dead_letters.internal_error"] == 2
    assert out.n_rows == 0 and all(col == [] for col in out.columns.values())


# --- hypothesis: mutated records ----------------------------------------------------------


@needs_module
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=batches(),
    scan=SCANS,
    first=FIRST_LINES,
)
def test_mutated_records_columns_equal_rows(lines: list[bytes], scan: str, first: int) -> None:
    pair("sample").check_columns(FileTask.for_test(scan), first, lines)


@needs_module
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_records_columns_equal_rows_real_resources(data: st.DataObject) -> None:
    p = pair("real")
    lines = mutated_lines(data, 4)
    p.check_columns(FileTask.for_test(HTTPS_V1), 1, lines)


# --- switches and fallbacks ---------------------------------------------------------------


def test_native_off_is_the_transposed_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_NATIVE_PARSER", "0")
    resources = sample_resources()
    proc = HyperquackProcessor(resources)
    assert not proc.native
    ref = HyperquackProcessor(resources, use_native=False)
    task, lines = generated_lines("http", 2, 60)
    lines = [*lines[:30], b"junk", SLOW_WITH_ROWS, *lines[30:]]
    got = proc.process_columns(task, 1, lines)
    assert_columns_equal_rows(got, ref.process_lines(task, 1, lines))


@needs_module
def test_module_without_the_columnar_entry_uses_the_row_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processing, "_native_columns", None)  # a module built before it existed
    p = pair("sample")
    before = p.fast.native_slow_lines
    task, lines = generated_lines("echo", 2, 40)
    p.check_columns(task, 1, [*lines, SLOW_WITH_ROWS])
    assert p.fast.native_slow_lines - before == 1  # the native row path ran


@needs_module
def test_native_exception_redoes_the_batch_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    p = pair("sample")
    task = FileTask.for_test(ECHO_V2)
    lines = [v2_line(i) for i in range(3)] + [b"junk"]
    want = p.ref.process_lines(task, 1, lines)

    def broken(*_args: Any) -> Any:
        raise RuntimeError("native bug")

    monkeypatch.setattr(processing, "_native_columns", broken)
    got = p.fast.process_columns(task, 1, lines)
    assert got.stats.pop("native_fallback_batches") == 1
    assert_columns_equal_rows(got, want)


def test_columnar_entry_needs_usable_column_names() -> None:
    def entry(*_args: Any) -> Any:
        raise AssertionError("not called")

    class Good:
        COLUMNS = ("server_ip", "domain")
        process_batch_columns = staticmethod(entry)

    class Repeated(Good):
        COLUMNS = ("server_ip", "server_ip")

    class WritesConstant(Good):
        COLUMNS = ("server_ip", "source")

    class RowsOnly:  # built before the columnar entry point existed
        COLUMNS = ("server_ip",)

    assert processing._columnar_entry(Good) is entry
    assert processing._columnar_entry(Repeated) is None
    assert processing._columnar_entry(WritesConstant) is None
    assert processing._columnar_entry(RowsOnly) is None
    assert processing._columnar_entry(None) is None


@needs_module
def test_built_module_passes_both_schema_guards() -> None:
    assert processing._checked_native(MODULE) is MODULE
    assert processing._columnar_entry(MODULE) is MODULE.process_batch_columns
    assert processing._native_columns is MODULE.process_batch_columns


# --- memory and arguments -----------------------------------------------------------------


@needs_module
def test_no_leaks_on_repeated_hostile_column_batches() -> None:
    p = pair("sample")
    task = FileTask.for_test(ECHO_V2)
    good = [v2_line(i) for i in range(20)]
    hostile = [b"junk", b"[1, 2]", partly_native(3), SLOW_WITH_ROWS, partly_native(4)]
    batch = good + hostile + good

    def run() -> None:
        for _ in range(30):
            p.fast.process_columns(task, 1, batch)
            MODULE.process_batch_columns(batch, 1, p.fast._native_context(task))

    growth = memory_growth(run)
    assert growth < 64 * 1024, f"memory grew by {growth} bytes"


@needs_module
def test_bad_arguments_raise_instead_of_crashing() -> None:
    ctx = pair("sample").fast._native_context(FileTask.for_test(ECHO_V2))
    assert_bad_arguments_raise(MODULE.process_batch_columns, ctx)
    with pytest.raises(TypeError):
        MODULE.process_batch_columns([b"{}"], 1)
    columns, slow, slow_at, counts = MODULE.process_batch_columns([b"{}", 5, "str"], 1, ctx)
    assert len(columns) == len(MODULE.COLUMNS) and all(col == [] for col in columns)
    assert slow == [0, 1, 2] and slow_at == [0, 0, 0] and counts == (0, 0, 0, 0, 0, 0)
