"""The native Hyperquack parser (services/beam_launcher/native/_hqfast.c) equals Python.

Every test compares ``HyperquackProcessor.process_lines`` with the C extension against the
pure-Python reference (``use_native=False``): rows (values, types, key order), dead
letters and stats must be identical. Without the compiled module the tests skip, except
in CI (``CI=true``), where the module must have been built.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.beam_launcher import native
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, Resources, load_resources
from services.beam_launcher.hyperquack import processing
from services.beam_launcher.hyperquack.outcomes import load_hyperquack_rules
from services.beam_launcher.hyperquack.processing import BatchOutput, FileTask, HyperquackProcessor
from services.common.sample_scans import (
    HYPERQUACK_SCANS,
    go_json_line,
    iter_hyperquack_records,
    source_name,
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


def test_native_module_is_built_in_ci() -> None:
    if MODULE is None:
        if IN_CI:
            pytest.fail("CI=true but services/beam_launcher/native/_hqfast is not built")
        pytest.skip("native parser not built (python -m services.beam_launcher.native.build)")
    assert processing._native is MODULE


_SAMPLE: Resources | None = None
_REAL: Resources | None = None


def sample_resources() -> Resources:
    global _SAMPLE
    if _SAMPLE is None:
        _SAMPLE = load_resources(str(SAMPLE_RESOURCES))
    return _SAMPLE


def real_resources() -> Resources:
    global _REAL
    if not REAL_RESOURCES.is_dir():
        pytest.skip(f"real fixtures not found at {REAL} (shared/fixtures/real is absent)")
    if _REAL is None:
        _REAL = load_resources(str(REAL_RESOURCES))
    return _REAL


class Pair:
    """A native and a pure-Python processor over the same resources."""

    def __init__(self, resources: Resources) -> None:
        with mock.patch.dict(os.environ, {"CP_NATIVE_PARSER": "1"}):  # on even if the env is off
            self.fast = HyperquackProcessor(resources)
        self.ref = HyperquackProcessor(resources, use_native=False)
        assert self.fast.native, "the native parser should be active"
        assert not self.ref.native

    def check(self, task: FileTask, first: int, lines: list[bytes]) -> BatchOutput:
        got = self.fast.process_lines(task, first, lines)
        want = self.ref.process_lines(task, first, lines)
        assert_same(got, want)
        return got


def assert_same(got: BatchOutput, want: BatchOutput) -> None:
    assert len(got.rows) == len(want.rows)
    for a, b in zip(got.rows, want.rows, strict=True):
        assert a == b
        assert list(a) == list(b)  # same column order
        assert [type(v) for v in a.values()] == [type(v) for v in b.values()]
    assert got.dead_letters == want.dead_letters
    assert dict(got.stats) == dict(want.stats)


_PAIRS: dict[str, Pair] = {}


def pair(kind: str) -> Pair:
    if kind not in _PAIRS:
        _PAIRS[kind] = Pair(real_resources() if kind == "real" else sample_resources())
    return _PAIRS[kind]


# --- real fixtures ----------------------------------------------------------------------


@needs_module
@pytest.mark.parametrize("rel", sorted(REAL_HQ_SCANS))
def test_real_fixture_equal_and_handled_natively(rel: str) -> None:
    p = pair("real")
    path = REAL / rel
    if not path.is_file():
        pytest.skip(f"real fixture {path} is absent")
    lines = path.read_bytes().splitlines(keepends=True)
    task = FileTask.for_test(REAL_HQ_SCANS[rel])
    out = p.check(task, 1, lines)
    assert out.rows and not out.dead_letters
    # The C code handled every line itself: nothing was sent to the Python slow path.
    rows, slow, counts = MODULE.process_batch(lines, 1, p.fast._native_context(task))
    assert slow == []
    assert counts[0] == len([x for x in lines if x.strip()])
    assert rows == out.rows
    # Repeated (warm caches, other line numbers) gives the same again.
    p.check(task, 1001, lines + lines)


# --- generated scans ----------------------------------------------------------------------


def generated_lines(scan_type: str, version: int, n: int) -> tuple[FileTask, list[bytes]]:
    spec = next(s for s in HYPERQUACK_SCANS if s.scan_type == scan_type and s.version == version)
    lines = [go_json_line(r) for r in iter_hyperquack_records(scan_type, version, n, 7, spec.start)]
    return FileTask.for_test(source_name(scan_type, spec.start)), lines


@needs_module
@pytest.mark.parametrize("scan_type", ["echo", "discard", "http", "https"])
@pytest.mark.parametrize("version", [1, 2])
def test_generated_scans_equal(scan_type: str, version: int) -> None:
    p = pair("sample")
    task, lines = generated_lines(scan_type, version, 400)
    before = p.fast.native_slow_lines
    for start in range(0, len(lines), 150):
        p.check(task, start + 1, lines[start : start + 150])
    handled_in_python = p.fast.native_slow_lines - before
    assert handled_in_python <= len(lines) // 10, "the native path should handle most lines"


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


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    data = draw(st.data())
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        seed = draw(st.sampled_from(SEEDS))
        lines.append(serialise(data, mutate(data, seed)))
    return lines


@needs_module
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=batches(),
    scan=st.sampled_from([ECHO_V2, HTTPS_V1, "CP_Quack-http-2021-05-30-01-01-01"]),
    first=st.sampled_from([1, 2**32 - 2, 4_000_000_000_000]),
)
def test_mutated_records_equal(lines: list[bytes], scan: str, first: int) -> None:
    pair("sample").check(FileTask.for_test(scan), first, lines)


@needs_module
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_records_equal_real_resources(data: st.DataObject) -> None:
    p = pair("real")
    lines = [serialise(data, mutate(data, data.draw(st.sampled_from(SEEDS)))) for _ in range(3)]
    p.check(FileTask.for_test(HTTPS_V1), 1, lines)


@needs_module
@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   \t",
        b"not json",
        b"[]",
        b"null",
        b'{"a": 1}',
        b'{"vp": 1, "test_url": "a", "response": []}',
        b'{"vp": "1.2.3.4", "test_url": "a", "response": []}',
        b'{"Server": "1.2.3.4", "Keyword": "a", "Results": [], "Retries": 99999999999999999999}',
        b'{"vp": "1", "test_url": "a", "response": [{"start_time": "2020-02-30T00:00:00Z"}]}',
        b'{"vp": "1", "test_url": "a", "response": [{"start_time": "2020-02-29T00:00:00Z",'
        b' "end_time": "2020-02-29T00:00:00.123456789+05:30", "response": {"TlsVersion":'
        b" 18446744073709551615}}]}",
        b'{"vp": "1", "test_url": "a", "response": [{"start_time": "2020-02-29T00:00:00Z",'
        b' "end_time": "2020-02-29T00:00:00Z", "response": {"headers": {"A": [1]}}}]}',
        b'{"vp": "1", "test_url": "a", "anomaly": true, "response": [{"start_time":'
        b' "2020-02-29T00:00:00Z", "end_time": "2020-02-29T00:00:00Z", "error": ";x",'
        b' "response": {"headers": {}, "status_line": ""}}]}',
        b'\xff\xfe{"vp": "1"}',
        b'{"vp": "\\ud800", "test_url": "\\udfff", "response": []}',
    ],
)
def test_odd_lines_equal(line: bytes) -> None:
    p = pair("sample")
    p.check(FileTask.for_test(ECHO_V2), 1, [line])
    p.check(FileTask.for_test(ECHO_V2), 1, [b"", line, line + b"\r\n", b"\n"])


# --- outcome feature key ------------------------------------------------------------------

RULES = load_hyperquack_rules()

ROWS = st.fixed_dictionaries(
    {},
    optional={
        "received_error": st.none()
        | st.sampled_from(
            [
                "",
                ";",
                "read: connection reset by peer",
                "dial tcp: i/o timeout;x",
                "context deadline exceeded",
                "x;read tcp 1.2.3.4:80: i/o timeout",
                "Incorrect web response: status lines don't match",
            ]
        )
        | st.text(max_size=30),
        "matches_template": st.sampled_from([None, True, False]),
        "is_known_blockpage": st.sampled_from([None, True, False]),
        "page_signature": st.none() | st.sampled_from(["", "b_x", "b_x~2", "f_y"]),
        "received_headers": st.none()
        | st.lists(
            st.sampled_from(["Server: AkamaiGHost", "Server: GHost", "Server: nginx", "X: 1"])
            | st.text(max_size=8),
            max_size=4,
        ),
        "received_status": st.none() | st.sampled_from(["", "2", "200 OK", "HTTP/1.1 403"]),
        "domain": st.text(max_size=5),
    },
)


@settings(max_examples=1500, deadline=None)
@given(row=ROWS, scan_type=st.sampled_from(["echo", "discard", "http", "https"]))
def test_classify_features_equals_classify(row: dict[str, Any], scan_type: str) -> None:
    key = RULES.feature_key(row)
    assert hash(key) is not None
    assert RULES.classify_features(key, scan_type) == RULES.classify(row, scan_type)


def test_feature_key_only_for_rule_data_predicates() -> None:
    assert RULES.features_exact
    assert RULES.trusted_headers == {"Server: AkamaiGHost", "Server: GHost"}


# --- switches, fallback, memory -------------------------------------------------------------


@needs_module
def test_env_switch_turns_native_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_NATIVE_PARSER", "0")
    assert not HyperquackProcessor(sample_resources()).native
    monkeypatch.setenv("CP_NATIVE_PARSER", "1")
    assert HyperquackProcessor(sample_resources()).native


def _v2_line(i: int) -> bytes:
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


@needs_module
def test_native_exception_falls_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    p = pair("sample")
    lines = [_v2_line(i) for i in range(3)] + [b"junk"]
    want = p.ref.process_lines(FileTask.for_test(ECHO_V2), 1, lines)

    class Broken:
        @staticmethod
        def process_batch(*_args: Any) -> Any:
            raise RuntimeError("native bug")

    monkeypatch.setattr(processing, "_native", Broken)
    got = p.fast.process_lines(FileTask.for_test(ECHO_V2), 1, lines)
    assert got.stats.pop("native_fallback_batches") == 1
    assert_same(got, want)


class ExplodingMatcher:
    def match(self, text: str) -> Any:
        raise KeyError("boom")


@needs_module
def test_python_callback_error_is_dead_lettered_like_python() -> None:
    resources = dataclasses.replace(sample_resources(), matcher=ExplodingMatcher())  # type: ignore[arg-type]
    p = Pair(resources)
    lines = [_v2_line(i) for i in range(2)]
    out = p.check(FileTask.for_test(ECHO_V2), 1, lines)
    assert out.stats["dead_letters.internal_error"] == 2
    assert p.fast.native_slow_lines == 2


@needs_module
def test_no_leaks_on_repeated_hostile_batches() -> None:
    p = pair("sample")
    task = FileTask.for_test(ECHO_V2)
    good = [_v2_line(i) for i in range(20)]
    hostile = [
        b"junk",
        b"[1, 2]",
        b'{"vp": "1", "test_url": "a", "response": [{"start_time": "2021-02-29T00:00:00Z"}]}',
        b'{"vp": "1", "test_url": "a", "response": [{"start_time": "2020-02-29T00:00:00Z",'
        b' "end_time": "2020-02-29T00:00:00Z", "response": {"headers": {"A": ["x", 1]}}}]}',
        b'{"Server": "1", "Keyword": "k", "Results": [{"Sent": "xGET / HTTP/1.1"}]}',
    ]
    batch = good + hostile + good

    def run() -> None:
        for _ in range(30):
            p.fast.process_lines(task, 1, batch)
            MODULE.process_batch(batch, 1, p.fast._native_context(task))

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
    assert second - first < 64 * 1024, f"memory grew by {second - first} bytes"


@needs_module
def test_bad_arguments_raise_instead_of_crashing() -> None:
    ctx = pair("sample").fast._native_context(FileTask.for_test(ECHO_V2))
    with pytest.raises(TypeError):
        MODULE.process_batch("x", 1, ctx)
    with pytest.raises(TypeError):
        MODULE.process_batch([b"{}"], 1, ctx[:-1])
    with pytest.raises(TypeError):
        MODULE.process_batch([b"{}"], 1, (None,) * len(ctx))
    with pytest.raises(OverflowError):
        MODULE.process_batch([b"{}"], 2**80, ctx)
    rows, slow, _ = MODULE.process_batch([b"{}", 5, "str"], 1, ctx)
    assert rows == [None, None, None] and slow == [0, 1, 2]


@needs_module
def test_module_columns_are_schema_columns() -> None:
    module = native.load("_hqfast")
    assert set(module.COLUMNS) <= set(processing.HYPERQUACK_SCAN.column_names)
    assert processing._checked_native(module) is module


def test_module_writing_an_unknown_column_is_not_used() -> None:
    class Renamed:
        COLUMNS = ("server_ip", "old_column_name")

    class Unlabelled:  # a module from before COLUMNS existed
        pass

    assert processing._checked_native(Renamed) is None
    assert processing._checked_native(Unlabelled) is None
    assert processing._checked_native(None) is None
