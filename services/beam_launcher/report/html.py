"""The HTML report of a local warehouse: one static page of SVG charts.

Each section runs one SQL statement on ``warehouse.duckdb`` (read-only) and draws its
result; the page shows that statement and the rows it returned under the chart, so every
number on the page can be traced to the tables. A section without rows, or whose table
does not exist yet, says "no data" and why. The page has no scripts and no external
resources: it opens offline from the file.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import duckdb

from services.beam_launcher.report.svg import Bar, column_chart, fmt_count, hbar_chart
from services.beam_launcher.warehouse.rows import SCAN_TABLES

__all__ = ["SECTIONS", "Section", "build_html", "run_section"]

Row = dict[str, Any]
HQ_TYPES = tuple(t for t in SCAN_TABLES if t != "satellite")
EXPECTED_FIRST = ("expected", "ip.matchip", "ip.matchasn", "tls.validcert")


def _union(template: str, types: Sequence[str] = tuple(SCAN_TABLES)) -> str:
    """``template`` (with ``{type}`` and ``{table}``) once per scan table, UNION ALL."""
    parts = [template.format(type=t, table=SCAN_TABLES[t].name) for t in types]
    return "\n  UNION ALL\n".join("  " + p for p in parts)


def _country(scan_type: str) -> str:
    return "resolver_country" if scan_type == "satellite" else "server_country"


@dataclass(frozen=True)
class Section:
    """One part of the page: its SQL, what it needs, and how its rows are drawn."""

    key: str
    title: str
    about: str
    sql: str
    draw: Callable[[list[Row]], str] | None
    empty: str = "no rows"
    needs: tuple[str, ...] = ()  # "schema.table" that must exist


# --- drawing ------------------------------------------------------------------------------


def _order(rows: list[Row], key: str, weight: str) -> list[str]:
    """Series names, expected outcomes first, then by total weight."""
    totals: dict[str, float] = {}
    for r in rows:
        totals[r[key]] = totals.get(r[key], 0.0) + float(r[weight])
    first = [s for s in EXPECTED_FIRST if s in totals]
    rest = sorted((s for s in totals if s not in first), key=lambda s: (-totals[s], s))
    return first + rest


def _group(rows: list[Row], key: Callable[[Row], str]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _draw_rows_by_date(rows: list[Row]) -> str:
    days = list(dict.fromkeys(r["day"] for r in rows))
    series = [t for t in SCAN_TABLES if any(r["scan_type"] == t for r in rows)]
    values = {(r["day"], r["scan_type"]): float(r["row_count"]) for r in rows}
    return column_chart("Rows by scan date and scan type", days, values, series, "rows")


def _draw_outcome_shares(rows: list[Row]) -> str:
    series = _order(rows, "outcome_stage", "row_count")
    bars = []
    for label, rs in _group(rows, lambda r: f"{r['scan_type']} {r['day']}").items():
        parts = [(r["outcome_stage"], float(r["share"])) for r in rs]
        parts.sort(key=lambda p: series.index(p[0]))
        notes = {r["outcome_stage"]: f"{fmt_count(r['row_count'])} rows" for r in rs}
        bars.append(Bar(label, parts, f"{fmt_count(rs[0]['total_rows'])} rows", notes))
    return hbar_chart(
        "Outcome shares by scan type and date (outcome stage)", bars, share=True, series=series
    )


def _draw_countries(title: str) -> Callable[[list[Row]], str]:
    def draw(rows: list[Row]) -> str:
        bars = [
            Bar(
                r["country_name"],
                [("unexpected", float(r["unexpected_share"] or 0.0))],
                f"{fmt_count(r['unexpected_rows'] or 0)} of {fmt_count(r['classified_rows'])}"
                f" rows ({fmt_count(r['row_count'])} in all)",
            )
            for r in rows
        ]
        return hbar_chart(title, bars, share=True, axis_label="share of unexpected outcomes")

    return draw


def _draw_stacked_top(title: str, label: str) -> Callable[[list[Row]], str]:
    def draw(rows: list[Row]) -> str:
        series = [t for t in SCAN_TABLES if any(r["scan_type"] == t for r in rows)]
        bars = []
        for name, rs in _group(rows, lambda r: r[label]).items():
            parts = sorted(
                ((r["scan_type"], float(r["row_count"])) for r in rs),
                key=lambda p: series.index(p[0]),
            )
            note = f"{fmt_count(rs[0]['total_rows'])} · {fmt_count(rs[0]['countries'])} countries"
            bars.append(Bar(name, parts, note))
        return hbar_chart(title, bars, series=series, axis_label="rows")

    return draw


def _draw_satellite_classes(rows: list[Row]) -> str:
    series = _order(rows, "answer_class", "row_count")
    bars = []
    for country, rs in _group(rows, lambda r: r["resolver_country"]).items():
        parts = sorted(
            ((r["answer_class"], float(r["share"])) for r in rs), key=lambda p: series.index(p[0])
        )
        notes = {r["answer_class"]: f"{fmt_count(r['row_count'])} rows" for r in rs}
        bars.append(Bar(country, parts, f"{fmt_count(rs[0]['total_rows'])} rows", notes))
    return hbar_chart(
        "Satellite answer classes by resolver country", bars, share=True, series=series
    )


def _draw_enrichment(rows: list[Row]) -> str:
    bars = [
        Bar(
            f"{r['table_name']} {r['day']}",
            [("with ASN", float(r["asn_share"])), ("with country", float(r["country_share"]))],
            part_notes={
                "with ASN": f"{fmt_count(r['with_asn'])} of {fmt_count(r['row_count'])}",
                "with country": f"{fmt_count(r['with_country'])} of {fmt_count(r['row_count'])}",
            },
        )
        for r in rows
    ]
    return hbar_chart(
        "Enrichment coverage: rows with an ASN and a country",
        bars,
        share=True,
        grouped=True,
        series=["with ASN", "with country"],
    )


def _draw_dead_letters(rows: list[Row]) -> str:
    series = [t for t in (*SCAN_TABLES, "unknown") if any(r["scan_type"] == t for r in rows)]
    bars = []
    for reason, rs in _group(rows, lambda r: f"{r['stage']}: {r['error_class']}").items():
        parts = sorted(
            ((r["scan_type"], float(r["dead_letters"])) for r in rs),
            key=lambda p: series.index(p[0]),
        )
        bars.append(Bar(reason, parts, fmt_count(rs[0]["reason_total"])))
    return hbar_chart(
        "Dead letters per reason (stage: error class)", bars, series=series, axis_label="lines"
    )


def _draw_dropped(rows: list[Row]) -> str:
    series = [t for t in SCAN_TABLES if any(r["scan_type"] == t for r in rows)]
    bars = []
    for reason, rs in _group(rows, lambda r: r["reason"]).items():
        parts = sorted(
            ((r["scan_type"], float(r["left_out"])) for r in rs),
            key=lambda p: series.index(p[0]),
        )
        notes = {
            r["scan_type"]: f"{fmt_count(r['left_out'])} of {fmt_count(r['base_rows'])} rows"
            for r in rs
        }
        bars.append(Bar(reason, parts, fmt_count(rs[0]["reason_total"]), notes))
    return hbar_chart(
        "Rows left out of merged_reduced_scans, by reason and scan type",
        bars,
        series=series,
        axis_label="rows",
    )


def _draw_completeness(rows: list[Row]) -> str:
    bars = []
    for r in rows:
        parts, notes = [], {}
        if r["completeness"] is not None:
            parts.append(("completeness", float(r["completeness"])))
            notes["completeness"] = (
                f"{fmt_count(r['table_rows'])} of {fmt_count(r['ledger_rows'])} rows"
            )
        if r["line_coverage"] is not None:
            parts.append(("line coverage", float(r["line_coverage"])))
            notes["line coverage"] = (
                f"{fmt_count(r['accounted_lines'])} of {fmt_count(r['data_lines'])} lines"
            )
        bars.append(Bar(f"{r['scan_type']} {r['day']}", parts, part_notes=notes))
    return hbar_chart(
        "Completeness: rows in the tables vs the ledger, lines accounted for",
        bars,
        share=True,
        grouped=True,
        series=["completeness", "line coverage"],
    )


# --- the sections ---------------------------------------------------------------------------

_OVERVIEW = (
    "SELECT '{table}' AS table_name, COUNT(*) AS row_count, MIN(date) AS first_date, "
    'MAX(date) AS last_date FROM "{table}"'
)
_OVERVIEW_SQL = f"""SELECT table_name, row_count, first_date, last_date
FROM (
{_union(_OVERVIEW)}
  UNION ALL
  SELECT 'dead_letter', COUNT(*), MIN(date), MAX(date) FROM dead_letter
)
ORDER BY table_name"""

_FILES_SQL = """SELECT scan_type, status, COUNT(*) AS files, SUM(lines) AS lines,
  SUM(rows_written) AS rows_written, SUM(dead_letters) AS dead_letters
