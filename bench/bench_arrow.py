"""CPU per row of the Hyperquack batch path up to Arrow: list columns vs native Arrow buffers.

Usage: ``uv run python bench/bench_arrow.py [--lines 100000] [--scan FILE.json.gz]
[--batch 500] [--repeats 5]``

What the launcher does per batch (``hyperquack/pipeline.py`` ``_batch``), without the
Parquet write, over lines held in memory, on one core:

* ``lists``: ``process_columns`` (the C parser appends every value to a Python list per
  column), enrichment (no IP metadata configured: constant columns), then
  ``TableSpec.columns_to_arrow`` converts every list (``pa.array``);
* ``arrow``: ``process_columns(..., arrow=True)`` (the C parser writes the STRING,
  INTEGER, BOOLEAN columns and the DATE/TIMESTAMP strings as Arrow buffers, wrapped
  without a copy), the same enrichment, then ``columns_to_arrow`` passes those arrays
  through (casting the timestamp strings) and converts the remaining lists.

The lines are the first ``--lines`` of ``--scan`` (a Hyperquack ``.json[.gz]`` file),
else a generated HTTP v2 scan (``sampledata``, seed 0: the scan ``bench/bench_e2e.py``
uses). Both paths run alternately ``--repeats`` times (best and median CPU time of
each part are printed, per row); before timing, every batch's two tables are checked
equal (``pa.Table.equals``), so the figures compare paths giving the same result.
Without the compiled module both paths are the pure-Python one (printed).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARTS = ("parse", "enrich", "to_arrow")


def load_lines(scan: str | None, n: int) -> tuple[str, list[bytes]]:
    """(scan name, the first ``n`` lines) of ``scan``, or of a generated HTTP v2 scan."""
    if scan:
        path = Path(scan)
        opener: Any = gzip.open if path.suffix == ".gz" else open
        lines: list[bytes] = []
        with opener(path, "rb") as fh:
            for line in fh:
                lines.append(line)
                if len(lines) >= n:
                    break
        return path.parent.name, lines
    from sampledata import HYPERQUACK_SCANS, build_scan_files, source_name

    spec = next(s for s in HYPERQUACK_SCANS if s.scan_type == "http" and s.version == 2)
    members, _, _ = build_scan_files(spec, n, seed=0)
    return source_name(spec.scan_type, spec.start), members["results.json"].splitlines(True)


def run_once(proc: Any, enricher: Any, spec: Any, task: Any, lines: list[bytes], batch: int,
             arrow: bool) -> dict[str, float]:  # fmt: skip
    """CPU seconds of each part over all batches, and the rows."""
    spent = dict.fromkeys(PARTS, 0.0)
    rows = 0
    clock = time.process_time
    for i in range(0, len(lines), batch):
        t0 = clock()
        out = proc.process_columns(task, i + 1, lines[i : i + batch], arrow)
        t1 = clock()
        enricher.enrich_hyperquack_columns(out.columns, out.n_rows, {})
        t2 = clock()
        spec.columns_to_arrow(out.columns | out.arrays, out.n_rows)
        t3 = clock()
        spent["parse"] += t1 - t0
        spent["enrich"] += t2 - t1
        spent["to_arrow"] += t3 - t2
        rows += out.n_rows
    spent["rows"] = rows
    return spent


def check_equal(proc: Any, enricher: Any, spec: Any, task: Any, lines: list[bytes],
                batch: int) -> int:  # fmt: skip
    """Every batch gives the same table both ways; returns the arrays per batch (arrow)."""
    ready = 0
    for i in range(0, len(lines), batch):
        tables = []
        for arrow in (False, True):
            out = proc.process_columns(task, i + 1, lines[i : i + batch], arrow)
            enricher.enrich_hyperquack_columns(out.columns, out.n_rows, {})
            tables.append(spec.columns_to_arrow(out.columns | out.arrays, out.n_rows))
            ready = max(ready, len(out.arrays))
        if not tables[0].equals(tables[1]):
            raise SystemExit(f"tables differ in the batch from line {i + 1}")
    return ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--scan", help="a Hyperquack .json or .json.gz file (default: generated)")
    parser.add_argument("--batch", type=int, default=500, help="lines per batch (the launcher's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from services.beam_launcher.enrichment.ip_metadata import RowEnricher
    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
    from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor
    from services.beam_launcher.warehouse.rows import HYPERQUACK_TABLES
    from services.common.scans import parse_scan_name

    source, lines = load_lines(args.scan, args.lines)
    scan = parse_scan_name(source)
    task = FileTask(source, source, "results.json", scan.scan_type, scan.date.isoformat(), 0,
                    None, "bench")  # fmt: skip
    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    enricher = RowEnricher(None)
    spec = HYPERQUACK_TABLES[scan.scan_type]
    ready = check_equal(proc, enricher, spec, task, lines, args.batch)
    print(
        f"{len(lines):,} lines of {source}, batches of {args.batch}, "
        f"{'native' if proc.native else 'PYTHON (no native module)'} parser; "
        f"arrow path: {ready} columns as Arrow arrays; tables equal in every batch",
        flush=True,
    )
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for arrow in (False, True):
            proc.clear_caches()
            results[arrow].append(run_once(proc, enricher, spec, task, lines, args.batch, arrow))
    rows = results[False][0]["rows"]
    print(f"{rows:,.0f} rows; CPU µs per row, best / median of {args.repeats}:")
    print(f"{'path':8} " + " ".join(f"{p:>15}" for p in (*PARTS, "parse+to_arrow", "total")))
    best: dict[bool, float] = {}
    for arrow, runs in results.items():
        cells = []
        for key in (*PARTS, "parse+to_arrow", "total"):
            if key == "parse+to_arrow":
                values = [r["parse"] + r["to_arrow"] for r in runs]
            elif key == "total":
                values = [sum(r[p] for p in PARTS) for r in runs]
            else:
                values = [r[key] for r in runs]
            per_row = [v / rows * 1e6 for v in values]
            cells.append(f"{min(per_row):6.2f} / {statistics.median(per_row):6.2f}")
            if key == "parse+to_arrow":
                best[arrow] = min(per_row)
        print(f"{'arrow' if arrow else 'lists':8} " + " ".join(f"{c:>15}" for c in cells))
    print(
        f"parse+to_arrow: arrow {best[True]:.2f} vs lists {best[False]:.2f} µs/row "
        f"({best[True] / best[False] - 1:+.0%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
