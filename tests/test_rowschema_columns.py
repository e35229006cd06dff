"""TableSpec.columns_to_arrow: rows held as columns give the same Arrow table as to_arrow."""

from __future__ import annotations

import base64
import datetime as dt
import math
from typing import Any

import pyarrow as pa
import pytest

from sampledata import generate_hyperquack_records, go_json_line
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.hyperquack import processing
from services.beam_launcher.hyperquack.processing import (
    FileTask,
    HyperquackProcessor,
    rows_to_columns,
)
from services.beam_launcher.warehouse.rows import DEAD_LETTER, HYPERQUACK_TABLES
from services.common import rowschema
from services.common.rowschema import (
    BOOLEAN,
    BYTES,
    DATE,
    FLOAT,
    INTEGER,
    REPEATED,
    REQUIRED,
    STRING,
    TIMESTAMP,
    Column,
    TableSpec,
)
from tests.helpers_rowschema import answer_columns

ALL_TYPES = TableSpec(
    "all_types",
    (
        Column("id", STRING, "Id", REQUIRED),
        Column("n", INTEGER, "Count"),
        Column("x", FLOAT, "Score"),
        Column("ok", BOOLEAN, "Flag"),
        Column("day", DATE, "Day"),
        Column("at", TIMESTAMP, "When"),
        Column("raw", BYTES, "Raw"),
        Column("tags", STRING, "Tags", REPEATED),
        Column("days", DATE, "Days", REPEATED),
        *answer_columns(Column("blobs", BYTES, "Blobs", REPEATED)),
    ),
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def varied_row(i: int) -> dict[str, Any]:
    """Row ``i``: every column varies between rows, with nulls and empty lists."""
    return {
        "id": f"r{i}",
        "n": None if i % 3 == 0 else i,
        "x": i / 4,
        "ok": None if i % 4 == 0 else bool(i % 2),
        "day": None if i % 5 == 0 else f"2021-05-{1 + i % 28:02d}",
        "at": None if i % 6 == 0 else f"2021-05-30T01:02:{i % 60:02d}.5-04:00",
        "raw": None if i % 2 else b64(bytes([i % 256, 0, 255])),
        "tags": None if i % 7 == 0 else [f"t{j}" for j in range(i % 3)],
        "days": ["2021-05-30", None] if i % 2 else [],
        "answer": None
        if i % 5 == 1
        else {"ip": f"10.0.0.{i}", "seen": "2021-05-30T00:00:00Z", "blobs": [b64(b"\x01")]},
        "answers": [{"raw": b64(bytes([i % 256])), "day": None}] if i % 2 else None,
    }


CONSTANT = {
    "id": "same",
    "n": 0,
    "x": 0.0,
    "ok": False,
    "day": "2021-05-30",
    "at": "2021-05-30T23:59:59.999999+05:30",
    "raw": b64(b"\x00\xff"),
    "tags": [],
    "days": ["2021-05-30"],
    "answer": {"ip": "1.1.1.1", "seen": None, "blobs": []},
    "answers": [{"raw": None, "day": "2021-05-31"}],
}


def check_equal(spec: TableSpec, rows: list[dict[str, Any]]) -> pa.Table:
    """columns_to_arrow of the transposed rows equals to_arrow of the rows, value and type."""
    want = spec.to_arrow(rows)
    got = spec.columns_to_arrow(rows_to_columns(rows, spec.column_names), len(rows))
    assert got.schema == want.schema == spec.arrow_schema()
    assert got.equals(want), (got.to_pylist()[:2], want.to_pylist()[:2])
    assert got.to_pylist() == want.to_pylist()
    return got


def test_varied_columns_of_every_type() -> None:
    check_equal(ALL_TYPES, [varied_row(i) for i in range(50)])


def test_constant_columns_of_every_type() -> None:
    rows = [dict(CONSTANT, id=f"r{i}") for i in range(40)]
    got = check_equal(ALL_TYPES, rows)
    assert got.column("at")[0].as_py() == dt.datetime(2021, 5, 30, 18, 29, 59, 999999, dt.UTC)
    assert got.column("raw").to_pylist() == [b"\x00\xff"] * 40


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("answer", None),
        ("answer", {"ip": None, "seen": None, "blobs": None}),
        ("answers", []),
        ("tags", []),
        ("days", [None]),
        ("raw", None),
    ],
)
def test_constant_null_and_empty_values(column: str, value: Any) -> None:
    check_equal(ALL_TYPES, [{"id": "a", column: value}] * 5)