FROM processed_files
GROUP BY scan_type, status
ORDER BY scan_type, status"""

_ROWS = "SELECT '{type}' AS scan_type, date, COUNT(*) AS row_count FROM \"{table}\" GROUP BY date"
_ROWS_BY_DATE_SQL = f"""WITH rows_by_date AS (
{_union(_ROWS)}
),
recent AS (SELECT DISTINCT date FROM rows_by_date ORDER BY date DESC NULLS FIRST LIMIT 60)
SELECT scan_type, IFNULL(CAST(date AS VARCHAR), '(no date)') AS day, row_count
FROM rows_by_date
WHERE date IN (SELECT date FROM recent) OR date IS NULL
ORDER BY date NULLS FIRST, scan_type"""

_OUTCOMES = "SELECT '{type}' AS scan_type, date, outcome FROM \"{table}\""
_OUTCOME_SQL = f"""WITH outcomes AS (
{_union(_OUTCOMES)}
),
recent AS (SELECT DISTINCT date FROM outcomes ORDER BY date DESC NULLS FIRST LIMIT 12)
SELECT
  scan_type,
  IFNULL(CAST(date AS VARCHAR), '(no date)') AS day,
  IFNULL(NULLIF(regexp_extract(outcome, '^[^/.:]*'), ''), '(none)') AS outcome_stage,
  COUNT(*) AS row_count,
  SUM(COUNT(*)) OVER (PARTITION BY scan_type, date) AS total_rows,
  COUNT(*) / SUM(COUNT(*)) OVER (PARTITION BY scan_type, date) AS share
