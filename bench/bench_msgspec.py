"""The C parser vs msgspec vs pure Python: lines/s of ``process_columns`` on one core.

Usage: ``uv run python bench/bench_msgspec.py [--size 10000] [--repeats 3]
[--scan-file PATH] [--only http:v2] [--check]``

Issue 16's decision rule: if the msgspec path (``bench/msgspec_hyperquack.py``: typed
decoding into ``msgspec.Struct``s plus a lean Python flattener) reaches at least
``--threshold`` (70%) of the C path's lines/s, the C parsers can go; otherwise they stay.
Three paths, same process, same input, same resources, timed in turn (C, Python,
msgspec) in every repeat, pinned to one CPU:

* ``C``: ``HyperquackProcessor.process_columns`` with the native module
  (``services/beam_launcher/native/_hqfast.c``, built by ``make env``);
* ``python``: the same with ``use_native=False`` (the pure-Python reference);
* ``msgspec``: ``MsgspecHyperquack.process_columns``.

Before timing, each data set goes once through all three paths and the outputs must be
equal (columns compared as JSON bytes, dead letters, stats); a difference is printed and
the script exits 1. Data sets (batches of ``--batch`` lines, as in the pipeline):

* ``real``: the real records of ``../shared/fixtures/real/<type>_<v>/``, repeated until a
  repeat is ``--min-seconds`` of C work, with the real resources; warm memos (the same few
  records again and again), so this is mostly per-line decoding and flattening;
* ``generated``: ``--size`` measurements per type/version from
  ``sampledata`` (Go-style JSON lines); every cache and memo of every
  path is emptied before every repeat (one cold pass over one scan file);
* ``file``: ``--scan-file`` (a ``results.json`` or ``.json.gz`` of a Hyperquack scan, its
  scan name taken from the parent folder), cold like ``generated``.

Satellite (``--skip-satellite`` leaves it out): v2.2 ``results.json`` through
``satellite_batch.parse_observation_batch`` with the C module (``_satfast.c``) and without
it, and ``bench/msgspec_satellite.py`` (same rows, checked equal first), plus msgspec
decoding alone into the Structs (no rows: the share of the msgspec path that is
decoding). Real records (repeated to ``--sat-size`` lines) and a generated scan of
``--sat-size`` lines.

Each figure is the best of ``--repeats``, in CPU seconds of this process
(``time.process_time``): the paths are single-threaded, and on a machine shared with other
work the wall clock measures the others' load more than the code. The script exits 1 when
any output differs, or, with ``--check``, when the msgspec path is below the threshold on
some line; else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import msgspec  # noqa: E402
import orjson  # noqa: E402
from bench_parse import (  # noqa: E402
    REAL,
    REAL_RESOURCES,
    REAL_SCANS,
    SCAN_TYPES,
    VERSIONS,
    batches_of,
    clear_caches,
    pin_to_one_cpu,
    read_real_lines,
)
from msgspec_hyperquack import MsgspecHyperquack, output_difference  # noqa: E402
from msgspec_satellite import MsgspecSatellite  # noqa: E402
from msgspec_structs import SatRecord  # noqa: E402

from sampledata import (  # noqa: E402
    DEFAULT_SCANS,
    SATELLITE,
    SATELLITE_SCANS,
    build_satellite_files,
    go_json_line,
    iter_hyperquack_records,
    source_name,
)
from services.beam_launcher.enrichment.resources import (  # noqa: E402
    SAMPLE_RESOURCES,
    Resources,
    load_resources,
)
from services.beam_launcher.hyperquack.processing import (  # noqa: E402
    ColumnOutput,
    FileTask,
    HyperquackProcessor,
)
from services.beam_launcher.satellite import batch as satellite_batch  # noqa: E402
from services.common.rowschema import Row  # noqa: E402

PATHS = ("C", "python", "msgspec")
Batches = list[tuple[int, list[bytes]]]


class Paths:
    """The three implementations over one set of resources, and how to empty their memos."""

    def __init__(self, resources: Resources) -> None:
        self.c = HyperquackProcessor(resources)
        if not self.c.native:
            raise SystemExit(
                "the C parser is not in use (not built, or CP_NATIVE_PARSER=0): run `make env`"
            )
        self.python = HyperquackProcessor(resources, use_native=False)
        self.msgspec = MsgspecHyperquack(HyperquackProcessor(resources, use_native=False))

    def entry(self, path: str) -> Callable[[FileTask, int, list[bytes]], ColumnOutput]:
        return {
            "C": self.c.process_columns,
            "python": self.python.process_columns,
            "msgspec": self.msgspec.process_columns,
        }[path]

    def clear(self) -> None:
        """Empty every memo and cache of every path (they share the certificate caches)."""
        for proc in (self.c, self.python, self.msgspec.proc):
            clear_caches(proc)
        self.msgspec.clear_caches()


@dataclass
class Result:
    dataset: str
    label: str
    lines: int
    rows: int
    seconds: dict[str, float]  # path -> best seconds
    slow_lines: int  # msgspec lines handed to the reference, per repeat

    def lines_per_s(self, path: str) -> float:
        return self.lines / self.seconds[path]


def run(entry: Callable[[FileTask, int, list[bytes]], ColumnOutput], task: FileTask, b: Batches):
    """Process every batch; returns (lines, rows)."""
    lines = rows = 0
    for first, batch in b:
        out = entry(task, first, batch)
        lines += out.stats["lines"]
        rows += out.n_rows
    return lines, rows


def check_equal(paths: Paths, task: FileTask, batches: Batches) -> list[str]:
    """Every batch through all three paths: the differences from the C path's output."""
    problems: list[str] = []
    for first, batch in batches:
        want = paths.c.process_columns(task, first, batch)
        for path in ("python", "msgspec"):
            diff = output_difference(want, paths.entry(path)(task, first, batch))
            if diff is not None:
                problems.append(f"{path} != C at batch from line {first}: {diff}")
    return problems


