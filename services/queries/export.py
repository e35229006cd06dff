"""Researcher export: Parquet files per table and date, incremental per destination.

Layout (local folder or ``gs://`` prefix; BigQuery can only write to ``gs://``)::

    <export>/<table>/date=YYYY-MM-DD/part-000000000000.parquet   (BigQuery may split a
                                                                   date into part-*.parquet)
    <export>/_manifest.json

Tables: the five scan tables (``echo_scan`` … ``satellite_scan``, all columns as in
``docs/tables.md``) and ``merged_reduced_scans``. ``_manifest.json`` records, per table
and date, the fingerprint of what was exported (the scans and ledger times behind a base
partition; the run that built a derived partition) and its files. A run exports the
partitions whose fingerprint changed, deletes the folders of partitions that no longer
exist, and writes the manifest last: an interrupted export is redone by the next run.

Example:
    >>> partition_folder("out", "echo_scan", __import__("datetime").date(2021, 5, 30))
    'out/echo_scan/date=2021-05-30'
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from sqlglot import exp

from services.common import storage
from services.queries.backends import Backend
from services.queries.metrics import QueriesMetrics
from services.queries.tables import MERGED_REDUCED_SCANS, SCAN_TABLE_NAMES


class ExportSource(Protocol):
    """What the export needs of a run (``services.queries.run.Service`` is one)."""

    backend: Backend
    metrics: QueriesMetrics
    run_id: str
    now: dt.datetime

    def render(self, stmt: exp.Expression) -> exp.Expression: ...

    def query(self, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...


MANIFEST = "_manifest.json"
BASE_EXPORT_TABLES = {table: scan_type for scan_type, table in SCAN_TABLE_NAMES.items()}
DERIVED_EXPORT_TABLES = (MERGED_REDUCED_SCANS.name,)


def partition_folder(root: str, table: str, date: dt.date) -> str:
    return storage.join(root, table, f"date={date.isoformat()}")


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:32]


def current_partitions(svc: ExportSource) -> dict[str, dict[str, str]]:
    """table → date → fingerprint of its content, from the service's state tables."""
    out: dict[str, dict[str, str]] = {}
    parts: dict[tuple[str, str], list[str]] = {}
    by_type = {scan_type: table for table, scan_type in BASE_EXPORT_TABLES.items()}
    for r in svc.query("internal/consumed_sources.sql", {}):
        if r["date"] is None or r["scan_type"] not in by_type:
            continue
        key = (by_type[r["scan_type"]], r["date"].isoformat())
        parts.setdefault(key, []).append(
            f"{r['source']}|{r['files']}|{r['last_processed_at']}|{r['row_count']}"
        )
    for (table, day), p in parts.items():
        out.setdefault(table, {})[day] = _fingerprint(p)
    for table in DERIVED_EXPORT_TABLES:
        for r in svc.query("internal/partitions.sql", {"target": table}):
            out.setdefault(table, {})[r["date"].isoformat()] = _fingerprint(
                [f"{r['run_id']}|{r['row_count']}"]
            )
    return out


def load_manifest(root: str) -> dict[str, Any]:
    url = storage.join(root, MANIFEST)
    st = storage.storage_for(url)
    if st.stat(url) is None:
        return {"version": 1, "tables": {}}
    data = orjson.loads(st.read_bytes(url))
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise ValueError(f"{url}: not an export manifest")
    return data


def _select_partition(table: str, dataset: str) -> exp.Expression:
    return (
        exp.select("*")
        .from_(exp.table_(table, db=dataset))
        .where(exp.EQ(this=exp.column("date"), expression=exp.Parameter(this=exp.var("date"))))
    )


def export(svc: ExportSource, root: str, full: bool = False) -> dict[str, int]:
    """Export changed partitions to ``root``; returns files written per table."""
    manifest = load_manifest(root)
    tables: dict[str, Any] = manifest["tables"]
    current = current_partitions(svc)
    written: dict[str, int] = {}
    for table in (*BASE_EXPORT_TABLES, *DERIVED_EXPORT_TABLES):
        dataset = "base" if table in BASE_EXPORT_TABLES else "derived"
        done: dict[str, Any] = tables.setdefault(table, {})
        now: Mapping[str, str] = current.get(table, {})
        for day in sorted(set(done) - set(now)):  # partition gone: remove its files
            folder = partition_folder(root, table, dt.date.fromisoformat(day))
            storage.storage_for(folder).delete(folder)
            del done[day]
        for day, fingerprint in sorted(now.items()):
            if not full and done.get(day, {}).get("fingerprint") == fingerprint:
                continue
            date = dt.date.fromisoformat(day)
            stmt = svc.render(_select_partition(table, dataset))
            files = svc.backend.export_parquet(
                stmt, {"date": date}, partition_folder(root, table, date)
            )
            done[day] = {
                "fingerprint": fingerprint,
                "files": [storage.basename(f) for f in files],
                "exported_at": svc.now.isoformat(),
                "run_id": svc.run_id,
            }
            written[table] = written.get(table, 0) + len(files)
            svc.metrics.exported_files.labels(table=table).inc(len(files))
    url = storage.join(root, MANIFEST)
    storage.storage_for(url).write_bytes(
        url, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    )
    return written