FROM outcomes
WHERE date IN (SELECT date FROM recent) OR date IS NULL
GROUP BY scan_type, date, outcome_stage
ORDER BY date DESC NULLS LAST, scan_type, outcome_stage"""


def _countries_sql(family_filter: str) -> str:
    return f"""WITH by_country AS (
  SELECT
    country_name,
    SUM(count) AS row_count,
    SUM(IF(unexpected_count IS NULL, 0, count)) AS classified_rows,
    SUM(unexpected_count) AS unexpected_rows
  FROM derived.merged_reduced_scans
  WHERE {family_filter} AND domain <> 'CONTROL'
  GROUP BY country_name
)
SELECT
  country_name, row_count, classified_rows, unexpected_rows,
  unexpected_rows / NULLIF(classified_rows, 0) AS unexpected_share
FROM by_country
ORDER BY unexpected_share DESC NULLS LAST, row_count DESC, country_name
LIMIT 20"""


_HQ_BLOCKED = (
    "SELECT '{type}' AS scan_type, domain, server_country AS country FROM \"{table}\" "
    "WHERE is_known_blockpage AND domain_is_control IS NOT TRUE"
)
_BLOCKED_DOMAINS_SQL = f"""WITH blocked AS (
{_union(_HQ_BLOCKED, HQ_TYPES)}
  UNION ALL
  SELECT 'satellite' AS scan_type, domain, resolver_country AS country
  FROM "{SCAN_TABLES["satellite"].name}" AS s
  WHERE domain_is_control IS NOT TRUE AND EXISTS (
    SELECT 1 FROM UNNEST(s.answers) AS t(a)
    WHERE a.http_analysis_is_known_blockpage OR a.https_analysis_is_known_blockpage)
),
top_domains AS (
  SELECT domain, COUNT(*) AS total_rows, COUNT(DISTINCT country) AS countries
  FROM blocked GROUP BY domain
  ORDER BY total_rows DESC, domain LIMIT 20
)
SELECT b.domain, b.scan_type, COUNT(*) AS row_count, t.total_rows, t.countries
FROM blocked AS b JOIN top_domains AS t ON t.domain = b.domain
GROUP BY b.domain, b.scan_type, t.total_rows, t.countries
ORDER BY t.total_rows DESC, b.domain, b.scan_type"""

_HQ_PAGES = (
    "SELECT '{type}' AS scan_type, page_signature AS fingerprint, server_country AS country "
    'FROM "{table}" WHERE is_known_blockpage'
)
_SAT = SCAN_TABLES["satellite"].name
_FINGERPRINTS_SQL = f"""WITH pages AS (
{_union(_HQ_PAGES, HQ_TYPES)}
  UNION ALL
  SELECT 'satellite', a.http_analysis_page_signature, s.resolver_country
  FROM "{_SAT}" AS s, UNNEST(s.answers) AS t(a) WHERE a.http_analysis_is_known_blockpage
  UNION ALL
  SELECT 'satellite', a.https_analysis_page_signature, s.resolver_country
  FROM "{_SAT}" AS s, UNNEST(s.answers) AS t(a) WHERE a.https_analysis_is_known_blockpage
),
top_fingerprints AS (
  SELECT fingerprint, COUNT(*) AS total_rows, COUNT(DISTINCT country) AS countries
  FROM pages GROUP BY fingerprint
  ORDER BY total_rows DESC, fingerprint LIMIT 20
)
SELECT
  IFNULL(p.fingerprint, '(unnamed)') AS fingerprint, p.scan_type, COUNT(*) AS row_count,
  t.total_rows, t.countries
