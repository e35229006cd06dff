"""The native Hyperquack parser (services/beam_launcher/native/_hqfast.c) equals Python.

Every test compares ``HyperquackProcessor.process_lines`` with the C extension against the
pure-Python reference (``use_native=False``): rows (values, types, key order), dead
letters and stats must be identical. Without the compiled module the tests skip, except
in CI (``CI=true``), where the module must have been built.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.beam_launcher import native
from services.beam_launcher.hyperquack import processing
from services.beam_launcher.hyperquack.outcomes import load_hyperquack_rules
from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor
from tests.conftest import REAL_HQ_SCANS
from tests.helpers_native import (
    ECHO_V2,
    FIRST_LINES,
    HTTPS_V1,
    IN_CI,
    MODULE,
    SCANS,
    assert_bad_arguments_raise,
    assert_same,
    batches,
    exploding_pair,
    generated_lines,
    memory_growth,
    mutated_lines,
    needs_module,
    pair,
    real_fixture,
    sample_resources,
    v2_line,
)


def test_native_module_is_built_in_ci() -> None:
    if MODULE is None:
        if IN_CI:
            pytest.fail("CI=true but services/beam_launcher/native/_hqfast is not built")
        pytest.skip("native parser not built (python -m services.beam_launcher.native.build)")
    assert processing._native is MODULE


# --- real fixtures ----------------------------------------------------------------------


@needs_module
@pytest.mark.parametrize("rel", sorted(REAL_HQ_SCANS))
def test_real_fixture_equal_and_handled_natively(rel: str) -> None:
    p = pair("real")
    task, lines = real_fixture(rel)
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


@needs_module
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=batches(),
    scan=SCANS,
    first=FIRST_LINES,
)
def test_mutated_records_equal(lines: list[bytes], scan: str, first: int) -> None:
    pair("sample").check(FileTask.for_test(scan), first, lines)


@needs_module
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_records_equal_real_resources(data: st.DataObject) -> None:
    p = pair("real")
    lines = mutated_lines(data, 3)
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


@needs_module
def test_native_exception_falls_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    p = pair("sample")
    lines = [v2_line(i) for i in range(3)] + [b"junk"]
    want = p.ref.process_lines(FileTask.for_test(ECHO_V2), 1, lines)

    class Broken:
        @staticmethod
        def process_batch(*_args: Any) -> Any:
            raise RuntimeError("native bug")

    monkeypatch.setattr(processing, "_native", Broken)
    got = p.fast.process_lines(FileTask.for_test(ECHO_V2), 1, lines)
    assert got.stats.pop("native_fallback_batches") == 1
    assert_same(got, want)


@needs_module
def test_python_callback_error_is_dead_lettered_like_python() -> None:
    p = exploding_pair()
    lines = [v2_line(i) for i in range(2)]
    out = p.check(FileTask.for_test(ECHO_V2), 1, lines)
    assert out.stats["dead_letters.internal_error"] == 2
    assert p.fast.native_slow_lines == 2


@needs_module
def test_no_leaks_on_repeated_hostile_batches() -> None:
    p = pair("sample")
    task = FileTask.for_test(ECHO_V2)
    good = [v2_line(i) for i in range(20)]
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

    growth = memory_growth(run)
    assert growth < 64 * 1024, f"memory grew by {growth} bytes"


@needs_module
def test_bad_arguments_raise_instead_of_crashing() -> None:
    ctx = pair("sample").fast._native_context(FileTask.for_test(ECHO_V2))
    assert_bad_arguments_raise(MODULE.process_batch, ctx)
    with pytest.raises(TypeError):
        MODULE.process_batch([b"{}"], 1, (None,) * len(ctx))
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
