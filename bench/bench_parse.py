"""Benchmark the parse → classify path (``HyperquackProcessor.process_lines``) on one core.

Usage: ``uv run python bench/bench_parse.py [--size 20000] [--check] [--cold-caches]
[--api rows|columns|both]``

No Beam: batches of ``--batch`` lines (500, as in the pipeline) go straight through
``process_lines`` in this process, pinned to one CPU when the OS allows it. The path is the
pipeline's: the C extension when it is built (``make env``) and ``$CP_NATIVE_PARSER`` is
not ``0``, else pure Python; the first lines printed say which. Two data sets:

* ``real``: the few real Hyperquack records of ``../shared/fixtures/real/<type>_<v>/``
  (relative to the repository root), repeated until one repeat is at least
  ``--min-seconds`` of work, with the real resources (622 blockpage + 460 false-positive
  signatures, 6,870 domain category rows). These are the records comparable to the seed's
  per-core figures. Repeating a few records means every certificate and domain after the
  first pass is a cache hit (certificate LRU, category, page-signature and outcome
  memos): realistic for certificates, signatures and outcomes (the rows of a scan share
  few of them), optimistic for categories (a scan has thousands of domains).
* ``generated``: ``--size`` measurements per type/version from
  ``sampledata``, serialised like the real files, with the real
  resources when present, else ``resources/sample``. Every cache and memo is emptied
  before every repeat, so each repeat is one cold pass over one scan file (many distinct
  domains and pages: each distinct page costs one signature pass).

``--api columns`` times ``process_columns`` instead (rows as column lists, written by the
C code without row dicts: what the local pipeline uses); ``--api both`` prints both, and
for ``rows`` also what transposing the rows to columns (``rows_to_columns``) adds.

Each figure is the best of ``--repeats`` timed repeats after one warm-up
(``time.perf_counter``). The ratio is against the seed system's per-core lines/s; the
target is ``--target`` (20×). The script always exits 0 unless ``--check`` is given, in
which case it exits 1 when a ``real`` line with a seed figure is below the target.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"
REAL_RESOURCES = REAL / "resources"
sys.path.insert(0, str(REPO))

from sampledata import (  # noqa: E402
    DEFAULT_SCANS,
    go_json_line,
    iter_hyperquack_records,
    source_name,
)
from services.beam_launcher.enrichment.resources import (  # noqa: E402
    SAMPLE_RESOURCES,
    load_resources,
)
from services.beam_launcher.hyperquack import (  # noqa: E402
    certs,
    processing,
)
from services.beam_launcher.hyperquack.processing import (  # noqa: E402
    BatchOutput,
    ColumnOutput,
    FileTask,
    HyperquackProcessor,
)

SCAN_TYPES = ("echo", "discard", "http", "https")
VERSIONS = ("v1", "v2")

#: The seed system's parse+classify throughput, lines/s on one core.
SEED_LINES_PER_S: dict[tuple[str, str], float | None] = {
    ("echo", "v1"): 5_189,
    ("echo", "v2"): 2_505,
    ("discard", "v1"): 6_889,
    ("discard", "v2"): 2_460,
    ("http", "v1"): 925,
    ("http", "v2"): 1_220,
    ("https", "v1"): 1_152,
    ("https", "v2"): None,
}

#: Scan names the real fixture files are filed under (as in tests/conftest.py).
REAL_SCANS = {
    ("echo", "v1"): "CP_Quack-echo-2020-11-14-07-54-49",
    ("discard", "v1"): "CP_Quack-discard-2020-11-22-02-01-16",
    ("http", "v1"): "CP_Quack-http-2020-11-09-01-02-08",
    ("https", "v1"): "CP_Quack-https-2020-11-06-15-58-07",
    ("echo", "v2"): "CP_Quack-echo-2021-05-30-01-01-01",
    ("discard", "v2"): "CP_Quack-discard-2021-05-31-01-01-01",
    ("http", "v2"): "CP_Quack-http-2021-05-30-01-01-01",
    ("https", "v2"): "CP_Quack-https-2021-04-26-04-21-46",
}


@dataclass
class Figure:
    dataset: str
    scan_type: str
    version: str
    lines: int  # per timed repeat
    rows: int  # per timed repeat
    dead_letters: int
    seconds: float  # best repeat
    note: str = ""
    api: str = "rows"  # process_lines ("rows") or process_columns ("columns")

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def seed(self) -> float | None:
        return SEED_LINES_PER_S.get((self.scan_type, self.version))


def pin_to_one_cpu() -> str:
    """Keep the process on one CPU (no migrations); returns a description."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return f"pinned to CPU {cpus[-1]} of {len(cpus)} available"


def clear_caches(proc: HyperquackProcessor) -> None:
    """Empty the certificate LRUs, the domain category cache and the processor's memos."""
    certs.clear_cache()
    cache = getattr(proc.resources.categories, "_cache", None)  # private; bench only
    if isinstance(cache, dict):
        cache.clear()
    proc.clear_caches()


def batches_of(lines: list[bytes], size: int) -> list[tuple[int, list[bytes]]]:
    """``(first 1-based line number, lines)`` batches of consecutive lines."""
    return [(i + 1, lines[i : i + size]) for i in range(0, len(lines), size)]


