"""Data-quality checks: run the ``mode: check`` SQL files and publish the results.

Each check file returns rows; the function registered here for its ``-- check:`` name
turns them into ``cp_quality_*`` gauges (and a JSON-friendly summary for the run
report). Adding a check = one SQL file + one function.

Example:
    >>> from services.queries.metrics import QueriesMetrics
    >>> m = QueriesMetrics()
    >>> _ = publish("dead_letters", [{"scan_type": "echo", "stage": "parse",
    ...     "error_class": "invalid_json", "dead_letters": 2}], m)
    >>> m.registry.get_sample_value("cp_quality_dead_letters",
    ...     {"scan_type": "echo", "stage": "parse", "error_class": "invalid_json"})
    2.0
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from services.queries.metrics import QueriesMetrics

Rows = Sequence[Mapping[str, Any]]


def _day(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _epoch(value: dt.date) -> float:
    return float(calendar.timegm(value.timetuple()))


def _ratio(num: Any, den: Any) -> float | None:
    return None if not den else float(num or 0) / float(den)


def _completeness(rows: Rows, m: QueriesMetrics) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["date"] is None:
            continue
        labels = {"scan_type": str(r["scan_type"]), "date": _day(r["date"])}
        m.ledger_lines.labels(**labels).set(float(r["ledger_lines"] or 0))
        m.ledger_rows.labels(**labels).set(float(r["ledger_rows"] or 0))
        m.table_rows.labels(**labels).set(float(r["table_rows"] or 0))
        m.rejected_files.labels(**labels).set(float(r["files_rejected"] or 0))
        completeness = _ratio(r["table_rows"], r["ledger_rows"])
        coverage = _ratio(r["accounted_lines"], r["data_lines"])
        if completeness is not None:
            m.completeness.labels(**labels).set(completeness)
        if coverage is not None:
            m.line_coverage.labels(**labels).set(coverage)
        out.append({**labels, "completeness": completeness, "line_coverage": coverage})
    return out


def _enrichment(rows: Rows, m: QueriesMetrics) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        total = r["row_count"]
        for field in ("asn", "country"):
            share = _ratio(r[f"with_{field}"], total)
            if share is None:
                continue
            m.enrichment.labels(table=r["table_name"], date=_day(r["date"]), field=field).set(share)
            out.append(
                {"table": r["table_name"], "date": _day(r["date"]), "field": field, "ratio": share}
            )
    return out


def _freshness(rows: Rows, m: QueriesMetrics) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        table = str(r["table_name"])
        if r["newest_date"] is not None:
            m.newest_date.labels(table=table).set(_epoch(r["newest_date"]))
        if r["newest_complete_date"] is not None:
            m.newest_complete_date.labels(table=table).set(_epoch(r["newest_complete_date"]))
        out.append(
            {
                "table": table,
                "newest_date": None if r["newest_date"] is None else _day(r["newest_date"]),
                "newest_complete_date": None
                if r["newest_complete_date"] is None
                else _day(r["newest_complete_date"]),
            }
        )
    return out


def _dead_letters(rows: Rows, m: QueriesMetrics) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        labels = {
            "scan_type": str(r["scan_type"]),
            "stage": str(r["stage"]),
            "error_class": str(r["error_class"]),
        }
        m.dead_letters.labels(**labels).set(float(r["dead_letters"]))
        out.append({**labels, "count": int(r["dead_letters"])})
    return out


KEPT = "kept"


def _dropped_rows(rows: Rows, m: QueriesMetrics) -> list[dict[str, Any]]:
    """One entry per scan type and date: base rows, rows kept, rows dropped by reason."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["date"] is None:
            continue
        scan_type, day, reason = str(r["scan_type"]), _day(r["date"]), str(r["reason"])
        n = int(r["row_count"] or 0)
        entry = by_key.setdefault(
            (scan_type, day),
            {"scan_type": scan_type, "date": day, "base_rows": 0, KEPT: 0, "dropped": {}},
        )
        entry["base_rows"] += n
        if reason == KEPT:
            entry[KEPT] += n
        else:
            entry["dropped"][reason] = entry["dropped"].get(reason, 0) + n
            m.dropped_rows.labels(scan_type=scan_type, date=day, reason=reason).set(float(n))
    out = [by_key[k] for k in sorted(by_key)]
    for e in out:
        e["dropped"] = dict(sorted(e["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def dropped_totals(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scan type over all dates: ``{"base_rows", "kept", "dropped": {reason: n}}``."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        t = out.setdefault(e["scan_type"], {"base_rows": 0, KEPT: 0, "dropped": {}})
        t["base_rows"] += e["base_rows"]
        t[KEPT] += e[KEPT]
        for reason, n in e["dropped"].items():
            t["dropped"][reason] = t["dropped"].get(reason, 0) + n
    for t in out.values():
        t["dropped"] = dict(sorted(t["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
    return dict(sorted(out.items()))


PUBLISHERS: dict[str, Callable[[Rows, QueriesMetrics], list[dict[str, Any]]]] = {
    "completeness": _completeness,
    "enrichment": _enrichment,
    "freshness": _freshness,
    "dead_letters": _dead_letters,
    "dropped_rows": _dropped_rows,
}


def publish(check: str, rows: Rows, metrics: QueriesMetrics) -> list[dict[str, Any]]:
    try:
        fn = PUBLISHERS[check]
    except KeyError:
        raise KeyError(f"no publisher for check {check!r}") from None
    return fn(rows, metrics)