def timed(
    paths: Paths,
    task: FileTask,
    batches: Batches,
    repeats: int,
    cold: bool,
) -> tuple[dict[str, float], int, int, int]:
    """Best seconds per path (paths alternate within each repeat); lines, rows, slow lines."""
    best = dict.fromkeys(PATHS, float("inf"))
    counts: dict[str, tuple[int, int]] = {}
    slow = 0
    for _ in range(repeats):
        for path in PATHS:
            if cold:
                paths.clear()
            before = paths.msgspec.slow_lines
            start = time.process_time()
            counts[path] = run(paths.entry(path), task, batches)
            best[path] = min(best[path], time.process_time() - start)
            if path == "msgspec":
                slow = paths.msgspec.slow_lines - before
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the paths counted different lines/rows: {counts}")
    lines, rows = counts["C"]
    return best, lines, rows, slow


def measure(
    paths: Paths,
    dataset: str,
    label: str,
    task: FileTask,
    batches: Batches,
    args: argparse.Namespace,
    cold: bool,
) -> Result | list[str]:
    problems = check_equal(paths, task, batches)  # also the warm-up
    if problems:
        return problems
    seconds, lines, rows, slow = timed(paths, task, batches, args.repeats, cold)
    return Result(dataset, label, lines, rows, seconds, slow)


def real_batches(scan_type: str, version: str, paths: Paths, args: argparse.Namespace) -> Batches:
    """The real records repeated into batches: enough for ``--min-seconds`` of C work."""
    records = read_real_lines(scan_type, version) or []
    batch = [records[i % len(records)] for i in range(args.batch)]
    task = real_task(scan_type, version)
    start = time.process_time()
    paths.c.process_columns(task, 1, batch)
    per_batch = max(time.process_time() - start, 1e-6)
    n = max(1, int(args.min_seconds / per_batch) + 1)
    return [(1 + i * args.batch, batch) for i in range(n)]


def real_task(scan_type: str, version: str) -> FileTask:
    return replace(FileTask.for_test(REAL_SCANS[(scan_type, version)]), pipeline_version="bench")


def generated(scan_type: str, version: str, args: argparse.Namespace) -> tuple[FileTask, Batches]:
    spec = next(s for s in DEFAULT_SCANS if s.scan_type == scan_type and f"v{s.version}" == version)
    records = iter_hyperquack_records(scan_type, spec.version, args.size, args.seed, spec.start)
    lines = [go_json_line(r) for r in records]
    task = replace(FileTask.for_test(source_name(scan_type, spec.start)), pipeline_version="bench")
    return task, batches_of(lines, args.batch)


def scan_file(path: Path, args: argparse.Namespace) -> tuple[FileTask, Batches]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    name = path.name.removesuffix(".gz")
    task = replace(FileTask.for_test(path.parent.name, name), pipeline_version="bench")
    return task, batches_of(lines, args.batch)