#: The API timed: ``process_lines`` or ``process_columns`` (set from ``--api``).
API: dict[
    str, Callable[[HyperquackProcessor, FileTask, int, list[bytes]], BatchOutput | ColumnOutput]
] = {"rows": HyperquackProcessor.process_lines, "columns": HyperquackProcessor.process_columns}


def run_batches(
    proc: HyperquackProcessor,
    task: FileTask,
    batches: list[tuple[int, list[bytes]]],
    api: str = "rows",
) -> tuple[int, int, int]:
    lines = rows = dead = 0
    process = API[api]
    for first, batch in batches:
        stats = process(proc, task, first, batch).stats
        lines += stats["lines"]
        rows += stats["rows"]
        dead += stats["dead_letters"]
    return lines, rows, dead


def best_of(
    repeats: int, before: Callable[[], None], work: Callable[[], tuple[int, int, int]]
) -> tuple[float, tuple[int, int, int]]:
    best = float("inf")
    counts = (0, 0, 0)
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        counts = work()
        best = min(best, time.perf_counter() - start)
    return best, counts


def read_real_lines(scan_type: str, version: str) -> list[bytes] | None:
    folder = REAL / f"{scan_type}_{version}"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    lines: list[bytes] = []
    for path in files:
        lines.extend(line for line in path.read_bytes().splitlines() if line.strip())
    return lines


def transpose_seconds(
    proc: HyperquackProcessor, task: FileTask, batches: list[tuple[int, list[bytes]]]
) -> float:
    """Time of ``rows_to_columns`` over the rows of ``batches`` (what columns save)."""
    total = 0.0
    for first, batch in batches:
        rows = proc.process_lines(task, first, batch).rows
        start = time.perf_counter()
        processing.rows_to_columns(rows, processing.HYPERQUACK_SCAN.column_names)
        total += time.perf_counter() - start
    return total


def bench_real(
    proc: HyperquackProcessor,
    scan_type: str,
    version: str,
    args: argparse.Namespace,
    api: str = "rows",
) -> Figure | str:
    records = read_real_lines(scan_type, version)
    if not records:
        return f"no real records in {REAL / f'{scan_type}_{version}'}"
    batch = [records[i % len(records)] for i in range(args.batch)]
    task = replace(FileTask.for_test(REAL_SCANS[(scan_type, version)]), pipeline_version="bench")

    def one_batch_pass(n_batches: int) -> tuple[int, int, int]:
        # Distinct line numbers per batch, as in a long file (distinct measurement ids).
        return run_batches(proc, task, [(1 + i * args.batch, batch) for i in range(n_batches)], api)

    one_batch_pass(1)  # warm-up: caches, RE2 DFA states
    start = time.perf_counter()
    one_batch_pass(1)
    per_batch = time.perf_counter() - start
    n_batches = max(1, int(args.min_seconds / per_batch) + 1)
    seconds, (lines, rows, dead) = best_of(
        args.repeats, lambda: None, lambda: one_batch_pass(n_batches)
    )
    note = f"{len(records)} records x{lines // len(records):,}"
    if api == "rows" and args.api == "both":
        tr = transpose_seconds(proc, task, [(1 + i * args.batch, batch) for i in range(n_batches)])
        note += f"; + rows_to_columns {tr:.2f} s = {lines / (seconds + tr):,.0f} lines/s"
    if args.cold_caches:
        cold, _ = best_of(
            args.repeats,
            lambda: None,
            lambda: _cold_pass(proc, task, batch, n_batches, args.batch, api),
        )
        note += f"; cold caches {lines / cold:,.0f} lines/s"
    return Figure("real", scan_type, version, lines, rows, dead, seconds, note, api)


def _cold_pass(
    proc: HyperquackProcessor,
    task: FileTask,
    batch: list[bytes],
    n_batches: int,
    size: int,
    api: str,
) -> tuple[int, int, int]:
    """Like the timed pass, but with empty caches before every batch (includes clearing)."""
    totals = [0, 0, 0]
    for i in range(n_batches):
        clear_caches(proc)
        stats = API[api](proc, task, 1 + i * size, batch).stats
        totals[0] += stats["lines"]
        totals[1] += stats["rows"]
        totals[2] += stats["dead_letters"]
    return totals[0], totals[1], totals[2]


def bench_generated(
    proc: HyperquackProcessor,
    scan_type: str,
    version: str,
    args: argparse.Namespace,
    api: str = "rows",
) -> Figure:
    spec = next(s for s in DEFAULT_SCANS if s.scan_type == scan_type and f"v{s.version}" == version)
    t0 = time.perf_counter()
    lines = [
        go_json_line(r)
        for r in iter_hyperquack_records(scan_type, spec.version, args.size, args.seed, spec.start)
    ]
    gen_seconds = time.perf_counter() - t0
    task = replace(FileTask.for_test(source_name(scan_type, spec.start)), pipeline_version="bench")
    batches = batches_of(lines, args.batch)
    run_batches(proc, task, batches[:1], api)  # warm-up: imports, RE2 DFA states
    seconds, (n_lines, rows, dead) = best_of(
        args.repeats,
        lambda: clear_caches(proc),
        lambda: run_batches(proc, task, batches, api),
    )
    mb = sum(len(line) + 1 for line in lines) / 1e6
    note = f"{mb:.0f} MB, {mb / seconds:.1f} MB/s; generated in {gen_seconds:.1f} s"
    if api == "rows" and args.api == "both":
        tr = transpose_seconds(proc, task, batches)
        note += f"; + rows_to_columns {tr:.2f} s = {n_lines / (seconds + tr):,.0f} lines/s"
    return Figure("generated", scan_type, version, n_lines, rows, dead, seconds, note, api)