FROM pages AS p JOIN top_fingerprints AS t ON t.fingerprint IS NOT DISTINCT FROM p.fingerprint
GROUP BY p.fingerprint, p.scan_type, t.total_rows, t.countries
ORDER BY t.total_rows DESC, p.fingerprint, p.scan_type"""

_SATELLITE_CLASSES_SQL = f"""WITH classes AS (
  SELECT
    IFNULL(resolver_country, '(none)') AS resolver_country,
    IFNULL(NULLIF(regexp_extract(outcome, '^[^:]*'), ''), '(none)') AS answer_class
  FROM "{_SAT}"
),
top_countries AS (
  SELECT resolver_country, COUNT(*) AS total_rows FROM classes
  GROUP BY resolver_country ORDER BY total_rows DESC, resolver_country LIMIT 25
)
SELECT
  c.resolver_country, c.answer_class, COUNT(*) AS row_count, t.total_rows,
  COUNT(*) / t.total_rows AS share
FROM classes AS c JOIN top_countries AS t ON t.resolver_country = c.resolver_country
GROUP BY c.resolver_country, c.answer_class, t.total_rows
ORDER BY t.total_rows DESC, c.resolver_country, c.answer_class"""

_ENRICH = (
    "SELECT '{table}' AS table_name, date, COUNT(*) AS row_count, "
    "COUNT({prefix}_asn) AS with_asn, COUNT({prefix}_country) AS with_country "
    'FROM "{table}" GROUP BY date'
)
_ENRICH_UNION = "\n  UNION ALL\n".join(
    "  " + _ENRICH.format(table=spec.name, prefix="resolver" if t == "satellite" else "server")
    for t, spec in SCAN_TABLES.items()
)
_ENRICHMENT_SQL = f"""WITH coverage AS (
{_ENRICH_UNION}
),
recent AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY table_name ORDER BY date DESC NULLS FIRST) AS n
  FROM coverage
)
SELECT
  table_name, IFNULL(CAST(date AS VARCHAR), '(no date)') AS day, row_count, with_asn,
  with_country, with_asn / row_count AS asn_share, with_country / row_count AS country_share
