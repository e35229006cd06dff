"""The C Satellite v2.2 flattening (native/_satfast.c) against the Python reference.

Every test runs :func:`satellite_batch.parse_observation_batch` twice on the same lines,
once with the C module and once without, and requires identical rows (same keys in the
same order, same value types: ``1`` is not ``1.0`` is not ``True``), identical stats and
identical dead letters. Lines the C path does not handle must reach the Python path
unchanged; the ordinary real v2.2 lines must really be handled in C.

The module is optional: these tests skip when it is not built (``python -m
services.beam_launcher.native.build``), except on CI (``CI=true``), where it must be.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampledata import (
    SATELLITE,
    SATELLITE_SCANS,
    build_satellite_files,
    source_name,
)
from services.beam_launcher.hyperquack.processing import FileTask
from services.beam_launcher.native import NATIVE_ENV
from services.beam_launcher.satellite import batch as satellite_batch
from services.beam_launcher.satellite import parse as satellite
from tests.conftest import REAL, REAL_SAT_SCANS

V22_SCAN = "CP_Satellite-2021-10-20-14-00-01"


@pytest.fixture(scope="module")
def native() -> Any:
    module = satellite_batch._load_native()
    if module is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{satellite_batch.NATIVE_MODULE} is not built (required on CI)")
        pytest.skip(
            f"{satellite_batch.NATIVE_MODULE} is not built "
            "(python -m services.beam_launcher.native.build)"
        )
    return module


# --- helpers ------------------------------------------------------------------------------


def same(a: Any, b: Any, where: str = "") -> None:
    """Strict equality: same types, same dict key order, recursively."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def task_for(source: str = V22_SCAN, source_file: str = "results.json") -> FileTask:
    return FileTask.for_test(source, source_file)


def compare(native: Any, lines: list[bytes], task: FileTask | None = None, first: int = 1) -> int:
    """Run both paths on ``lines``; assert they agree; return how many lines C did."""
    task = task or task_for()
    c_stats: dict[str, int] = {}
    c_dead: list[Any] = []
    py_stats: dict[str, int] = {}
    py_dead: list[Any] = []
    c_rows = satellite_batch.parse_observation_batch(
        task, first, list(lines), c_stats, c_dead, native=native
    )
    py_rows = satellite_batch.parse_observation_batch(
        task, first, list(lines), py_stats, py_dead, native=None
    )
    same(c_rows, py_rows, "rows")
    assert c_stats == py_stats
    assert "native_errors" not in c_stats
    same(c_dead, py_dead, "dead")
    _rows, fast, slow = satellite_batch._native_batch(native, task, first, list(lines))
    assert fast + len(slow) == len(lines)
    assert sorted(offset for offset, _, _ in slow) == [offset for offset, _, _ in slow]
    return int(fast)


# --- real and generated files -------------------------------------------------------------


def real_file(rel: str) -> list[bytes]:
    path = REAL / rel
    if not path.is_file():
        pytest.skip(f"real fixture {rel} not found")
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize(
    "rel", ["satellite_v2.2/results.json", "satellite_v2.2/initial_6a228c6/results.json"]
)
def test_real_v2_2_lines_take_the_c_path(native: Any, rel: str) -> None:
    lines = real_file(rel)
    non_blank = [line for line in lines if line.strip()]
    assert compare(native, lines) == len(non_blank) > 0  # every ordinary real line is done in C
    # Line ends, CRLF, a big first line number and a trusted (control) file name.
    crlf = [line.rstrip(b"\r\n") + b"\r\n" for line in lines]
    assert (compare(native, crlf, first=2**40)) == len(non_blank)
    control = task_for(source_file="responses_control.json")
    assert (compare(native, lines, task=control)) == len(non_blank)


def observation_files() -> list[tuple[str, str]]:
    out = []
    for folder in REAL_SAT_SCANS:
        for path in sorted((REAL / folder).glob("**/*.json")):
            if satellite.file_role(path.name) == "observations":
                out.append((folder, str(path.relative_to(REAL))))
    return out


