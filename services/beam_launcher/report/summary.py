"""Print a short summary of a local warehouse: tables, row counts, outcomes, dead letters;
with ``--html``, also write a static HTML report with charts (see ``report.html``).

Usage: ``python -m services.beam_launcher.report --warehouse DIR [--html OUT.html]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from services.common import lifecycle

# DuckDB, pyarrow and the warehouse module (Beam) are imported inside the functions, so
# that --help answers at once.


def render(warehouse: Path) -> str:
    import duckdb

    from services.beam_launcher.warehouse.local import DB_NAME
    from services.beam_launcher.warehouse.rows import SCAN_TABLES

    db = warehouse / DB_NAME
    if not db.exists():
        raise FileNotFoundError(f"no warehouse database at {db}")
    out: list[str] = [
        f"Warehouse: {db.resolve()}",
        f"Parquet:   {(warehouse / 'parquet').resolve()}",
        "",
    ]
    with duckdb.connect(str(db), read_only=True) as con:
        out.append(f"{'table':<16}{'rows':>9}{'dates':>7}  top outcomes")
        for spec in SCAN_TABLES.values():
            n, dates = con.execute(
                f'SELECT count(*), count(DISTINCT date) FROM "{spec.name}"'
            ).fetchone()  # type: ignore[misc]
            top = con.execute(
                f'SELECT outcome, count(*) c FROM "{spec.name}" '
                "GROUP BY 1 ORDER BY c DESC, 1 LIMIT 3"
            ).fetchall()
            tops = ", ".join(f"{o} {c}" for o, c in top)
            out.append(f"{spec.name:<16}{n:>9}{dates:>7}  {tops}")
        dl = con.execute(
            "SELECT error_class, count(*) FROM dead_letter GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        out.append("")
        out.append("dead_letter: " + (", ".join(f"{c} {n}" for c, n in dl) or "none"))
        files = con.execute(
            "SELECT status, count(*), sum(lines), sum(rows_written) FROM processed_files GROUP BY 1"
        ).fetchall()
        for status, count, lines, rows in files:
            out.append(f"processed_files[{status}]: {count} files, {lines} lines, {rows} rows")
        derived = con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'derived' AND table_name NOT LIKE '\\_%' ESCAPE '\\' "
            "ORDER BY 1"
        ).fetchall()
        for (name,) in derived:  # written by the queries service, when it has run
            (n,) = con.execute(f'SELECT count(*) FROM derived."{name}"').fetchone()  # type: ignore[misc]
            out.append(f"derived.{name}: {n} rows")
    out.append("")
    out.append(
        'Query it: uv run python -c "import duckdb; print(duckdb.connect('
        f"'{db}', read_only=True).sql('SELECT outcome, count(*) FROM http_scan GROUP BY 1'))\""
    )
    return "\n".join(out)


def write_html(warehouse: Path, out: Path) -> Path:
    """Write the HTML report of ``warehouse`` to ``out`` (atomically); returns its path."""
    import duckdb

    from services.beam_launcher.report.html import build_html
    from services.beam_launcher.warehouse.local import DB_NAME

    db = warehouse / DB_NAME
    if not db.exists():
        raise FileNotFoundError(f"no warehouse database at {db}")
    lock = warehouse / lifecycle.WAREHOUSE_LOCK
    # A shared lock: a launcher or queries commit in progress finishes first.
    with (
        lifecycle.flocked(lock, False, "report", "report"),
        duckdb.connect(str(db), read_only=True) as con,
    ):
        page = build_html(con, warehouse.resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out.resolve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.beam_launcher.report",
        description="Summarise a local warehouse (text on stdout) and optionally write an "
        "HTML report with charts.",
    )
    p.add_argument("--warehouse", required=True, help="folder holding warehouse.duckdb")
    p.add_argument(
        "--html",
        metavar="OUT.html",
        help="also write a static HTML report (no server, opens offline) and print its path",
    )
    args = p.parse_args(argv)
    import duckdb

    try:
        print(render(Path(args.warehouse)))
        if args.html:
            path = write_html(Path(args.warehouse), Path(args.html))
            print(f"HTML report: {path}")
    except (FileNotFoundError, duckdb.Error, OSError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