FROM recent
WHERE n <= 10
ORDER BY table_name, date"""

_STARTS_SETUP = (
    "starts_with(IFNULL({col}, ''), 'setup/') OR starts_with(IFNULL({col}, ''), 'setup.') "
    "OR starts_with(IFNULL({col}, ''), 'read/system')"
)
_HQ_FATES = (
    "SELECT '{type}' AS scan_type, date, controls_failed, outcome, "
    'server_country AS country FROM "{table}"'
)
_DROPPED_SQL = f"""WITH hyperquack AS (
{_union(_HQ_FATES, HQ_TYPES)}
),
hyperquack_fates AS (
  SELECT scan_type,
    CASE
      WHEN date IS NULL THEN 'no_date'
      WHEN controls_failed IS NULL OR controls_failed THEN 'controls_failed'
      WHEN {_STARTS_SETUP.format(col="outcome")} THEN 'setup_outcome'
      WHEN country IS NULL THEN 'no_country'
      ELSE 'kept'
    END AS reason
  FROM hyperquack
),
https_capable_domains AS (
  SELECT DISTINCT s.source, s.domain
  FROM "{_SAT}" AS s
  WHERE EXISTS (
    SELECT 1 FROM UNNEST(s.answers) AS t(a)
    WHERE a.https_tls_cert_matches_domain AND a.https_tls_cert_has_trusted_ca)
),
satellite AS (
  SELECT source, date, retry, domain, domain_controls_failed, outcome, resolver_country,
    resolver_connect_error_rate, resolver_invalid_cert_rate, resolver_non_zero_rcode_rate,
    MAX(retry) OVER (PARTITION BY date, measurement_id) AS last_retry
  FROM "{_SAT}"
),
satellite_fates AS (
  SELECT 'satellite' AS scan_type,
    CASE
      WHEN s.date IS NULL THEN 'no_date'
      WHEN NOT (s.retry IS NULL OR s.retry = s.last_retry) THEN 'not_last_retry'
      WHEN h.domain IS NULL THEN 'domain_not_https_capable'
      WHEN s.domain_controls_failed IS NULL OR s.domain_controls_failed
        THEN 'domain_controls_failed'
      WHEN COALESCE(s.resolver_connect_error_rate > 0.75
          OR s.resolver_invalid_cert_rate > 0.75
          OR s.resolver_non_zero_rcode_rate > 0.75, FALSE) THEN 'bad_resolver'
      WHEN {_STARTS_SETUP.format(col="s.outcome")} THEN 'setup_outcome'
      WHEN s.resolver_country IS NULL THEN 'no_country'
      ELSE 'kept'
    END AS reason
  FROM satellite AS s
  LEFT JOIN https_capable_domains AS h ON h.source = s.source AND h.domain = s.domain
),
fates AS (
  SELECT scan_type, reason, COUNT(*) AS row_count FROM hyperquack_fates GROUP BY ALL
  UNION ALL
  SELECT scan_type, reason, COUNT(*) AS row_count FROM satellite_fates GROUP BY ALL
),
per_type AS (
  SELECT scan_type, SUM(row_count) AS base_rows,
    SUM(IF(reason = 'kept', row_count, 0)) AS kept
  FROM fates GROUP BY scan_type
)
SELECT
  f.reason, f.scan_type, f.row_count AS left_out,
  SUM(f.row_count) OVER (PARTITION BY f.reason) AS reason_total, p.base_rows, p.kept
FROM fates AS f JOIN per_type AS p ON p.scan_type = f.scan_type
WHERE f.reason <> 'kept'
ORDER BY reason_total DESC, f.reason, f.scan_type"""

_DEAD_LETTERS_SQL = """SELECT
  IFNULL(scan_type, 'unknown') AS scan_type, stage, error_class,
  COUNT(*) AS dead_letters,
  SUM(COUNT(*)) OVER (PARTITION BY stage, error_class) AS reason_total
