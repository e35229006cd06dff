"""Shared helpers of the native Hyperquack parser tests (row path and columnar path).

tests/test_native_hyperquack.py (rows) and tests/test_native_columns.py (columns) both
compare the C extension with the pure-Python reference on the same inputs: real fixtures,
generated scans, hypothesis-mutated records and a few hand-made lines.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import strategies as st

from sampledata import (
    HYPERQUACK_SCANS,
    go_json_line,
    iter_hyperquack_records,
    source_name,
)
from services.beam_launcher import native
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, Resources, load_resources
from services.beam_launcher.hyperquack import processing
from services.beam_launcher.hyperquack.processing import (
    BatchOutput,
    ColumnOutput,
    FileTask,
    HyperquackProcessor,
    rows_to_columns,
)
from tests.conftest import REAL, REAL_HQ_SCANS, REAL_RESOURCES

MODULE: Any = native.load()
IN_CI = os.environ.get("CI") == "true"

needs_module = pytest.mark.skipif(
    MODULE is None and not IN_CI,
    reason="native parser not built (python -m services.beam_launcher.native.build)",
)

ECHO_V2 = "CP_Quack-echo-2021-05-30-01-01-01"
HTTPS_V1 = "CP_Quack-https-2020-11-06-15-58-07"
COLUMNS = processing.HYPERQUACK_SCAN.column_names

_SAMPLE: Resources | None = None
_REAL: Resources | None = None


def sample_resources() -> Resources:
    """The project's sample resources, loaded once."""
    global _SAMPLE
    if _SAMPLE is None:
        _SAMPLE = load_resources(str(SAMPLE_RESOURCES))
    return _SAMPLE


def real_resources() -> Resources:
    """The real fixtures' resources, loaded once (skips when the fixtures are absent)."""
    global _REAL
    if not REAL_RESOURCES.is_dir():
        pytest.skip(f"real fixtures not found at {REAL} (shared/fixtures/real is absent)")
    if _REAL is None:
        _REAL = load_resources(str(REAL_RESOURCES))
    return _REAL


def assert_same(got: BatchOutput, want: BatchOutput) -> None:
    """Same rows (values, types, column order), dead letters and stats."""
    assert len(got.rows) == len(want.rows)
    for a, b in zip(got.rows, want.rows, strict=True):
        assert a == b
        assert list(a) == list(b)  # same column order
        assert [type(v) for v in a.values()] == [type(v) for v in b.values()]
    assert got.dead_letters == want.dead_letters
    assert dict(got.stats) == dict(want.stats)


def assert_columns_equal_rows(got: ColumnOutput, want: BatchOutput) -> None:
    """``got`` is the transpose of ``want`` (values, types, order), same dead letters and stats."""
    assert got.n_rows == len(want.rows)
    assert list(got.columns) == list(COLUMNS)  # every schema column, in schema order
    expected = rows_to_columns(want.rows, COLUMNS)
    for name in COLUMNS:
        column = got.columns[name]
        assert len(column) == got.n_rows, name
        assert column == expected[name], name
        assert [type(v) for v in column] == [type(v) for v in expected[name]], name
    assert got.dead_letters == want.dead_letters
    assert dict(got.stats) == dict(want.stats)


class Pair:
    """A native and a pure-Python processor over the same resources."""

    def __init__(self, resources: Resources) -> None:
        with mock.patch.dict(os.environ, {"CP_NATIVE_PARSER": "1"}):  # on even if the env is off
            self.fast = HyperquackProcessor(resources)
        self.ref = HyperquackProcessor(resources, use_native=False)
        assert self.fast.native, "the native parser should be active"
        assert not self.ref.native

    def check(self, task: FileTask, first: int, lines: list[bytes]) -> BatchOutput:
        """The native row path equals the reference."""
        got = self.fast.process_lines(task, first, lines)
        assert_same(got, self.ref.process_lines(task, first, lines))
        return got

    def check_columns(self, task: FileTask, first: int, lines: list[bytes]) -> ColumnOutput:
        """The native columnar path is the transpose of the reference's rows."""
        got = self.fast.process_columns(task, first, lines)
        assert_columns_equal_rows(got, self.ref.process_lines(task, first, lines))
        return got


_PAIRS: dict[str, Pair] = {}


def pair(kind: str) -> Pair:
    """The shared pair over the ``real`` or the ``sample`` resources."""
    if kind not in _PAIRS:
        _PAIRS[kind] = Pair(real_resources() if kind == "real" else sample_resources())
    return _PAIRS[kind]


def real_fixture(rel: str) -> tuple[FileTask, list[bytes]]:
    """A real Hyperquack fixture's task and lines (skips when the file is absent)."""
    path = REAL / rel
    if not path.is_file():
        pytest.skip(f"real fixture {path} is absent")
    return FileTask.for_test(REAL_HQ_SCANS[rel]), path.read_bytes().splitlines(keepends=True)