@pytest.mark.parametrize(("folder", "rel"), observation_files() or [("none", "none")])
def test_real_observation_files_match(native: Any, folder: str, rel: str) -> None:
    lines = real_file(rel)
    task = task_for(REAL_SAT_SCANS.get(folder, V22_SCAN), Path(rel).name)
    fast = compare(native, lines, task=task)
    if folder != "satellite_v2.2":  # other formats all go to the Python path
        assert fast == 0


@pytest.mark.parametrize(("size", "seed", "bad"), [(300, 0, 0.0), (400, 7, 0.05)])
def test_generated_scan_matches(native: Any, size: int, seed: int, bad: float) -> None:
    spec = SATELLITE_SCANS[0]
    members, _, n_bad = build_satellite_files(size, seed, spec.start, bad_line_ratio=bad)
    lines = members["results.json"].splitlines(keepends=True)
    task = task_for(source_name(SATELLITE, spec.start))
    for start in range(0, len(lines), 128):  # pipeline-like batches
        compare(native, lines[start : start + 128], task=task, first=start + 1)
    assert compare(native, lines, task=task) >= 0.8 * (len(lines) - n_bad)


# --- targeted cases -----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "confidence": {
        "average": 100,
        "matches": [100, 87.5],
        "untagged_controls": False,
        "untagged_response": False,
    },
    "passed_liveness": True,
    "connect_error": False,
    "in_control_group": True,
    "anomaly": False,
    "excluded": False,
    "vp": "8.8.8.8",
    "test_url": "1688.com",
    "start_time": "2021-10-20 14:51:41.206101745 -0400 EDT",
    "end_time": "2021-10-20 14:51:41.333865024 -0400 EDT m=+0.5",
    "exclude_reason": [],
    "location": {"country_name": "United States", "country_code": "US"},
    "response": [
        {
            "url": "1688.com",
            "has_type_a": True,
            "response": {
                "140.205.174.2": {
                    "http": "b51a80f8",
                    "cert": "cc81d244",
                    "asnum": 37963,
                    "asname": "CNNIC-ALIBABA-CN-NET-AP",
                    "matched": ["ip", "http", "cert", "asnum", "asname"],
                },
                "42.156.140.12": {
                    "http": "",
                    "cert": "",
                    "asnum": 37963,
                    "asname": "",
                    "matched": ["no_tags"],
                },
            },
            "error": "null",
            "rcode": 0,
        },
        {"url": "a.root-servers.net.", "has_type_a": True, "response": {}, "error": "", "rcode": 0},
        {"url": "", "has_type_a": False, "response": None, "error": "read: timeout", "rcode": -1},
        {
            "url": "WWW.Example.COM",
            "has_type_a": True,
            "response": {"1.2.3.4": {}},
            "error": None,
            "rcode": 2,
        },
    ],
}


def dump(record: Any) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(record, ensure_ascii=False).encode()


def test_base_record_takes_the_c_path(native: Any) -> None:
    assert (compare(native, [dump(BASE)])) == 1
    rows, _, _ = satellite_batch._native_batch(native, task_for(), 1, [dump(BASE)])
    assert [r["retry"] for r in rows] == [0, None, 1, None]
    assert rows[0]["_row_id"].endswith(":0") and rows[3]["_row_id"].endswith(":3")


