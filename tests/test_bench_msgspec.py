"""The msgspec alternative measured against the C parser (issue 16) is equivalent to it.

``bench/bench_msgspec.py`` compares lines/s of the C path, the pure-Python path and
``bench/msgspec_hyperquack.py``; the comparison only means something if the msgspec path
does the same work and gives the same output. These tests check that on the real
fixtures (every column, dead letters and stats, with no line left to the reference
path) and on generated scans with malformed lines, and run the benchmark once, small.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sampledata import (
    DEFAULT_SCANS,
    iter_hyperquack_records,
    render_results,
    source_name,
)
from services.beam_launcher import native
from services.beam_launcher.enrichment.resources import Resources, load_resources
from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor
from services.beam_launcher.satellite import batch as satellite_batch
from services.common.rowschema import Row
from tests.conftest import REAL, REAL_HQ_SCANS, REAL_RESOURCES, REAL_SAT_SCANS, require_real

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from msgspec_hyperquack import MsgspecHyperquack, output_difference  # noqa: E402
from msgspec_satellite import MsgspecSatellite  # noqa: E402


@pytest.fixture(scope="module")
def resources() -> Resources:
    require_real()
    return load_resources(str(REAL_RESOURCES))


def c_processor(resources: Resources) -> HyperquackProcessor:
    proc = HyperquackProcessor(resources)
    if not proc.native:
        pytest.skip(
            "the C parser is not built or is disabled (CP_NATIVE_PARSER=0): "
            "run `python -m services.beam_launcher.native.build` (make env)"
        )
    return proc


def lines_of(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return lines[:-1] if lines and not lines[-1] else lines


@pytest.mark.parametrize("rel", sorted(REAL_HQ_SCANS))
def test_real_fixture_columns_equal_the_c_path(resources: Resources, rel: str) -> None:
    proc = c_processor(resources)
    alt = MsgspecHyperquack(HyperquackProcessor(resources, use_native=False))
    task = FileTask.for_test(REAL_HQ_SCANS[rel])
    lines = lines_of((REAL / rel).read_bytes())
    want = proc.process_columns(task, 1, lines)
    got = alt.process_columns(task, 1, lines)
    assert want.n_rows > 0
    assert output_difference(want, got) is None
    # Every line went through the msgspec decoder and the lean flattener, none through the
    # reference fallback: the equality above is the alternative's own.
    assert alt.slow_lines == 0
    # A second batch of the same lines (memos warm) gives the same columns again.
    again = alt.process_columns(task, 1 + len(lines), lines)
    assert output_difference(proc.process_columns(task, 1 + len(lines), lines), again) is None


@pytest.mark.parametrize(("scan_type", "version"), [("http", 2), ("https", 1), ("echo", 2)])
def test_generated_scan_with_bad_lines_equals_the_c_path(
    resources: Resources, scan_type: str, version: int
) -> None:
    proc = c_processor(resources)
    alt = MsgspecHyperquack(HyperquackProcessor(resources, use_native=False))
    spec = next(s for s in DEFAULT_SCANS if s.scan_type == scan_type and s.version == version)
    records = iter_hyperquack_records(scan_type, version, 120, 7, spec.start)
    data, n_bad = render_results(records, seed=7, bad_line_ratio=0.08)
    lines = lines_of(data)
    lines.insert(5, b"  \r")  # a blank line
    task = FileTask.for_test(source_name(scan_type, spec.start))
    for first in range(0, len(lines), 50):
        batch = lines[first : first + 50]
        want = proc.process_columns(task, first + 1, batch)
        got = alt.process_columns(task, first + 1, batch)
        assert output_difference(want, got) is None, f"batch from line {first + 1}"
    assert n_bad >= 6
    # The malformed lines (and only they) were left to the reference path, as C does.
    assert alt.slow_lines == n_bad


def test_invalid_utf8_in_an_ignored_key_is_a_dead_letter_as_on_the_c_path(
    resources: Resources,
) -> None:
    proc = c_processor(resources)
    alt = MsgspecHyperquack(HyperquackProcessor(resources, use_native=False))
    good = lines_of((REAL / "echo_v2" / "echo_results_v2.json").read_bytes())[0]
    bad = good.replace(b'"vp":', b'"note":"\xff","vp":', 1)
    task = FileTask.for_test(REAL_HQ_SCANS["echo_v2/echo_results_v2.json"])
    want = proc.process_columns(task, 1, [good, bad])
    got = alt.process_columns(task, 1, [good, bad])
    assert output_difference(want, got) is None
    assert [d["error_class"] for d in got.dead_letters] == ["invalid_json"]


def test_the_documented_difference_an_overflowing_number_in_an_ignored_key(
    resources: Resources,
) -> None:
    """msgspec accepts ``1e999`` in a key it skips; orjson (C and reference) rejects the line."""
    proc = c_processor(resources)
    alt = MsgspecHyperquack(HyperquackProcessor(resources, use_native=False))
    good = lines_of((REAL / "echo_v2" / "echo_results_v2.json").read_bytes())[0]
    odd = good.replace(b'"vp":', b'"note":1e999,"vp":', 1)
    task = FileTask.for_test(REAL_HQ_SCANS["echo_v2/echo_results_v2.json"])
    want = proc.process_columns(task, 1, [odd])
    got = alt.process_columns(task, 1, [odd])
    assert [d["error_class"] for d in want.dead_letters] == ["invalid_json"]
    assert got.dead_letters == [] and got.n_rows == proc.process_columns(task, 1, [good]).n_rows


def satellite_batches(alt: MsgspecSatellite, task: FileTask, lines: list[bytes]) -> None:
    """Both paths over ``lines`` in batches of 7: equal rows (with key order and types),
    stats and dead letters."""
    for first in range(0, len(lines), 7):
        batch = lines[first : first + 7]
        want_stats: dict[str, int] = {}
        got_stats: dict[str, int] = {}
        want_dead: list[Row] = []
        got_dead: list[Row] = []
        want = satellite_batch.parse_observation_batch(
            task, first + 1, batch, want_stats, want_dead
        )
        got = alt.parse_observation_batch(task, first + 1, batch, got_stats, got_dead)
        assert want == got
        assert orjson.dumps(want) == orjson.dumps(got)  # key order, True vs 1, 1.0 vs 1
        assert (want_stats, want_dead) == (got_stats, got_dead)


def test_satellite_rows_equal_the_c_path_on_the_real_fixtures() -> None:
    require_real()
    if satellite_batch.native_module() is None:
        pytest.skip("the C module _satfast is not built or is disabled (CP_NATIVE_PARSER=0)")
    alt = MsgspecSatellite()
    task = FileTask.for_test(REAL_SAT_SCANS["satellite_v2.2"])
    for rel in ("results.json", "initial_6a228c6/results.json"):
        lines = lines_of((REAL / "satellite_v2.2" / rel).read_bytes())
        satellite_batches(alt, task, lines)
    assert alt.slow_lines == 0
    control = FileTask.for_test(REAL_SAT_SCANS["satellite_v2.2"], "responses_control.json")
    satellite_batches(alt, control, lines)  # resolver_is_trusted from the file name


def test_satellite_odd_lines_equal_the_c_path() -> None:
    require_real()
    if satellite_batch.native_module() is None:
        pytest.skip("the C module _satfast is not built or is disabled (CP_NATIVE_PARSER=0)")
    alt = MsgspecSatellite()
    good = [x for x in lines_of((REAL / "satellite_v2.2" / "results.json").read_bytes()) if x]
    fast = [
        good[1].replace(b'"rcode":0', b'"rcode":"0"'),
        good[1].replace(b'"asnum":', b'"asnum":"  7","x":', 1),
        good[1].replace(b'"matches":[', b'"matches":[1,', 1),  # length mismatch warning
        good[3].replace(b'"start_time":"', b'"start_time":" ', 1),
        good[3].replace(b'"error":"null"', b'"error":""', 1),
        good[4] + b"\r",
    ]
    slow = [
        good[0][:50],
        good[1].replace(b'"rcode":0', b'"rcode":"x"'),
        good[2].replace(b'"passed_liveness":true,', b""),
        good[2].replace(b'"vp":', b'"note":"\xff","vp":', 1),
        b"[1,2]",
    ]
    task = FileTask.for_test(REAL_SAT_SCANS["satellite_v2.2"])
    satellite_batches(alt, task, [*fast, b"  ", *slow])
    assert alt.slow_lines == len(slow)


def test_benchmark_prints_all_three_paths_and_the_verdict() -> None:
    require_real()
    if native.load() is None:
        pytest.skip(
            "the C parser is not built: run `python -m services.beam_launcher.native.build`"
        )
    env = {**os.environ, "CP_NATIVE_PARSER": "1"}
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_msgspec.py"),
            "--only",
            "echo:v2",
            "--size",
            "60",
            "--repeats",
            "1",
            "--min-seconds",
            "0.01",
            "--sat-size",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "OUTPUTS DIFFER" not in out
    for dataset in ("real", "generated"):
        for path in ("C", "python", "msgspec"):
            assert any(
                line.split()[:4] == [dataset, "echo", "v2", path] and "lines/s" in line
                for line in out.splitlines()
            ), (dataset, path, out)
        assert f"summary {dataset}" in out
    verdicts = [
        line
        for line in out.splitlines()
        if line.split()[:1] in (["real"], ["generated"]) and line.split()[3] == "msgspec"
    ]
    assert verdicts and all(("PASS" in v) != ("FAIL" in v) for v in verdicts), out
    if satellite_batch.native_module() is not None:
        for dataset in ("real", "generated"):
            sat = [x for x in out.splitlines() if x.startswith(f"satellite {dataset} ")]
            names = [x.split("results.json")[1].split("  ")[0].strip() for x in sat]
            assert names == ["C", "python", "msgspec", "msgspec decode only"], out
            assert ("PASS" in sat[2]) != ("FAIL" in sat[2]) and "slow lines 0 of" in sat[2], out