FROM dead_letter
GROUP BY 1, 2, 3
ORDER BY reason_total DESC, stage, error_class, scan_type"""

_SCAN_DATE = (
    "TRY_CAST(regexp_extract(source, '(\\d{4}-\\d{2}-\\d{2})-\\d{2}-\\d{2}-\\d{2}$', 1) AS DATE)"
)
_BASE_ROWS = (
    "SELECT source, source_file, COUNT(*) AS row_count, "
    'COUNT(DISTINCT source_line) AS line_count FROM "{table}" GROUP BY source, source_file'
)
_COMPLETENESS_SQL = f"""WITH ledger AS (
  SELECT scan_type, source, file_key, status, lines, dead_letters, rows_written,
    {_SCAN_DATE} AS scan_date
  FROM processed_files
),
base_rows AS (
{_union(_BASE_ROWS)}
),
per_file AS (
  SELECT
    l.scan_type, l.scan_date, l.status, l.lines, l.dead_letters, l.rows_written,
    IFNULL(b.row_count, 0) AS table_rows, IFNULL(b.line_count, 0) AS table_lines
  FROM ledger AS l
  LEFT JOIN base_rows AS b
    ON b.source = l.source AND b.source || '/' || b.source_file = l.file_key
),
per_scan AS (
  SELECT
    scan_type, scan_date,
    COUNT(*) FILTER (WHERE status = 'ok') AS files_ok,
    COUNT(*) FILTER (WHERE status = 'rejected') AS files_rejected,
    SUM(lines) AS ledger_lines,
    SUM(IF(status = 'ok', rows_written, 0)) AS ledger_rows,
    SUM(table_rows) AS table_rows,
    SUM(IF(status = 'ok' AND rows_written > 0, lines, 0)) AS data_lines,
    SUM(IF(status = 'ok' AND rows_written > 0, table_lines + dead_letters, 0)) AS accounted_lines
  FROM per_file
  GROUP BY scan_type, scan_date
)
SELECT
  scan_type, IFNULL(CAST(scan_date AS VARCHAR), '(no date)') AS day, files_ok, files_rejected,
  ledger_lines, ledger_rows, table_rows, data_lines, accounted_lines,
  table_rows / NULLIF(ledger_rows, 0) AS completeness,
  accounted_lines / NULLIF(data_lines, 0) AS line_coverage
FROM per_scan
ORDER BY scan_date DESC NULLS LAST, scan_type
LIMIT 40"""

_FRESH = (
    "SELECT '{type}' AS scan_type, '{table}' AS table_name, date FROM \"{table}\" GROUP BY date"
)
_FRESHNESS_SQL = f"""WITH newest_scan AS (
  SELECT scan_type, MAX({_SCAN_DATE}) AS newest_scan_date
  FROM processed_files WHERE status = 'ok' GROUP BY scan_type
),
base_dates AS (
{_union(_FRESH)}
)
SELECT
  d.table_name, MAX(d.date) AS newest_date,
  MAX(IF(d.date < n.newest_scan_date, d.date, NULL)) AS newest_complete_date