def test_row_warnings_are_counted_the_same_on_both_paths(native: Any) -> None:
    # A v2.2 record whose confidence.matches does not pair with its answers (done in C) and
    # a v2.1 attempt without its error text (always Python): both kept, both counted.
    mismatch = copy.deepcopy(BASE)
    mismatch["confidence"]["matches"] = [100]
    v21 = {
        "vp": "192.0.2.53",
        "test_url": "example.org",
        "response": {"rcode": ["-1"]},
        "passed_control": True,
        "connect_error": True,
        "start_time": "2021-04-26 10:00:00.000000001 -0400 EDT m=+1.000000001",
    }
    lines = [dump(mismatch), dump(v21), dump(BASE)]
    assert compare(native, lines) == 2
    stats: dict[str, int] = {}
    rows = satellite_batch.parse_observation_batch(task_for(), 1, lines, stats, [], native=native)
    flagged = [r["_warnings"] for r in rows if r.get("_warnings")]
    assert flagged == [
        ["confidence_matches_length_mismatch"],  # 2 answers, 1 match
        ["rcode_error_missing"],
        ["confidence_matches_length_mismatch"],  # BASE's last roundtrip: 1 answer, 2 matches
    ]
    assert stats["row_warnings.confidence_matches_length_mismatch"] == 2
    assert stats["row_warnings.rcode_error_missing"] == 1
    assert "dead_letters" not in stats


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"\r\n",
        b"\x0b{}",
        b"[]",
        b"42",
        b"{",
        b"{}",
        b'{"vp": "1.1.1.1"}',
        b'  {"vp": "1.1.1.1", "test_url": "a.com", "response": [], "passed_liveness": null}',
        b"\xff\xfe",
        b'{"a": 1} trailing',
    ],
)
def test_odd_lines_match(native: Any, line: bytes) -> None:
    compare(native, [line, dump(BASE), line + b"\n"])


def test_env_switch_and_failed_batches(native: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NATIVE_ENV, "0")
    assert satellite_batch.native_module() is None
    assert satellite_batch.parser_path() == "python"
    monkeypatch.setenv(NATIVE_ENV, "1")
    assert satellite_batch.native_module() is native
    assert satellite_batch.parser_path() == "native"

    class Broken:
        @staticmethod
        def flatten_v2_2_batch(*_args: Any) -> Any:
            raise RuntimeError("boom")

    lines = [dump(BASE), b"{", b""]
    stats: dict[str, int] = {}
    dead: list[Any] = []
    rows = satellite_batch.parse_observation_batch(task_for(), 1, lines, stats, dead, Broken)
    py_stats: dict[str, int] = {}
    py_dead: list[Any] = []
    py_rows = satellite_batch.parse_observation_batch(task_for(), 1, lines, py_stats, py_dead, None)
    same(rows, py_rows)
    assert stats.pop("native_errors") == 1
    assert stats == py_stats
    same(dead, py_dead)


def test_c_function_arguments(native: Any) -> None:
    task = task_for()
    args = (orjson.loads, "ab" * 12, task.source, task.source_file, "v", False)
    rows, fast, slow = native.flatten_v2_2_batch(["not bytes", dump(BASE)], 1, *args)
    assert (len(rows), fast, slow) == (4, 1, [(0, 0, None)])
    with pytest.raises(ValueError):
        native.flatten_v2_2_batch([dump(BASE)], -1, *args)
    with pytest.raises(OverflowError):
        native.flatten_v2_2_batch([dump(BASE)], 2**70, *args)
    with pytest.raises(TypeError):
        native.flatten_v2_2_batch((dump(BASE),), 1, *args)


# --- timestamps ---------------------------------------------------------------------------