def test_constants_of_later_batches_are_their_own() -> None:
    """A constant converted for one batch is reused only for an equal value of the same
    type: each batch gets its own value and length; 0.0 and -0.0 stay apart."""
    spec = TableSpec("t", (Column("s", STRING, "S"), Column("x", FLOAT, "X")))
    for size, s_value, x_value in [(3, "a", 0.0), (5, "b", -0.0), (2, "a", -0.0), (4, "a", 0.0)]:
        got = spec.columns_to_arrow({"s": [s_value] * size, "x": [x_value] * size}, size)
        assert got.column("s").to_pylist() == [s_value] * size
        assert [math.copysign(1.0, v) for v in got.column("x").to_pylist()] == [
            math.copysign(1.0, x_value)
        ] * size


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("id", ""),
        ("id", "é€😀"),
        ("id", "x" * 1000),
        ("raw", b64(b"")),
        ("raw", b64(bytes(range(256)))),
        ("tags", ["a", ""]),
    ],
)
def test_constant_strings_and_bytes_laid_out_directly(column: str, value: Any) -> None:
    """Constant STRING/BYTES columns (built from offsets and repeated bytes) are valid
    arrays equal to the row path at every batch size, the first and the remembered."""
    for size in (1, 2, 7, 1000, 3):
        got = check_equal(ALL_TYPES, [{"id": "a", column: value}] * size)
        got.validate(full=True)


def test_remembered_list_constants_are_their_own() -> None:
    """Constant lists are remembered by their items (and the items' types: [1] and [True]
    are different keys); each batch still gets its own value and length."""
    spec = TableSpec(
        "lists", (Column("n", INTEGER, "N", REPEATED), Column("s", STRING, "S", REPEATED))
    )
    for size, n_value, s_value in [
        (3, [1], ["1"]),
        (2, [2], ["1", ""]),
        (4, [1], []),
        (1, [], ["1"]),
    ]:
        got = spec.columns_to_arrow({"n": [n_value] * size, "s": [s_value] * size}, size)
        assert got.column("n").to_pylist() == [n_value] * size
        assert got.column("s").to_pylist() == [s_value] * size
    assert ("s", list, ((str, "1"),)) in spec._arrow["constants"]
    assert rowschema._constant_key("n", [True]) != rowschema._constant_key("n", [1])


@pytest.mark.parametrize("odd_one", [0, 1, 2, 3, 4])
def test_one_differing_value_anywhere_is_kept(odd_one: int) -> None:
    """A column equal in all rows but one (first, middle, last or elsewhere) is not
    taken for a constant."""
    rows = [dict(CONSTANT, id=f"r{i}") for i in range(5)]
    rows[odd_one] = dict(rows[odd_one], n=7, tags=["x"], day="2021-06-01", at=None)
    got = check_equal(ALL_TYPES, rows)
    assert got.column("n").to_pylist()[odd_one] == 7


def test_remembered_constants_are_bounded() -> None:
    """Distinct constant values (one per batch, e.g. many files' names) are remembered
    up to a bound, not without limit."""
    spec = TableSpec("bounded", (Column("s", STRING, "S"),))
    for i in range(rowschema._MAX_CONSTANTS + 10):
        value = f"file-{i}"
        assert spec.columns_to_arrow({"s": [value, value]}, 2).column("s").to_pylist() == [
            value,
            value,
        ]
    assert 0 < len(spec._arrow["constants"]) <= rowschema._MAX_CONSTANTS


def test_missing_column_is_null_and_wrong_length_is_an_error() -> None:
    table = ALL_TYPES.columns_to_arrow({"id": ["a", "b"]}, 2)
    assert table.column("answers").to_pylist() == [None, None]
    assert table.equals(ALL_TYPES.to_arrow([{"id": "a"}, {"id": "b"}]))
    with pytest.raises(ValueError, match="column n: 1 values for 2 rows"):
        ALL_TYPES.columns_to_arrow({"id": ["a", "b"], "n": [1]}, 2)


def test_empty_batch() -> None:
    got = DEAD_LETTER.columns_to_arrow({name: [] for name in DEAD_LETTER.column_names}, 0)
    assert got.equals(DEAD_LETTER.to_arrow([]))


def test_bad_timestamp_still_raises() -> None:
    with pytest.raises(pa.ArrowInvalid):
        ALL_TYPES.columns_to_arrow({"id": ["a"], "at": ["2021-05-30T01:01:03"]}, 1)