def print_result(r: Result, threshold: float) -> bool:
    """One line per path; returns whether msgspec reached the threshold."""
    c = r.lines_per_s("C")
    ratio = r.lines_per_s("msgspec") / c
    ok = ratio >= threshold
    for path in PATHS:
        lps = r.lines_per_s(path)
        tail = ""
        if path == "msgspec":
            tail = f"  {'PASS' if ok else 'FAIL'} vs {threshold:.0%}"
            tail += f" (slow lines {r.slow_lines:,} of {r.lines:,})"
        print(
            f"{r.dataset:<9} {r.label:<14} {path:<8} {lps:>10,.0f} lines/s "
            f"{r.rows / r.seconds[path]:>10,.0f} rows/s  {lps / c:6.1%} of C{tail}",
            flush=True,
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="generated measurements/scan")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--batch", type=int, default=500, help="lines per process_columns call")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="C work per real repeat")
    parser.add_argument("--threshold", type=float, default=0.70, help="msgspec/C to PASS")
    parser.add_argument("--only", default="", help="e.g. 'http' or 'https:v2' (comma list)")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--scan-file", type=Path, action="append", default=[], help="also time")
    parser.add_argument("--sat-size", type=int, default=20_000, help="Satellite lines per set")
    parser.add_argument("--skip-satellite", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 on a FAIL")
    args = parser.parse_args()

    wanted = [(t, v) for t in SCAN_TYPES for v in VERSIONS]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        wanted = [(t, v) for t, v in wanted if any(k in (t, f"{t}:{v}") for k in keys)]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()} on {platform.machine()}; {pin_to_one_cpu()}; "
        f"load average {load} (other processes on the machine skew all paths alike)"
    )
    print(
        f"process_columns, batches of {args.batch}; best of {args.repeats} (CPU time); paths "
        f"alternate in each repeat; PASS = msgspec >= {args.threshold:.0%} of C's lines/s"
    )
    real_res = load_resources(str(REAL_RESOURCES)) if REAL_RESOURCES.is_dir() else None
    gen_res = real_res or load_resources(str(SAMPLE_RESOURCES))
    results: list[Result] = []
    failed: list[str] = []
    differ: list[str] = []

    def record(result: Result | list[str], what: str) -> None:
        if isinstance(result, list):
            differ.append(what)
            print(f"{what}: OUTPUTS DIFFER, not timed:", *result[:5], sep="\n  ", flush=True)
        else:
            results.append(result)
            if not print_result(result, args.threshold):
                failed.append(what)

    if not args.skip_real:
        if real_res is None:
            print(f"real: skipped, real fixtures not found at {REAL}")
        else:
            paths = Paths(real_res)
            for t, v in wanted:
                if not read_real_lines(t, v):
                    print(f"real {t} {v}: skipped, no records in {REAL / f'{t}_{v}'}")
                    continue
                b = real_batches(t, v, paths, args)
                record(measure(paths, "real", f"{t} {v}", real_task(t, v), b, args, False), t + v)
    paths = Paths(gen_res)
    if not args.skip_generated:
        for t, v in wanted:
            task, b = generated(t, v, args)
            record(measure(paths, "generated", f"{t} {v}", task, b, args, True), t + v)
    for path in args.scan_file:
        task, b = scan_file(path, args)
        label = f"{task.scan_type} {task.scan_date}"
        record(measure(paths, "file", label, task, b, args, True), str(path))

    summarize(results, args.threshold)
    if not args.skip_satellite:
        sat_failed, sat_differ = satellite(args)
        failed += sat_failed
        differ += sat_differ
    return 1 if differ or (args.check and failed) else 0


REAL_SAT_SCAN = "CP_Satellite-2021-10-20-14-00-01"  # as tests/conftest.py files it


def satellite_difference(task: FileTask, batches: Batches, alt: MsgspecSatellite) -> str | None:
    """The first difference of the msgspec Satellite rows from the C path's, or None."""
    for first, batch in batches:
        want_stats: dict[str, int] = {}
        got_stats: dict[str, int] = {}
        want_dead: list[Row] = []
        got_dead: list[Row] = []
        want = satellite_batch.parse_observation_batch(task, first, batch, want_stats, want_dead)
        got = alt.parse_observation_batch(task, first, batch, got_stats, got_dead)
        if orjson.dumps(want) != orjson.dumps(got) or want != got:
            return f"rows of the batch from line {first}"
        if (want_stats, orjson.dumps(want_dead)) != (got_stats, orjson.dumps(got_dead)):
            return f"stats or dead letters of the batch from line {first}"
    return None


