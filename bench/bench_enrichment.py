"""What IP-metadata enrichment adds to a launcher run, measured paired inside one process.

Usage: ``uv run python bench/bench_enrichment.py [--lines 300000] [--prefixes 1000000]
[--keep DIR] [--rounds 2] [--layout untar|plain] [--plain-runs 3]``

``bench_e2e.py`` measures enrichment as the difference of two launcher runs, one with and
one without ``--ip-metadata``. On the shared development machine two runs of the same
code differ by more than that difference (the enrichment share of single runs moved
between 1.5% and 20%), so this benchmark measures the same thing paired:

1. the first ``--lines`` lines of the bench's 1M-line HTTP v2 scan (``bench_e2e.py``'s
   cache, ``--keep``) are parsed batch by batch as a worker parses them
   (``HyperquackProcessor.process_columns``, batches of 500);
2. each batch's columns then go through what a worker does after parsing, twice, in
   alternating order: without IP metadata and with it (``RowEnricher`` on the mirror
   ``bench_e2e.py`` builds, tables prepared as the launcher prepares them before
   forking, and the GC settings of a worker process): enrichment, ``columns_to_arrow``
   and the Parquet write (``DateWriters`` into a temporary folder); the thread's CPU
   time of each path is summed. Both paths
   meet the same CPU-cache state, since each follows a fresh parse in turn;
3. the launcher's share: in a fresh process, ``RowEnricher.prepare`` for the scan's
   dates with an empty local cache, from the mirror with its ``compiled/`` forms and
   from a copy without them (parsing the files);
4. plain launcher runs of the 1M-line scan (``bench_e2e.run_launcher``, ``--plain-runs``,
   default 3; the scan file laid out as untar writes it, ``--layout plain`` for one gzip
   stream) give the run's CPU without enrichment: the median run's.

It prints the added CPU per 1M lines (workers: enriched path minus plain path, scaled
from ``--lines``; launcher: the preparation) and that as a share of the enriched run's
CPU: added / (plain run + added); the plain run is a separate measurement, so the
machine's speed can differ between them (the plain run's CPU moved between 25 and 40
CPU-s within an hour). Also the workers' added CPU as a share of parsing plus the
enriched path, all measured side by side: an upper bound of the share in which the
machine's speed cancels out. Figures are CPU seconds of the measuring thread or
process (``time.thread_time``, ``time.process_time``). The script always exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e

MILLION = 1_000_000
BATCH = 500


def paired_child(scan: str, meta: str, n_lines: int, rounds: int, out_dir: str) -> dict[str, Any]:
    """Worker-side CPU of the plain and the enriched path after each parse (seconds)."""
    from services.beam_launcher import worker
    from services.beam_launcher.enrichment.ip_metadata import RowEnricher
    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
    from services.beam_launcher.hyperquack.pipeline import HYPERQUACK_TABLES, DateWriters
    from services.beam_launcher.hyperquack.processing import HyperquackProcessor

    os.environ["CP_IPMETA_CACHE"] = "off"
    lines, task = e2e.scan_lines(scan, n_lines)
    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    spec = HYPERQUACK_TABLES[task.scan_type]
    plain, enriched = RowEnricher(None), RowEnricher(meta)
    # Prepared as the launcher prepares before forking: the dates of the first batches.
    first = proc.process_columns(task, 1, lines[:BATCH], arrow=True)
    enriched.prepare({d for d in first.columns["date"] if d})
    worker.tune_gc_for_sdk_process()  # the GC settings of a worker process
    worker.freeze_after_setup()
    spent = {"plain": 0.0, "enriched": 0.0}
    parsing = 0.0
    rows = 0
    for r in range(rounds):
        writers = {
            name: DateWriters(spec, os.path.join(out_dir, f"{name}-{r}"), "") for name in spent
        }
        for k, i in enumerate(range(0, len(lines), BATCH)):
            start = time.thread_time()
            out = proc.process_columns(task, i + 1, lines[i : i + BATCH], arrow=True)
            parsing += time.thread_time() - start
            rows += out.n_rows
            order = ("plain", "enriched") if (k + r) % 2 == 0 else ("enriched", "plain")
            for name in order:
                enricher = plain if name == "plain" else enriched
                columns = dict(out.columns)
                start = time.thread_time()
                enricher.enrich_hyperquack_columns(columns, out.n_rows, {}, arrow=True)
                table = spec.columns_to_arrow(columns | out.arrays, out.n_rows)
                writers[name].add(table, out.columns["date"])
                spent[name] += time.thread_time() - start
        for name, w in writers.items():
            start = time.thread_time()
            w.finish()
            spent[name] += time.thread_time() - start
    return {"lines": len(lines) * rounds, "rows": rows, "parsing": parsing, **spent}


def prepare_child(meta: str, dates: list[str]) -> float:
    """CPU seconds of ``RowEnricher.prepare`` in a fresh process, empty local cache."""
    os.environ["CP_IPMETA_CACHE"] = "off"
    from services.beam_launcher.enrichment.ip_metadata import RowEnricher

    start = time.process_time()
    RowEnricher(meta).prepare(dates)
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000, help="lines parsed (paired)")
    parser.add_argument("--prefixes", type=int, default=MILLION, help="IP-metadata prefixes")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the lines")
    parser.add_argument("--keep", type=Path, help="bench_e2e.py's cache folder (reused)")
    parser.add_argument(
        "--layout",
        choices=sorted(e2e.LAYOUTS),
        default="untar",
        help="the plain run's scan file as untar writes it (default) or as one gzip stream",
    )
    parser.add_argument(
        "--plain-runs", type=int, default=3, help="plain launcher runs (the median CPU is used)"
    )
    args = parser.parse_args()
    cache = args.keep or Path(tempfile.mkdtemp(prefix="bench_enrichment_"))
    cache.mkdir(parents=True, exist_ok=True)
    scan = e2e.ensure_scan(cache, MILLION, args.layout)
    meta = e2e.ensure_ip_metadata(cache, MILLION, args.prefixes)
    meta_parsed = e2e.ensure_ip_metadata(cache, MILLION, args.prefixes, compiled=False)
    print(f"bench_enrichment: {os.cpu_count()} CPUs, load "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {e2e.bytecode_state()}",
          flush=True)  # fmt: skip

    out_dir = tempfile.mkdtemp(prefix="bench_enrichment_parquet_")
    try:
        paired = e2e.in_child(paired_child, str(scan), str(meta), args.lines, args.rounds,
                              out_dir)  # fmt: skip
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    per_line = (paired["enriched"] - paired["plain"]) / paired["lines"]
    workers = per_line * MILLION
    print(
        f"workers, after parsing, {paired['lines']:,} lines ({paired['rows']:,} rows) in "
        f"alternating pairs: plain {paired['plain']:.2f} CPU-s, enriched "
        f"{paired['enriched']:.2f} CPU-s -> {workers:.2f} CPU-s added per 1M lines; "
        f"parsing {paired['parsing']:.2f} CPU-s",
        flush=True,
    )
    # All measured side by side in one thread, so the machine's speed cancels out; an
    # upper bound of the share, as reading, Beam and the launcher are left out.
    added = paired["enriched"] - paired["plain"]
    bound = added / (paired["parsing"] + paired["enriched"])
    print(f"share of a worker's parse + write + enrichment: {bound:.1%} (an upper bound)")
    dates = ["2021-05-30"]  # the scan's date, as the launcher prepares
    prepared = {
        "compiled": min(e2e.in_child(prepare_child, str(meta), dates) for _ in range(2)),
        "parsed": min(e2e.in_child(prepare_child, str(meta_parsed), dates) for _ in range(2)),
    }
    print(
        "launcher, preparing the tables (empty local cache, best of 2): "
        f"from compiled/ {prepared['compiled']:.2f} CPU-s, parsing the files "
        f"{prepared['parsed']:.2f} CPU-s",
        flush=True,
    )
    work = cache / "runs" / f"enrichment-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = [
            e2e.run_launcher(scan.parent.parent, work, None, None, [])
            for _ in range(max(1, args.plain_runs))
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run = sorted(runs, key=lambda r: r["cpu"])[len(runs) // 2]
    cpus = ", ".join(f"{r['cpu']:.1f}" for r in runs)
    print(
        f"plain launcher runs, 1M lines ({e2e.LAYOUTS[args.layout]}): "
        f"{cpus} CPU-s; the median {run['cpu']:.1f} "
        f"CPU-s ({run['wall']:.1f} s wall) is used",
        flush=True,
    )
    for how, launcher in prepared.items():
        added = workers + launcher
        share = added / (run["cpu"] + added)
        print(
            f"enrichment with tables {'from compiled/' if how == 'compiled' else 'parsed'}: "
            f"{added:.2f} CPU-s per 1M lines = {share:.1%} of the enriched run "
            f"({e2e.verdict(share <= 0.10)} <= 10%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