FROM base_dates AS d LEFT JOIN newest_scan AS n ON n.scan_type = d.scan_type
GROUP BY d.table_name
ORDER BY d.table_name"""

_QUALITY = (
    "The queries service runs this check as services/queries/sql/{file} over its window; "
    "here it covers the whole warehouse."
)

SECTIONS: tuple[Section, ...] = (
    Section(
        "overview",
        "Tables",
        "Rows and date range of each base table.",
        _OVERVIEW_SQL,
        None,
    ),
    Section(
        "files",
        "Files processed",
        "The launcher's ledger (processed_files) per scan type and status.",
        _FILES_SQL,
        None,
        "no files processed yet",
    ),
    Section(
        "rows-by-date",
        "Rows by scan type and date",
        "Rows of each base table per measurement date (the 60 most recent dates).",
        _ROWS_BY_DATE_SQL,
        _draw_rows_by_date,
        "no rows in any scan table",
    ),
    Section(
        "outcome-shares",
        "Outcome shares by scan type and date",
        "Share of each outcome stage (the part of `outcome` before the first '/', '.' or "
        "':') among a scan type's rows of a date (the 12 most recent dates).",
        _OUTCOME_SQL,
        _draw_outcome_shares,
        "no rows in any scan table",
    ),
    Section(
        "countries-hyperquack",
        "Top countries by share of unexpected outcomes: Hyperquack",
        "From derived.merged_reduced_scans (echo, discard, HTTP, HTTPS; control probes left "
        "out): unexpected rows over rows with a class (unexpected_count not NULL). Rows "
        "without a server country are not in that table: see Enrichment coverage.",
        _countries_sql("source <> 'DNS'"),
        _draw_countries("Hyperquack: share of unexpected outcomes by server country"),
        "no Hyperquack rows in derived.merged_reduced_scans (it leaves out rows without a "
        "country: see Enrichment coverage)",
        ("derived.merged_reduced_scans",),
    ),
    Section(
        "countries-satellite",
        "Top countries by share of unexpected outcomes: Satellite",
        "From derived.merged_reduced_scans (DNS; control queries left out): unexpected "
        "rows over rows with a class; DNS timeouts have no class and are not counted.",
        _countries_sql("source = 'DNS'"),
        _draw_countries("Satellite: share of unexpected outcomes by resolver country"),
        "no Satellite rows in derived.merged_reduced_scans",
        ("derived.merged_reduced_scans",),
    ),
    Section(
        "dropped-rows",
        "Rows left out of merged_reduced_scans",
        "Base rows that do not reach derived.merged_reduced_scans, per scan type, each "
        "counted under the first rule it fails (services/queries/README.md, "
        '"merged_reduced_scans", has the rules): Hyperquack controls_failed, '
        "setup_outcome, no_country; Satellite not_last_retry, domain_not_https_capable, "
        "domain_controls_failed, bad_resolver, setup_outcome, no_country; no_date for rows "
        "without a date (no partition holds them). After each bar: the reason's total; "
        "base_rows and kept (rows that reach the table) are per scan type. "
        + _QUALITY.format(file="94_quality_dropped_rows.sql"),
        _DROPPED_SQL,
        _draw_dropped,
        "no rows left out: every base row reaches merged_reduced_scans (or there are none)",
        ("derived.merged_reduced_scans",),
    ),
    Section(
        "blocked-domains",
        "Top blocked domains",
        "Tested domains with a known blockpage: Hyperquack rows with is_known_blockpage, "
        "Satellite rows with an answer whose HTTP or HTTPS page is a known blockpage. After "
        "each bar: rows, and the distinct countries they come from.",
        _BLOCKED_DOMAINS_SQL,
        _draw_stacked_top("Domains with known blockpages (rows)", "domain"),
        "no known blockpages",
    ),
    Section(
        "fingerprints",
        "Blockpage fingerprints",
        "Signatures of known blockpages: Hyperquack rows (page_signature), Satellite answer "
        "pages (http/https_analysis_page_signature). After each bar: count and countries.",
        _FINGERPRINTS_SQL,
        _draw_stacked_top("Blockpage fingerprints (rows and answer pages)", "fingerprint"),
        "no known blockpages",
    ),
    Section(
        "satellite-classes",
        "Satellite answer classes by resolver country",
        "Share of each outcome class (outcome without its ':' detail) among the Satellite "
        "rows of a resolver country (the 25 countries with most rows).",
        _SATELLITE_CLASSES_SQL,
        _draw_satellite_classes,
        "no Satellite rows",
    ),
    Section(
        "enrichment",
        "Enrichment coverage",
        "Rows with an ASN and with a country (server IP for Hyperquack, resolver IP for "
        "Satellite), per table and date (10 most recent dates). "
        + _QUALITY.format(file="91_quality_enrichment.sql"),
        _ENRICHMENT_SQL,
        _draw_enrichment,
        "no rows in any scan table",
    ),
    Section(
        "dead-letters",
        "Dead letters per reason",
        "Input lines that could not become rows, per stage and error class, stacked by "
        "scan type. " + _QUALITY.format(file="93_quality_dead_letters.sql"),
        _DEAD_LETTERS_SQL,
        _draw_dead_letters,
        "no dead letters: every line read became rows",
    ),
    Section(
        "completeness",
        "Data quality: completeness",
        "Per scan type and scan date (from the scan's name): rows in the tables over rows "
        "the ledger says were written (1 = nothing lost or duplicated), and raw lines that "
        "became rows or dead letters (1 = every line accounted for); 40 most recent. "
        + _QUALITY.format(file="90_quality_completeness.sql"),
        _COMPLETENESS_SQL,
        _draw_completeness,
        "no files in the ledger",
    ),
    Section(
        "freshness",
        "Data quality: freshness",
        "Newest date with rows, and newest complete date (a later scan of that type has "
        "been processed), per base table. " + _QUALITY.format(file="92_quality_freshness.sql"),
        _FRESHNESS_SQL,
        None,
        "no rows in any scan table",
    ),
)


# --- running and rendering ------------------------------------------------------------------


def _value(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return v


def run_section(con: duckdb.DuckDBPyConnection, section: Section) -> list[Row]:
    """The section's SQL result as dicts (Decimals → int/float, dates → ISO text)."""
    cur = con.execute(section.sql)
    names = [d[0] for d in cur.description]
    return [{n: _value(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]


def _existing(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        f"{s}.{t}"
        for s, t in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database()"
        ).fetchall()
    }


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="null">NULL</td>'
    if isinstance(v, float):
        return f'<td class="num">{v:.6g}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    return f"<td>{escape(str(v))}</td>"


def _table(rows: list[Row]) -> str:
    head = "".join(f"<th>{escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(_cell(v) for v in r.values()) + "</tr>" for r in rows)
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _render_section(con: duckdb.DuckDBPyConnection, s: Section, existing: set[str]) -> str:
    missing = [t for t in s.needs if t not in existing]
    sql = f"<details><summary>SQL</summary><pre>{escape(s.sql)}</pre></details>"
    out = [
        f'<section id="{s.key}"><h2>{escape(s.title)}</h2><p class="about">{escape(s.about)}</p>'
    ]
    if missing:
        out.append(
            f'<p class="nodata">no data: table {escape(", ".join(missing))} does not exist '
            "(the queries service creates it: python -m services.queries --warehouse DIR)</p>"
        )
        out.append(sql + "</section>")
        return "".join(out)
    rows = run_section(con, s)
    if not rows:
        out.append(f'<p class="nodata">no data: {escape(s.empty)}</p>')
    elif s.draw is None:
        out.append(_table(rows))
    else:
        out.append(f'<div class="figure">{s.draw(rows)}</div>')
    out.append(sql)
    if rows and s.draw is not None:
        out.append(f"<details><summary>Data ({len(rows)} rows)</summary>{_table(rows)}</details>")
    out.append("</section>")
    return "".join(out)


_CSS = """
body{font-family:'DejaVu Sans',Arial,Helvetica,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#23395d;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:2px 0;font-size:13px;opacity:.9}
main{max-width:1000px;margin:0 auto;padding:16px}
nav{font-size:13px;margin:8px 0 16px 0;line-height:1.8}
nav a{color:#23395d;margin-right:14px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.12);
padding:14px 18px;margin:0 0 18px 0}
section h2{font-size:17px;margin:0 0 6px 0}
p.about{font-size:13px;color:#444;margin:0 0 10px 0}
p.nodata{font-size:14px;color:#8a4b00;background:#fff6e5;padding:10px;border-radius:4px}
details{font-size:12px;margin-top:6px}
summary{cursor:pointer;color:#23395d}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:11px}
table.data{border-collapse:collapse;font-size:12px;margin-top:4px}
table.data th,table.data td{border:1px solid #ddd;padding:2px 6px;text-align:left}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
table.data td.null{color:#999}
svg.chart{max-width:100%;height:auto}
"""


def build_html(con: duckdb.DuckDBPyConnection, warehouse: Path) -> str:
    """The whole page for the warehouse open on ``con``."""
    existing = _existing(con)
    nav = "".join(f'<a href="#{s.key}">{escape(s.title)}</a>' for s in SECTIONS)
    body = "".join(_render_section(con, s, existing) for s in SECTIONS)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Censored Planet warehouse report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<header><h1>Censored Planet warehouse report</h1>"
        f"<p>Warehouse: {escape(str(warehouse))}</p>"
        "<p>Every number below comes from the SQL shown under its chart "
        "(DuckDB, read-only).</p></header>"
        f"<main><nav>{nav}</nav>{body}</main></body></html>\n"
    )
