"""Peak memory of the queries service's Parquet export of one partition, by partition size.

Usage: ``uv run python bench/bench_export.py [--rows 200000] [--factor 10]``

Builds a DuckDB warehouse holding one ``http_scan``-shaped table (20 columns, ~1 KB a
row: a page body, headers, IPs, outcome strings) with one date partition of ``rows`` rows,
and another of ``rows * factor`` rows. Each partition is exported in a fresh child process
with ``DuckDBBackend.export_parquet`` (what ``--export`` runs per changed partition);
the child prints its peak RSS (``VmHWM``), time and file size. A streaming export has
flat memory: the peak barely moves between the two sizes (the data grows ``factor``
times). The figure printed last is the ratio of the two peaks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CREATE = """
CREATE TABLE http_scan AS
SELECT
    CASE WHEN i < {small} THEN DATE '2021-05-30' ELSE DATE '2021-05-31' END AS date,
    'CP_Quack-http-2021-05-30-05-02-33' AS source,
    'results.json' AS source_file,
    i AS source_line,
    md5(i::VARCHAR) AS measurement_id,
    '10.' || (i % 250) || '.' || (i % 199) || '.' || (i % 97) AS server_ip,
    'example' || (i % 5000) || '.com' AS domain,
    i % 3 AS retry,
    now()::TIMESTAMP + to_microseconds(i) AS start_time,
    now()::TIMESTAMP + to_microseconds(i + 5) AS end_time,
    CASE WHEN i % 7 = 0 THEN 'read: connection reset by peer' END AS received_error,
    '200 OK' AS received_status,
    ['Content-Type: text/html', 'Server: nginx/' || (i % 13)] AS received_headers,
    repeat(md5((i % 20000)::VARCHAR), 25) AS received_body,
    i % 11 = 0 AS is_known_blockpage,
    CASE WHEN i % 11 = 0 THEN 'b_' || (i % 40) END AS page_signature,
    CASE WHEN i % 11 = 0 THEN 'content/blockpage' ELSE 'expected/match' END AS outcome,
    'hq-' || (i % 30) AS outcome_rule_id,
    (i % 60000)::BIGINT AS server_asn,
    'DE' AS server_country
FROM range({total}) t(i)
"""

CHILD = """
import json, sys, time, datetime as dt
from services.queries.backends import DuckDBBackend
from services.queries.export import _select_partition, partition_folder
wh, out, day = sys.argv[1], sys.argv[2], dt.date.fromisoformat(sys.argv[3])
backend = DuckDBBackend(wh)
start = time.perf_counter()
files = backend.export_parquet(_select_partition("http_scan", "main"), {"date": day},
                               partition_folder(out, "http_scan", day))
seconds = time.perf_counter() - start
backend.close()
import os
# VmHWM (not ru_maxrss, which keeps the forking parent's peak across exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm / 1024,
                  "bytes": sum(os.path.getsize(f) for f in files)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the small partition")
    parser.add_argument("--factor", type=int, default=10, help="the big partition is this x")
    args = parser.parse_args()
    import duckdb

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        wh = Path(tmp) / "wh"
        wh.mkdir()
        big = args.rows * args.factor
        start = time.perf_counter()
        with duckdb.connect(str(wh / "warehouse.duckdb")) as con:
            con.execute(CREATE.format(small=args.rows, total=args.rows + big))
        print(f"warehouse built in {time.perf_counter() - start:.1f} s")
        peaks = []
        for day, rows in (("2021-05-30", args.rows), ("2021-05-31", big)):
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(wh), str(Path(tmp) / "out"), day],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            fig = json.loads(res.stdout.strip().splitlines()[-1])
            peaks.append(fig["peak_rss_mb"])
            print(
                f"partition {day}: {rows:>10,} rows  {fig['seconds']:6.2f} s  "
                f"file {fig['bytes'] / 1e6:7.1f} MB  peak RSS {fig['peak_rss_mb']:7.1f} MB"
            )
        print(
            f"peak RSS ratio (x{args.factor} rows): {peaks[1] / peaks[0]:.2f} "
            "(flat memory: close to 1)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