TIMESTAMPS = [
    "2021-10-20 14:51:41 -0400 EDT",
    "2021-10-20 14:51:41.2 +0000 UTC",
    "2021-10-20 14:51:41.123456 -0000",
    "2021-10-20 14:51:41.1234567 +2359 X",
    "2021-10-20 14:51:41.123456789 -0400 EDT m=+10164.3",
    "2021-10-20 14:51:41.1234567890 -0400 EDT",
    "2021-10-20 14:51:41. -0400 EDT",
    "2021-02-29 00:00:00 -0400 EDT",
    "2020-02-29 00:00:00 -0400 EDT",
    "2000-02-29 00:00:00 -0400 EDT",
    "1900-02-29 00:00:00 -0400 EDT",
    "2021-02-30 00:00:00 -0400 EDT",
    "2021-04-31 00:00:00 -0400 EDT",
    "2021-13-01 00:00:00 -0400 EDT",
    "2021-00-01 00:00:00 -0400 EDT",
    "2021-01-00 00:00:00 -0400 EDT",
    "0000-01-01 00:00:00 +0000 UTC",
    "0001-01-01 00:00:00 +0000 UTC",
    "9999-12-31 23:59:59.999999999 +0000 UTC",
    "2021-10-20 24:00:00 -0400 EDT",
    "2021-10-20 23:60:00 -0400 EDT",
    "2021-10-20 23:59:60 -0400 EDT",
    "2021-10-20 14:51:41 -2400 EDT",
    "2021-10-20 14:51:41 -0460 EDT",
    "2021-10-20 14:51:41 -0499 EDT",
    "2021-10-20 14:51:41 -04:00 EDT",
    "2021-10-20 14:51:41 +04",
    "2021-10-20  14:51:41 -0400 EDT",
    "2021-10-20\t14:51:41 -0400 EDT",
    "2021-10-20 14:51:41 -0400\tEDT",
    "2021-10-20 14:51:41 -0400",
    "2021-10-20 14:51:41",
    " 2021-10-20 14:51:41 -0400 EDT",
    "2021-10-20T14:51:41.5-04:00",
    "2021-10-20T14:51:41Z",
    "2021-10-20 14:51:41 ０４００",
    "2021-10-20 14:51:41 -0400 ÉDT",
    "２０21-10-20 14:51:41 -0400 EDT",
    "",
    "   ",
]


@pytest.mark.parametrize("value", TIMESTAMPS)
def test_timestamps_match(native: Any, value: str) -> None:
    for key in ("start_time", "end_time"):
        record = copy.deepcopy(BASE)
        record[key] = value
        compare(native, [dump(record)])


digits = st.integers(min_value=0, max_value=99)


@st.composite
def go_timestamps(draw: st.DrawFn) -> str:
    year = draw(st.sampled_from([0, 1, 1900, 2000, 2020, 2021, 2024, 9999]))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(digits)
    frac = draw(st.text("0123456789", max_size=11))
    sep = draw(st.sampled_from([" ", " ", " ", "  ", "\t", "T"]))
    sign = draw(st.sampled_from("+-+-~"))
    off = f"{draw(st.integers(0, 25)):02d}{draw(digits):02d}"
    tail = draw(st.sampled_from(["", " EDT", " UTC m=+1.5", "\tEDT", "EDT", " é"]))
    dot = "." if frac or draw(st.booleans()) else ""
    return (
        f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}"
        f"{dot}{frac} {sign}{off}{tail}"
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=go_timestamps(), end=go_timestamps())
def test_generated_timestamps_match(native: Any, start: str, end: str) -> None:
    record = copy.deepcopy(BASE)
    record["start_time"], record["end_time"] = start, end
    compare(native, [dump(record)])


# --- mutated records ----------------------------------------------------------------------

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63, -(2**63) - 1, 2**1030, 1.5, -0.0, 1e308]),
    st.floats(allow_nan=False),
    st.sampled_from(
        ["", "null", "0", " 7 ", "ip", "no_tags", "x", "é", "日本", "A.ROOT-SERVERS.NET"]
    ),
    st.text(max_size=8),
    st.lists(st.sampled_from(["ip", "http", "cert", "asnum", "asname", "no_tags", ""]), max_size=6),
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-5, 200),
            st.floats(allow_nan=False),
            st.booleans(),
            st.text(max_size=3),
        ),
        max_size=4,
    ),
    st.just({}),
    st.just({"country_code": "DE"}),
    st.just({"1.1.1.1": {"matched": None}}),
    st.just([{}]),
    st.just(BASE["response"][0]),
    go_timestamps(),
)

DELETE = object()