def verdict(fig: Figure, target: float) -> tuple[str, str]:
    if fig.seed is None:
        return "n/a", "n/a"
    ratio = fig.lines_per_s / fig.seed
    return f"{ratio:5.1f}x", "PASS" if ratio >= target else "BELOW"


def print_figure(fig: Figure, target: float) -> None:
    ratio, status = verdict(fig, target)
    seed = f"{fig.seed:,.0f}" if fig.seed else "n/a"
    dead = f" DEAD LETTERS {fig.dead_letters:,}" if fig.dead_letters else ""
    print(
        f"{fig.dataset:<9} {fig.scan_type:<7} {fig.version} {fig.api:<7}  "
        f"{fig.lines_per_s:>9,.0f} lines/s  {fig.rows_per_s:>9,.0f} rows/s  "
        f"{1e6 / fig.lines_per_s:>7.1f} us/line  {fig.rows / fig.lines:4.2f} rows/line  "
        f"seed {seed:>5}  {ratio:>6}  {status:<5}  ({fig.note}){dead}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="generated measurements/scan")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--batch", type=int, default=500, help="lines per process_lines call")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="work per real repeat")
    parser.add_argument("--target", type=float, default=20.0, help="target ratio to the seed")
    parser.add_argument("--only", default="", help="e.g. 'http' or 'https:v2' (comma list)")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument(
        "--cold-caches",
        action="store_true",
        help="also time the real records with the caches emptied before every batch",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a real line is BELOW")
    parser.add_argument(
        "--api",
        choices=("rows", "columns", "both"),
        default="rows",
        help="time process_lines (rows), process_columns (columns) or both",
    )
    args = parser.parse_args()

    wanted = [(t, v) for t in SCAN_TYPES for v in VERSIONS]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        wanted = [(t, v) for t, v in wanted if any(k in (t, f"{t}:{v}") for k in keys)]

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()} on {platform.machine()}; {pin_to_one_cpu()}; "
        f"load average {load} (other processes on the machine skew the figures)"
    )
    real_res = load_resources(str(REAL_RESOURCES)) if REAL_RESOURCES.is_dir() else None
    gen_res = real_res or load_resources(str(SAMPLE_RESOURCES))
    for label, res in (("real", real_res), ("generated", gen_res)):
        if res is not None:
            print(
                f"{label} data set resources: {res.location} ({res.n_blockpage} blockpage + "
                f"{res.n_false_positive} false-positive signatures, "
                f"{len(res.categories):,} domain categories)"
            )
    path = "native (C extension services/beam_launcher/native/_hqfast.c)"
    if not HyperquackProcessor(gen_res).native:
        path = "python (native module not built, or $CP_NATIVE_PARSER=0)"
    print(f"parse path: {path}; timed: {args.api}")
    print(
        f"batch {args.batch} lines; best of {args.repeats} after one warm-up; "
        f"target {args.target:g}x the seed's per-core lines/s"
    )

    figures: list[Figure] = []
    apis = ("rows", "columns") if args.api == "both" else (args.api,)
    if not args.skip_real:
        if real_res is None:
            print(f"real: skipped, real fixtures not found at {REAL}")
        else:
            proc = HyperquackProcessor(real_res)
            for scan_type, version in wanted:
                for api in apis:
                    fig = bench_real(proc, scan_type, version, args, api)
                    if isinstance(fig, str):
                        print(f"real      {scan_type:<7} {version}  skipped: {fig}")
                        break
                    figures.append(fig)
                    print_figure(fig, args.target)
            info = processing._leaf_cert_columns.cache_info()  # private; bench only
            print(
                f"real: certificate cache after the real runs: {info.currsize} distinct "
                f"certificates, {info.hits:,} hits / {info.misses:,} misses "
                "(repeated records hit the cache)"
            )
    if not args.skip_generated:
        proc = HyperquackProcessor(gen_res)
        for scan_type, version in wanted:
            for api in apis:
                fig = bench_generated(proc, scan_type, version, args, api)
                figures.append(fig)
                print_figure(fig, args.target)

    below = [f for f in figures if f.dataset == "real" and verdict(f, args.target)[1] == "BELOW"]
    comparable = [f for f in figures if f.dataset == "real" and f.seed is not None]
    print(
        f"summary: {len(comparable) - len(below)}/{len(comparable)} comparable (real) lines "
        f"at >= {args.target:g}x the seed"
    )
    if args.check and below:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