def satellite(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The Satellite v2.2 lines; returns (labels below the threshold, labels that differ)."""
    if satellite_batch.native_module() is None:
        print("satellite: skipped, the C module _satfast is not built or is disabled")
        return [], []
    sets: list[tuple[str, FileTask, list[bytes]]] = []
    real = REAL / "satellite_v2.2" / "results.json"
    if real.is_file():
        records = [x for x in real.read_bytes().splitlines() if x.strip()]
        task = replace(FileTask.for_test(REAL_SAT_SCAN), pipeline_version="bench")
        sets.append(("real", task, [records[i % len(records)] for i in range(args.sat_size)]))
    else:
        print(f"satellite real: skipped, {real} not found")
    spec = SATELLITE_SCANS[0]
    members, _, _ = build_satellite_files(args.sat_size, args.seed, spec.start)
    lines = [x for x in members["results.json"].split(b"\n") if x.strip()]
    task = replace(FileTask.for_test(source_name(SATELLITE, spec.start)), pipeline_version="bench")
    sets.append(("generated", task, lines))
    decoder = msgspec.json.Decoder(SatRecord)
    alt = MsgspecSatellite()
    failed: list[str] = []
    differ: list[str] = []
    for dataset, task, lines in sets:
        batches = batches_of(lines, args.batch)
        label = f"satellite {dataset}"
        diff = satellite_difference(task, batches, alt)
        if diff is not None:
            differ.append(label)
            print(f"{label}: OUTPUTS DIFFER, not timed: msgspec != C: {diff}", flush=True)
            continue

        def c_path(b: Batches = batches, task: FileTask = task) -> None:
            for first, batch in b:
                satellite_batch.parse_observation_batch(task, first, batch, {}, [])

        def python_path(b: Batches = batches, task: FileTask = task) -> None:
            for first, batch in b:
                satellite_batch.parse_observation_batch(task, first, batch, {}, [], native=None)

        def msgspec_path(b: Batches = batches, task: FileTask = task) -> None:
            for first, batch in b:
                alt.parse_observation_batch(task, first, batch, {}, [])

        def decode_only(b: Batches = batches) -> None:
            decode = decoder.decode
            for _, batch in b:
                for line in batch:
                    with contextlib.suppress(msgspec.MsgspecError):
                        decode(line)

        runs = {
            "C": c_path,
            "python": python_path,
            "msgspec": msgspec_path,
            "msgspec decode only": decode_only,
        }
        best = dict.fromkeys(runs, float("inf"))
        slow_before = alt.slow_lines
        for _ in range(args.repeats):
            for name, work in runs.items():
                start = time.process_time()
                work()
                best[name] = min(best[name], time.process_time() - start)
        slow = (alt.slow_lines - slow_before) // args.repeats
        c = len(lines) / best["C"]
        for name in runs:
            lps = len(lines) / best[name]
            tail = ""
            if name == "msgspec":
                ok = lps / c >= args.threshold
                tail = f"  {'PASS' if ok else 'FAIL'} vs {args.threshold:.0%}"
                tail += f" (slow lines {slow:,} of {len(lines):,})"
                if not ok:
                    failed.append(label)
            elif name == "msgspec decode only":
                tail = "  (decoding into the Structs alone, no rows)"
            print(
                f"{label:<19} results.json {name:<20} {lps:>10,.0f} lines/s "
                f"{lps / c:6.1%} of C{tail}",
                flush=True,
            )
    return failed, differ


def summarize(results: list[Result], threshold: float) -> None:
    """Totals over all lines of each data set (time-weighted) and the verdict."""
    for dataset in dict.fromkeys(r.dataset for r in results):
        rs = [r for r in results if r.dataset == dataset]
        lines = sum(r.lines for r in rs)
        per: dict[str, Any] = {p: lines / sum(r.seconds[p] for r in rs) for p in PATHS}
        ratio = per["msgspec"] / per["C"]
        print(
            f"summary {dataset:<9} all {len(rs)} inputs: C {per['C']:,.0f}, python "
            f"{per['python']:,.0f} ({per['python'] / per['C']:.1%}), msgspec "
            f"{per['msgspec']:,.0f} ({ratio:.1%}) lines/s -> "
            f"{'PASS' if ratio >= threshold else 'FAIL'} vs {threshold:.0%}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
