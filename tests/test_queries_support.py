"""Helpers for the queries-service tests: a local warehouse filled with hand-made rows.

Rows are written the way the launcher writes them (same table specs, DuckDB file under
the warehouse folder), plus a ledger entry per scan, so the service sees exactly what it
sees in production, without running Beam.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from services.beam_launcher.warehouse.local import LocalWarehouse
from services.beam_launcher.warehouse.rows import PROCESSED_FILES, SCAN_TABLES
from services.common.rowschema import TableSpec
from services.queries.metrics import QueriesMetrics
from services.queries.run import QueriesConfig, QueriesSummary, run

UTC = dt.UTC
_COUNTER = {"n": 0}


def _tick() -> dt.datetime:
    """Strictly increasing commit times (a real launcher run stamps its own time)."""
    _COUNTER["n"] += 1
    return dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=_COUNTER["n"])


def warehouse(root: Path) -> Path:
    LocalWarehouse(root).ensure_tables()
    return root


def insert(root: Path, scan_type: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append base rows (missing columns are NULL; provenance columns get defaults)."""
    spec = SCAN_TABLES[scan_type]
    full = []
    for i, r in enumerate(rows, start=1):
        row = {
            "source_file": "results.json",
            "source_line": i,
            "pipeline_version": "test",
            "measurement_id": f"m{i}",
            **r,
        }
        full.append({c: row.get(c) for c in spec.column_names})
    publish(root, spec, full)


def publish(root: Path, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
    """Publish rows of ``spec`` as the launcher does: a Parquet file per input file and
    date under ``parquet/<table>/`` (each call its own slice, so rows add up), then the
    warehouse's views are refreshed."""
    groups: dict[tuple[Any, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["date"], row["source"], row["source_file"]), []).append(row)
    for (date, source, source_file), group in groups.items():
        _COUNTER["n"] += 1
        name = f"{source}__{source_file}.{_COUNTER['n']:06d}-of-999999.parquet"
        folder = root / "parquet" / spec.name / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(group, schema=spec.arrow_schema()), folder / name)
    LocalWarehouse(root).refresh_views()


def ledger(
    root: Path,
    scan_type: str,
    source: str,
    files: Iterable[str] = ("results.json",),
    lines: int = 4,
    rows_written: int = 0,
    status: str = "ok",
    dead_letters: int = 0,
) -> None:
    """Record (or re-record) the scan's files as processed now."""
    now = _tick()
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        for f in files:
            key = f"{source}/{f}"
            con.execute("DELETE FROM processed_files WHERE file_key = ?", [key])
            values = {
                "file_key": key,
                "scan_type": scan_type,
                "source": source,
                "path": f"/in/{key}",
                "size_bytes": 100,
                "version": "1",
                "pipeline_version": "test",
                "status": status,
                "reason": None,
                "lines": lines,
                "rows_written": rows_written,
                "dead_letters": dead_letters,
                "cert_parse_errors": 0,
                "run_id": f"run-{now.timestamp()}",
                "processed_at": now,
            }
            cols = ", ".join(f'"{c}"' for c in PROCESSED_FILES.column_names)
            marks = ", ".join("?" for _ in PROCESSED_FILES.column_names)
            con.execute(
                f"INSERT INTO processed_files ({cols}) VALUES ({marks})",
                [values[c] for c in PROCESSED_FILES.column_names],
            )


def delete_source(root: Path, scan_type: str, source: str) -> None:
    """Remove a scan's published rows (its files) from the scan type's table."""
    for path in (root / "parquet" / SCAN_TABLES[scan_type].name).glob(f"date=*/{source}__*"):
        path.unlink()
    LocalWarehouse(root).refresh_views()


def run_queries(root: Path, **kw: Any) -> tuple[QueriesSummary, QueriesMetrics]:
    metrics = QueriesMetrics()
    kw.setdefault("quality", False)
    summary = run(QueriesConfig(warehouse=str(root), **kw), metrics=metrics)
    return summary, metrics


def derived(root: Path, where: str = "TRUE", schema: str = "derived") -> list[dict[str, Any]]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        cur = con.execute(
            f"SELECT * FROM {schema}.merged_reduced_scans WHERE {where} "
            "ORDER BY date, source, domain, outcome, hostname NULLS FIRST"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def sql(root: Path, query: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(query).fetchall()


def counter(metrics: QueriesMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def hq_row(date: dt.date, source: str, **kw: Any) -> dict[str, Any]:
    """A Hyperquack row that survives every filter unless ``kw`` says otherwise."""
    return {
        "date": date,
        "source": source,
        "domain": "example.org",
        "domain_is_control": False,
        "domain_category": "News Media",
        "server_ip": "192.0.2.1",
        "server_asn": 3320,
        "server_as_full_name": "Deutsche Telekom AG",
        "server_country": "DE",
        "outcome": "expected/match",
        "controls_failed": False,
        **kw,
    }


def answer(**kw: Any) -> dict[str, Any]:
    return {"ip": "198.51.100.7", "matches_control": {"ip": False, "asn": False}, **kw}


VALID_CERT = {"https_tls_cert_matches_domain": True, "https_tls_cert_has_trusted_ca": True}


def sat_row(date: dt.date, source: str, measurement_id: str, **kw: Any) -> dict[str, Any]:
    """A Satellite row of an HTTPS-capable domain that survives every filter by default."""
    return {
        "date": date,
        "source": source,
        "measurement_id": measurement_id,
        "domain": "capable.example",
        "domain_is_control": False,
        "domain_category": "Social Networking",
        "retry": 0,
        "resolver_ip": "203.0.113.53",
        "resolver_name": "dns1.isp.example.co.uk.",
        "resolver_asn": 2856,
        "resolver_as_full_name": "British Telecommunications PLC",
        "resolver_country": "GB",
        "domain_controls_failed": False,
        "outcome": "ip.matchip",
        "answers": [answer()],
        **kw,
    }