def processed_batch(
    scan_type: str,
) -> tuple[HyperquackProcessor, FileTask, list[bytes], list[dict[str, Any]]]:
    """A generated v2 scan's lines (bodies, headers, certificates, outcomes), a processor
    with the sample resources, and the reference rows of those lines."""
    start = dt.datetime(2021, 5, 30, 23, 50, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    lines = [
        go_json_line(r) + b"\n" for r in generate_hyperquack_records(scan_type, 2, 60, 3, start)
    ]
    task = FileTask.for_test(f"CP_Quack-{scan_type}-2021-05-30-23-50-00")
    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    rows = proc.process_lines(task, 1, lines).rows
    return proc, task, lines, rows


@pytest.mark.parametrize("scan_type", ["echo", "http", "https"])
def test_processed_hyperquack_batches(scan_type: str) -> None:
    """Real parser output (generated v2 scans: bodies, headers, certificates, outcomes)."""
    proc, task, lines, rows = processed_batch(scan_type)
    assert len(rows) > 60
    spec = HYPERQUACK_TABLES[scan_type]
    check_equal(spec, rows)
    out = proc.process_columns(task, 1, lines)
    assert spec.columns_to_arrow(out.columns, out.n_rows).equals(spec.to_arrow(rows))


# --- columns given as ready Arrow arrays ----------------------------------------------------


def test_ready_arrays_pass_through_and_timestamp_strings_are_cast() -> None:
    """A pa.Array of the column's type is used as it is; strings for DATE/TIMESTAMP give
    what the same strings as a list give (offsets, fractions, nulls)."""
    rows = [varied_row(i) for i in range(40)]
    columns = rows_to_columns(rows, ALL_TYPES.column_names)
    want = ALL_TYPES.columns_to_arrow(columns, len(rows))
    ready = {
        "id": pa.array(columns["id"], pa.string()),
        "n": pa.array(columns["n"], pa.int64()),
        "ok": pa.array(columns["ok"], pa.bool_()),
        "day": pa.array(columns["day"], pa.string()),
        "at": pa.array(columns["at"], pa.string()),
    }
    got = ALL_TYPES.columns_to_arrow({**columns, **ready}, len(rows))
    assert got.equals(want)
    assert got.column("n").chunk(0).equals(ready["n"])
    assert got.schema == ALL_TYPES.arrow_schema()


def test_ready_arrays_of_one_value_equal_the_constant_path() -> None:
    n = 7
    columns: dict[str, Any] = {name: [CONSTANT[name]] * n for name in CONSTANT}
    want = ALL_TYPES.columns_to_arrow(columns, n)
    ready = {"id": pa.array(columns["id"]), "at": pa.array(columns["at"], pa.string())}
    assert ALL_TYPES.columns_to_arrow({**columns, **ready}, n).equals(want)


def test_ready_array_of_another_type_or_length_is_an_error() -> None:
    with pytest.raises(TypeError, match="column n: an Arrow array of type string"):
        ALL_TYPES.columns_to_arrow({"id": ["a"], "n": pa.array(["1"])}, 1)
    with pytest.raises(TypeError, match="column tags"):
        ALL_TYPES.columns_to_arrow({"id": ["a"], "tags": pa.array(["x"])}, 1)
    with pytest.raises(ValueError, match="column id: 2 values for 1 rows"):
        ALL_TYPES.columns_to_arrow({"id": pa.array(["a", "b"])}, 1)


def test_bad_timestamp_string_array_raises_as_the_list_does() -> None:
    for bad in (["2021-05-30T01:01:03"], ["2021-02-30"]):
        column = "at" if "T" in bad[0] else "day"
        with pytest.raises(pa.ArrowInvalid):
            ALL_TYPES.columns_to_arrow({"id": ["a"], column: bad}, 1)
        with pytest.raises(pa.ArrowInvalid):
            ALL_TYPES.columns_to_arrow({"id": ["a"], column: pa.array(bad)}, 1)


@pytest.mark.parametrize("scan_type", ["echo", "http", "https"])
def test_processed_hyperquack_batches_as_arrow(scan_type: str) -> None:
    """process_columns(arrow=True) (native: Arrow arrays; else lists) gives the same table."""
    proc, task, lines, rows = processed_batch(scan_type)
    out = proc.process_columns(task, 1, lines, True)
    assert bool(out.arrays) == (proc.native and processing._native_arrow is not None)
    spec = HYPERQUACK_TABLES[scan_type]
    assert spec.columns_to_arrow(out.columns | out.arrays, out.n_rows).equals(spec.to_arrow(rows))
