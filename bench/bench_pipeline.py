"""Benchmark the local pipeline end to end (``services.beam_launcher.run.run``).

Usage: ``uv run python bench/bench_pipeline.py [--size 25000] [--no-per-type] [--keep DIR]``

1. Generates the eight default sample scans (echo, discard, http, https; v1 and v2) with
   ``write_scan_archives(..., size=N)`` into a temporary folder. Generation is timed but
   excluded from every throughput figure.
2. Runs the whole launcher once over all four scan types (FnApiRunner, the default
   ``--runner direct``) into a fresh local warehouse. Overall lines/s and rows/s come
   from this run; its ``processed_files`` table gives lines and rows per scan type.
3. Unless ``--no-per-type``: one run per scan type (``scan_types=(t,)``) into its own
   warehouse, for the wall time, and so the throughput, of each type alone. These runs
   repeat the fixed costs (Beam start-up, DuckDB commit), as a real one-type run would.

Every generation and run happens in a fresh child process (spawn), so each peak RSS
(``resource.getrusage``) belongs to that step alone. A run's time is split by wrapping,
inside the child only, the functions ``run`` calls: setup (resources, tables, discovery,
ledger) up to ``build_graph``; Beam (graph construction and execution, Parquet staging
included, Beam counters read back) up to ``_read_stats``; reading stats + judging;
``LocalTarget.commit`` (publishing Parquet, DuckDB transaction); ``LocalTarget.cleanup``.
Logs of the runs are hidden (``LOG_LEVEL=WARNING``) unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_RESOURCES = REPO.parent / "shared" / "fixtures" / "real" / "resources"
sys.path.insert(0, str(REPO))

SCAN_TYPES = ("echo", "discard", "http", "https")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_child(func: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``func(*args)`` in a fresh spawned process and return its result."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


# --- child: generation ----------------------------------------------------------------------


def generate_child(out_dir: str, size: int, seed: int, bad_line_ratio: float) -> dict[str, Any]:
    from sampledata import write_scan_archives

    start = time.perf_counter()
    summary = write_scan_archives(
        Path(out_dir), size=size, seed=seed, bad_line_ratio=bad_line_ratio
    )
    seconds = time.perf_counter() - start
    scans = Path(out_dir) / "scans"
    gz = sorted(scans.glob("*/results.json.gz"))
    # gzip ISIZE trailer: uncompressed size mod 2**32 (the files are far smaller).
    raw = sum(int.from_bytes(p.read_bytes()[-4:], "little") for p in gz)
    return {
        "seconds": seconds,
        "records": summary.records,
        "bad_lines": summary.bad_lines,
        "scans": len(summary.scans),
        "gz_bytes": sum(p.stat().st_size for p in gz),
        "raw_bytes": raw,
        "peak_rss_mb": _peak_rss_mb(),
    }


# --- child: one launcher run ----------------------------------------------------------------


def run_child(
    input_dir: str,
    warehouse: str,
    scan_types: tuple[str, ...],
    resources: str,
    runner: str,
    batch_lines: int,
    verbose: bool,
) -> dict[str, Any]:
    if not verbose:
        os.environ["LOG_LEVEL"] = "WARNING"
    import duckdb

    from services.beam_launcher import run as run_mod
    from services.beam_launcher.hyperquack import pipeline as graph
    from services.beam_launcher.warehouse.local import LocalTarget

    spans: dict[str, list[tuple[float, float]]] = {}
    peaks: dict[str, float] = {}  # ru_maxrss when each wrapped call starts and ends

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            peaks.setdefault(f"{label}_start", _peak_rss_mb())
            begin = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spans.setdefault(label, []).append((begin, time.perf_counter()))
                peaks[f"{label}_end"] = _peak_rss_mb()

        setattr(owner, name, wrapper)

    dofn_seconds: dict[str, float] = {}

    def timed_dofn(cls: Any, label: str) -> None:
        """Count the time spent inside ``cls.process`` itself, not in what it feeds.

        Fused downstream steps run while the generator is suspended at ``yield``, so only
        the time inside ``next()`` is the DoFn's own.
        """
        original = cls.process

        @functools.wraps(original)
        def process(self: Any, element: Any) -> Any:
            it = iter(original(self, element) or ())
            own = 0.0
            try:
                while True:
                    begin = time.perf_counter()
                    try:
                        value = next(it)
                    except StopIteration:
                        return
                    finally:
                        own += time.perf_counter() - begin
                    yield value
            finally:
                dofn_seconds[label] = dofn_seconds.get(label, 0.0) + own

        cls.process = process

    timed_dofn(graph.ReadLineBatches, "read")
    timed_dofn(graph.ProcessBatches, "parse")
    for name in ("WriteParquetGroup", "WriteParquetParts", "MergeParquetParts"):
        if hasattr(graph, name):  # whichever the local sink uses
            timed_dofn(getattr(graph, name), "parquet")
    timed_dofn(graph.WriteStats, "stats")
    timed(graph, "build_graph", "build_graph")
    timed(run_mod, "_read_stats", "read_stats")
    timed(LocalTarget, "commit", "commit")
    timed(LocalTarget, "cleanup", "cleanup")

    cfg = run_mod.RunConfig(
        input=input_dir,
        warehouse=warehouse,
        scan_types=scan_types,
        resources=resources,
        runner=runner,
        batch_lines=batch_lines,
    )
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    summary = run_mod.run(cfg)
    end = time.perf_counter()
    cpu = _cpu_seconds() - cpu0

    def first(label: str) -> tuple[float, float]:
        return spans[label][0]

    beam_start = first("build_graph")[0]
    stats_start = first("read_stats")[0]
    commit_start, commit_end = first("commit")
    phases = {
        "setup": beam_start - start,
        "beam": stats_start - beam_start,
        "stats+judge": commit_start - stats_start,
        "commit": commit_end - commit_start,
        "cleanup": sum(e - b for b, e in spans.get("cleanup", [])),
    }
    phases["other"] = (end - start) - sum(phases.values())

    with duckdb.connect(str(Path(warehouse) / "warehouse.duckdb"), read_only=True) as con:
        per_type = {
            t: {"files": f, "lines": int(lines), "rows": int(rows), "dead_letters": int(dead)}
            for t, f, lines, rows, dead in con.execute(
                "SELECT scan_type, count(*), sum(lines), sum(rows_written), sum(dead_letters) "
                "FROM processed_files GROUP BY scan_type ORDER BY scan_type"
            ).fetchall()
        }
    return {
        "wall": end - start,
        "cpu": cpu,
        "summary_seconds": summary.seconds,
        "lines": summary.stats.get("lines", 0),
        "rows": summary.stats.get("rows", 0),
        "dead_letters": summary.stats.get("dead_letters", 0),
        "files": summary.files_processed,
        "rejected": summary.rejected,
        "rows_by_table": summary.rows_by_table,
        "phases": phases,
        "dofn": dofn_seconds,
        "per_type": per_type,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_beam_mb": peaks["read_stats_start"],
        "peak_rss_commit_mb": peaks["commit_end"],
    }


# --- report ---------------------------------------------------------------------------------


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>9,.0f}" if seconds > 0 else "      n/a"


def print_run(label: str, res: dict[str, Any]) -> None:
    wall = res["wall"]
    print(
        f"{label:<10} lines {res['lines']:>9,}  rows {res['rows']:>9,}  wall {wall:7.1f} s  "
        f"{_rate(res['lines'], wall)} lines/s  {_rate(res['rows'], wall)} rows/s  "
        f"cpu {res['cpu']:6.1f} s ({res['cpu'] / wall:.2f} cores)  "
        f"peak RSS {res['peak_rss_mb']:,.0f} MB",
        flush=True,
    )
    grew = res["peak_rss_commit_mb"] > res["peak_rss_beam_mb"]
    print(
        f"{'':<10} peak RSS by the end of Beam {res['peak_rss_beam_mb']:,.0f} MB"
        + (f", raised by the commit to {res['peak_rss_commit_mb']:,.0f} MB" if grew else ""),
        flush=True,
    )
    p = res["phases"]
    beam = p["beam"]
    print(
        f"{'':<10} phases: setup {p['setup']:.2f} s | beam {beam:.1f} s "
        f"({_rate(res['lines'], beam).strip()} lines/s, {_rate(res['rows'], beam).strip()} "
        f"rows/s) | stats+judge {p['stats+judge']:.2f} s | commit {p['commit']:.2f} s | "
        f"cleanup {p['cleanup']:.2f} s | other {p['other']:.2f} s",
        flush=True,
    )
    d = res["dofn"]
    runner = beam - sum(d.values())
    print(
        f"{'':<10} inside beam: read+gunzip {d.get('read', 0):.1f} s | parse "
        f"{d.get('parse', 0):.1f} s ({_rate(res['lines'], d.get('parse', 0)).strip()} lines/s) | "
        f"to_arrow+parquet {d.get('parquet', 0):.1f} s | stats {d.get('stats', 0):.2f} s | "
        f"runner (coders, reshuffle, GBK, start-up) {runner:.1f} s = {runner / beam:.0%}",
        flush=True,
    )
    if res["dead_letters"] or res["rejected"]:
        print(f"{'':<10} dead letters {res['dead_letters']:,}; rejected files {res['rejected']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=25_000, help="measurements per scan")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--bad-line-ratio", type=float, default=0.0)
    parser.add_argument(
        "--resources",
        default=str(REAL_RESOURCES) if REAL_RESOURCES.is_dir() else "",
        help="resources location (default: real fixtures if present, else resources/sample)",
    )
    parser.add_argument("--runner", default="direct", help="Beam runner (FnApiRunner)")
    parser.add_argument("--batch-lines", type=int, default=500)
    parser.add_argument("--no-per-type", action="store_true", help="skip the per-type runs")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--verbose", action="store_true", help="show the runs' logs")
    args = parser.parse_args()

    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES

    resources = args.resources or str(SAMPLE_RESOURCES)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{os.cpu_count()} CPUs, load average {load}; runner {args.runner}; batch "
        f"{args.batch_lines} lines; resources {resources}; work dir {work}",
        flush=True,
    )
    try:
        gen = in_child(
            generate_child, str(work / "data"), args.size, args.seed, args.bad_line_ratio
        )
        print(
            f"generation (excluded from throughput): {gen['scans']} scans x {args.size:,} "
            f"measurements = {gen['records']:,} records (+{gen['bad_lines']:,} bad lines) in "
            f"{gen['seconds']:.1f} s; results.json {gen['raw_bytes'] / 1e6:,.0f} MB "
            f"({gen['gz_bytes'] / 1e6:,.0f} MB gzipped); peak RSS {gen['peak_rss_mb']:,.0f} MB",
            flush=True,
        )
        input_dir = str(work / "data" / "scans")

        def launch(scan_types: tuple[str, ...], name: str) -> dict[str, Any]:
            return in_child(
                run_child,
                input_dir,
                str(work / name),
                scan_types,
                resources,
                args.runner,
                args.batch_lines,
                args.verbose,
            )

        combined = launch(SCAN_TYPES, "warehouse_all")
        print_run("all types", combined)
        raw_mb = gen["raw_bytes"] / 1e6
        print(
            f"{'':<10} input {raw_mb:,.0f} MB of JSON lines: {raw_mb / combined['wall']:.1f} "
            f"MB/s wall; rows by table {combined['rows_by_table']}"
        )
        print("per scan type within that run (lines/rows from its processed_files table):")
        for t in SCAN_TYPES:
            pt = combined["per_type"].get(t)
            if pt:
                print(
                    f"  {t:<8} files {pt['files']}  lines {pt['lines']:>9,}  rows {pt['rows']:>9,}"
                    f"  rows/line {pt['rows'] / max(pt['lines'], 1):.2f}"
                    f"  dead letters {pt['dead_letters']:,}"
                )
        if not args.no_per_type:
            print("per scan type, one run each (scan_types=(t,), own warehouse):")
            total_wall = 0.0
            for t in SCAN_TYPES:
                res = launch((t,), f"warehouse_{t}")
                total_wall += res["wall"]
                print_run(f"  {t}", res)
            print(
                f"  sum of the four per-type walls {total_wall:.1f} s vs {combined['wall']:.1f} s "
                "for one run of all types"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