def paths(record: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every (container path, key) we may mutate."""
    out: list[tuple[Any, ...]] = [((), k) for k in [*record, "new_key", "passed_control"]]
    for key in ("confidence", "location"):
        if isinstance(record.get(key), dict):
            out += [((key,), k) for k in [*record[key], "extra"]]
    if isinstance(record.get("confidence"), dict) and isinstance(
        record["confidence"].get("matches"), list
    ):
        out += [(("confidence", "matches"), i) for i in range(len(record["confidence"]["matches"]))]
    response = record.get("response")
    for i, rt in enumerate(response if isinstance(response, list) else []):
        if isinstance(rt, dict):
            out += [(("response", i), k) for k in [*rt, "extra"]]
            inner = rt.get("response")
            if isinstance(inner, dict):
                for ip, tags in inner.items():
                    out.append((("response", i, "response"), ip))
                    if isinstance(tags, dict):
                        out += [(("response", i, "response", ip), k) for k in [*tags, "x"]]
    return out


def mutate(record: dict[str, Any], path: tuple[Any, ...], key: Any, value: Any) -> None:
    node: Any = record
    for step in path:
        node = node[step]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(key, None)
        elif isinstance(node, list) and key < len(node):
            del node[key]
    elif isinstance(node, list):
        if key < len(node):
            node[key] = value
    else:
        node[key] = value


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(min_value=1, max_value=4))
def test_mutated_records_match(native: Any, data: st.DataObject, n: int) -> None:
    record = copy.deepcopy(BASE)
    for _ in range(n):
        choices = paths(record)
        path, key = data.draw(st.sampled_from(choices))
        value = data.draw(st.one_of(st.just(DELETE), ODD_VALUES))
        mutate(record, path, key, value if value is DELETE else copy.deepcopy(value))
    line = dump(record)
    cut = data.draw(st.sampled_from([None, None, None, 0.5, 0.9]))
    if cut is not None:  # invalid JSON
        line = line[: int(len(line) * cut)]
    prefix = data.draw(st.sampled_from([b"", b" ", b"\t", b"\n"]))
    compare(native, [dump(BASE), prefix + line + b"\n", b"", dump(BASE)])


def test_non_ascii_and_bool_values(native: Any) -> None:
    cases: list[tuple[tuple[Any, ...], Any, Any]] = [
        ((("response", 0)), "url", "例え.jp"),
        ((("response", 0)), "url", "\u212aorea.com"),
        ((("response", 0)), "rcode", True),
        ((("response", 0)), "rcode", "0"),
        ((("response", 0)), "rcode", 2**80),
        ((("response", 0, "response", "140.205.174.2")), "asnum", True),
        ((("response", 0, "response", "140.205.174.2")), "asnum", "13335"),
        ((("response", 0, "response", "140.205.174.2")), "asnum", 2**80),
        ((("response", 0, "response", "140.205.174.2")), "matched", None),
        ((("response", 0, "response", "140.205.174.2")), "matched", []),
        ((("response", 0, "response", "140.205.174.2")), "matched", [1]),
        (("confidence",), "average", True),
        (("confidence",), "average", 2**1030),
        (("confidence",), "matches", [100]),
        (("confidence",), "matches", None),
        (("confidence",), "matches", [None, 2**1030]),
        ((), "confidence", None),
        ((), "confidence", []),
        ((), "location", None),
        ((), "location", {"country_code": ""}),
        ((), "location", {"country_code": 1}),
        ((), "exclude_reason", ["a", "b"]),
        ((), "exclude_reason", None),
        ((), "exclude_reason", [1]),
        ((), "passed_liveness", None),
        ((), "passed_liveness", False),
        ((), "passed_liveness", 1),
        ((), "vp", "1.1.1.1"),
        ((), "vp", 1),
        ((), "test_url", None),
        ((), "response", []),
        ((), "response", [1]),
        ((), "end_time", None),
        ((), "end_time", ""),
        ((), "end_time", 5),
        ((), "start_time", None),
    ]
    for path, key, value in cases:
        record = copy.deepcopy(BASE)
        mutate(record, path, key, value)
        compare(native, [dump(record)])