def generated_lines(scan_type: str, version: int, n: int) -> tuple[FileTask, list[bytes]]:
    """``n`` lines of the project's generated scan of that type and version."""
    spec = next(s for s in HYPERQUACK_SCANS if s.scan_type == scan_type and s.version == version)
    lines = [go_json_line(r) for r in iter_hyperquack_records(scan_type, version, n, 7, spec.start)]
    return FileTask.for_test(source_name(scan_type, spec.start)), lines


def v2_line(i: int) -> bytes:
    """A v2 record with a control and a blocked response, ``i`` seconds into 2021-05-30."""
    t = (datetime(2021, 5, 30, tzinfo=UTC) + timedelta(seconds=i)).isoformat()
    return orjson.dumps(
        {
            "vp": "1.2.3.4",
            "test_url": "example.com",
            "anomaly": True,
            "response": [
                {"control_url": "c.com", "start_time": t, "end_time": t, "matches_template": True},
                {
                    "start_time": t,
                    "end_time": t,
                    "matches_template": False,
                    "error": "read: connection reset by peer",
                    "response": "HTTP/1.1 403 Forbidden",
                },
            ],
        }
    )


class ExplodingMatcher:
    """A signature matcher whose every call fails (a Python callback error)."""

    def match(self, text: str) -> Any:
        raise KeyError("boom")


def exploding_pair() -> Pair:
    """A fresh pair over the sample resources whose signature matcher always fails."""
    resources = dataclasses.replace(sample_resources(), matcher=ExplodingMatcher())  # type: ignore[arg-type]
    return Pair(resources)


def memory_growth(run: Callable[[], None]) -> int:
    """Bytes still allocated after two more calls of ``run`` than after one (caches warmed)."""
    run()  # warm every cache
    gc.collect()
    tracemalloc.start()
    try:
        run()
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        run()
        run()
        gc.collect()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return second - first


def assert_bad_arguments_raise(entry: Callable[..., Any], ctx: tuple[Any, ...]) -> None:
    """A C entry point raises (never crashes) on a wrong batch, context or line number."""
    with pytest.raises(TypeError):
        entry("x", 1, ctx)
    with pytest.raises(TypeError):
        entry([b"{}"], 1, ctx[:-1])
    with pytest.raises(OverflowError):
        entry([b"{}"], 2**80, ctx)


# --- hypothesis: mutated records ------------------------------------------------------------

TIMESTAMPS = [
    "2021-05-30T01:01:03.68639419-04:00",
    "2020-11-14T07:54:49.246304766-05:00",
    "2020-11-14T07:54:49Z",
    "2020-11-14T07:54:49.1Z",
    "2020-11-14T07:54:49.123456+00:00",
    "2020-11-14T07:54:49.1234567+23:59",
    "2020-11-14T07:54:49.1234567890-05:00",
    "2020-11-14T07:54:49.123-0500",
    "2020-11-14 07:54:49Z",
    "2020-11-14t07:54:49Z",
    "2020-02-29T00:00:00Z",
    "2000-02-29T12:00:00.5+01:00",
    "2021-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2020-02-30T01:02:03.5+01:00",
    "2020-04-31T00:00:00Z",
    "2020-13-01T00:00:00Z",
    "2020-00-10T00:00:00Z",
    "2020-11-00T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999+23:59",
    "2020-11-14T24:00:00Z",
    "2020-11-14T23:60:00Z",
    "2020-11-14T23:59:60Z",
    "2020-11-14T07:54:49+24:00",
    "2020-11-14T07:54:49-00:60",
    "2020-11-14T07:54:49-00:59",
    "2020-11-14T07:54:49.Z",
    "2020-11-14T07:54:49.+01:00",
    "2020-11-14T07:54:49.12a+01:00",
    "２020-11-14T07:54:49Z",
    "2020-11-14T07:54:49.1\u0661Z",
    "2020-11-14T07:54:49",
    "2020-11-14",
    "",
    5,
    None,
    True,
    ["2020-11-14T07:54:49Z"],
]

SENTS = [
    "GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    "GET /news HTTP/1.1\r\nHost: www.bbc.co.uk\r\n\r\n",
    "GET www.bbc.co.uk HTTP/1.1\r\nHost: /news\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: example5718349450314.com\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: rtyutgyhefdafioasfjhjhi.com\r\n\r\n",
    "GET  HTTP/1.1\r\nHost: \r\n\r\n",
    "GET / HTTP/1.1\r\nHost: /\r\n\r\n",
    "GET / HTTP/1.0\r\nHost: a.com\r\n\r\n",
    "GET / HTTP/1x1\r\nHost: a.com\r\n\r\n",
    "xGET / HTTP/1.1\r\nHost: a.com\r\n\r\n",
    "GET / HTTP/1.1\nHost: a.com\r\n",
    "GET / HTTP/1.1\r\nHost: a.com\n",
    "GET / HTTP/1.1\r\nHost: a.com",
    "GET /a b HTTP/1.1\r\nHost: c\rd\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n",
    "junk\nGET / HTTP/1.1\r\nHost: late.com\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: bücher.de\r\n\r\n",
    "GET /é HTTP/1.1\r\nHost: x.com\r\n\r\n",
    "scribd.com",
    "bücher.de",
    "a b",
    "",
    None,
    7,
]

JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

TEXT = st.sampled_from(
    ["", "x", "HTTP/1.1 403 Forbidden", "200 OK", "é", "\u4e2d\u6587", "a;b", ";lead", "\ud7ff"]
) | st.text(max_size=20)


def _seed_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for spec in HYPERQUACK_SCANS:
        records.extend(iter_hyperquack_records(spec.scan_type, spec.version, 25, 3, spec.start))
    for rel in sorted(REAL_HQ_SCANS):
        path = REAL / rel
        if path.is_file():
            records.extend(orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip())
    return records


SEEDS = _seed_records()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replacement(data: st.DataObject, key: Any) -> Any:
    name = str(key).lower()
    if "time" in name:
        return data.draw(st.sampled_from(TIMESTAMPS) | JUNK)
    if name == "sent":
        return data.draw(st.sampled_from(SENTS))
    if name in ("headers",):
        return data.draw(
            st.dictionaries(
                st.sampled_from(["Server", "Content-Type", "X", "é"]) | st.text(max_size=5),
                st.lists(st.sampled_from(["AkamaiGHost", "GHost", "nginx", "é"]) | JUNK, max_size=3)
                | TEXT
                | JUNK,
                max_size=4,
            )
        )
    if name in ("tlsversion", "ciphersuite", "version", "cipher_suite", "retries"):
        return data.draw(
            st.sampled_from([0, 771, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, True, 1.5])
            | JUNK
        )
    if name in ("matches_template", "success", "anomaly", "blocked", "control_url"):
        return data.draw(st.sampled_from([True, False, None, "true", 0, "control-x.com"]))
    return data.draw(JUNK | TEXT)


def mutate(data: st.DataObject, record: dict[str, Any]) -> Any:
    record = copy.deepcopy(record)
    for _ in range(data.draw(st.integers(0, 3))):
        paths = [p for p in _paths(record) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent: Any = record
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "replace"]))
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = _replacement(data, path[-1])
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(JUNK)
    return record


def serialise(data: st.DataObject, value: Any) -> bytes:
    try:
        line = orjson.dumps(value)
    except TypeError:  # integers past 64 bits
        line = json.dumps(value).encode()
    if data.draw(st.booleans()):
        line = json.dumps(value, ensure_ascii=data.draw(st.booleans())).encode()
    style = data.draw(st.integers(0, 12))
    if style == 0:
        line = line[: data.draw(st.integers(0, len(line)))]  # usually invalid JSON
    elif style == 1:
        line += data.draw(st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b" \r\n", b"\t"]))
    elif style == 2:
        line = data.draw(st.sampled_from([b"", b"   ", b"\r\n", b"\t\x0b\x0c", b"\x00"]))
    elif style == 3:
        cut = data.draw(st.integers(0, len(line)))
        line = line[:cut] + b"\r" + line[cut:]
    elif style == 4:
        line = line.replace(b"e", b"\xc3\xa9", 1)
    elif style == 5:
        line = b" " + line + b"  "
    return line


# The scans and first line numbers the mutated batches are checked under.
SCANS = st.sampled_from([ECHO_V2, HTTPS_V1, "CP_Quack-http-2021-05-30-01-01-01"])
FIRST_LINES = st.sampled_from([1, 2**32 - 2, 4_000_000_000_000])


def mutated_lines(data: st.DataObject, n: int) -> list[bytes]:
    """``n`` mutated and re-serialised seed records."""
    return [serialise(data, mutate(data, data.draw(st.sampled_from(SEEDS)))) for _ in range(n)]


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    data = draw(st.data())
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        seed = draw(st.sampled_from(SEEDS))
        lines.append(serialise(data, mutate(data, seed)))
    return lines


# --- lines the C code hands back to Python ------------------------------------------------

# Handed back to Python by the C code, but rows for the reference: a v1 "Sent" text the
# C code does not parse (the reference's regex finds the request after the junk).
SLOW_WITH_ROWS = orjson.dumps(
    {
        "Server": "5.6.7.8",
        "Keyword": "late.com",
        "Retries": 0,
        "Results": [
            {
                "Sent": "junk\nGET / HTTP/1.1\r\nHost: late.com\r\n\r\n",
                "Received": "HTTP/1.1 200 OK",
                "Success": True,
                "StartTime": "2020-11-14T07:54:49.246304766-05:00",
                "EndTime": "2020-11-14T07:54:50.246304766-05:00",
            }
        ],
    }
)


def partly_native(i: int) -> bytes:
    """A v2 record whose first response the C code writes, its second one sends it slow."""
    record = orjson.loads(v2_line(i))
    record["response"].append(dict(record["response"][1], start_time="2021-05-30 00:00:00Z"))
    return orjson.dumps(record)
