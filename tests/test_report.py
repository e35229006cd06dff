"""The warehouse report: text summary, and the HTML page rendered in headless Chromium.

The warehouses are built from the generated sample scans by the real launcher and queries
service (subprocesses): one enriched with CAIDA-format IP metadata written here (every
routed /8 to one of eight test ASNs with a country), so Hyperquack rows get countries, and
one without, as the demo was before it had IP metadata. The page's numbers are checked
against SQL written independently in this file, and the quality sections against the
queries service's own checks.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pytest

from services.beam_launcher.report import summary as report

REPO = Path(__file__).resolve().parents[1]
HQ = ("echo", "discard", "http", "https")
SCAN_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})-\d{2}-\d{2}-\d{2}$")
# Test ASNs (documentation range) → organisation country.
TEST_ASNS = {64496 + i: cc for i, cc in enumerate(("RU", "IR", "CN", "TR", "DE", "US", "BR", "IN"))}


def _gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def write_ip_metadata(root: Path, scan_names: list[str]) -> None:
    """CAIDA-format files (ReferenceCatalog layout) dated on every scan date."""
    pfx = [f"{o}.0.0.0\t8\t{64496 + o % 8}" for o in range(1, 224)]
    org = ["# format:org_id|changed|org_name|country|source"]
    org += [f"ORG-{asn}||Test Network {cc}|{cc}|TEST" for asn, cc in TEST_ASNS.items()]
    org += ["# format:aut|changed|aut_name|org_id|opaque_id|source"]
    org += [f"{asn}||TESTNET-{cc}|ORG-{asn}||TEST" for asn, cc in TEST_ASNS.items()]
    types = [f"{asn}|test|Transit/Access" for asn in TEST_ASNS]
    for name in scan_names:
        m = SCAN_DATE.search(name)
        assert m, name
        y, mo, d = m.groups()
        rv = root / "routeviews" / y / mo / f"routeviews-rv2-{y}{mo}{d}-0000.pfx2as.gz"
        rv.parent.mkdir(parents=True, exist_ok=True)
        rv.write_bytes(_gz(pfx))
        for folder, name_ in (
            ("as-organizations", f"{y}{mo}{d}.as-org2info.txt.gz"),
            ("as-classifications", f"{y}{mo}{d}.as2types.txt.gz"),
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / name_).write_bytes(_gz(org if folder == "as-organizations" else types))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stderr[-3000:]}"
    return proc


@dataclass
class Warehouse:
    path: Path
    quality: dict[str, Any] = field(default_factory=dict)  # the queries service's checks
    before_queries: Path | None = None  # a copy taken before the queries service ran
    dropped: dict[str, Any] = field(default_factory=dict)  # its summary's dropped_rows

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.path / "warehouse.duckdb"), read_only=True) as con:
            return con.execute(query).fetchall()


def _build(root: Path, with_ip_metadata: bool) -> Warehouse:
    sample = root / "sample"
    _run(
        "sampledata",
        *("--out", str(sample), "--size", "40", "--bad-line-ratio", "0.05"),
    )
    scans = sample / "scans"
    wh = root / "warehouse"
    args = ["--input", str(scans), "--warehouse", str(wh)]
    if with_ip_metadata:
        write_ip_metadata(root / "ipmeta", sorted(p.name for p in scans.iterdir()))
        args += ["--ip-metadata", str(root / "ipmeta")]
    _run("services.beam_launcher", *args)
    before = root / "before-queries"
    before.mkdir()
    shutil.copy(wh / "warehouse.duckdb", before / "warehouse.duckdb")
    out = _run("services.queries", "--warehouse", str(wh), "--full")
    summary = json.loads(out.stdout)
    return Warehouse(wh, summary["quality"], before, summary["dropped_rows"])


@pytest.fixture(scope="module")
def enriched(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    return _build(tmp_path_factory.mktemp("enriched"), with_ip_metadata=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    return _build(tmp_path_factory.mktemp("plain"), with_ip_metadata=False)


# --- reading the page back ------------------------------------------------------------------


@dataclass
class Chart:
    title: str = ""
    marks: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PageSection:
    key: str
    charts: list[Chart] = field(default_factory=list)
    nodata: str = ""
    sql: str = ""
    tables: list[list[list[str]]] = field(default_factory=list)


class PageParser(HTMLParser):
    """Sections with their charts (SVG title, marks), 'no data' text, SQL and tables."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, PageSection] = {}
        self.cur: PageSection | None = None
        self.chart: Chart | None = None
        self.stack: list[str] = []
        self.capture: str | None = None
        self.text = ""
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href", "action", "srcset", "xlink:href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "section":
            self.cur = PageSection(a["id"])
            self.sections[a["id"]] = self.cur
        elif tag == "svg" and self.cur is not None:
            self.chart = Chart()
            self.cur.charts.append(self.chart)
        elif tag == "rect" and self.chart is not None and "mark" in a.get("class", "").split():
            self.chart.marks.append(a)
        elif tag == "title" and self.chart is not None and not self.chart.title:
            self.capture, self.text = "svgtitle", ""
        elif tag == "p" and a.get("class") == "nodata":
            self.capture, self.text = "nodata", ""
        elif tag == "pre":
            self.capture, self.text = "sql", ""
        elif tag == "table" and self.cur is not None:
            self.cur.tables.append([])
        elif tag == "tr" and self.cur is not None and self.cur.tables:
            self.cur.tables[-1].append([])
        elif tag in ("td", "th"):
            self.capture, self.text = "cell", ""
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.capture == "svgtitle" and tag == "title" and self.chart is not None:
            self.chart.title = self.text
        elif self.capture == "nodata" and tag == "p" and self.cur is not None:
            self.cur.nodata = self.text
        elif self.capture == "sql" and tag == "pre" and self.cur is not None:
            self.cur.sql = self.text
        elif self.capture == "cell" and tag in ("td", "th") and self.cur is not None:
            self.cur.tables[-1][-1].append(self.text)
        if tag in ("title", "p", "pre", "td", "th"):
            self.capture = None
        if tag == "svg":
            self.chart = None
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.capture:
            self.text += data


def parse_page(html: str) -> PageParser:
    p = PageParser()
    p.feed(html)
    p.close()
    return p


def marks(page: PageParser, key: str) -> dict[tuple[str, str], float]:
    (chart,) = page.sections[key].charts
    return {(m["data-label"], m["data-series"]): float(m["data-value"]) for m in chart.marks}


def write_report(wh: Path, out: Path) -> PageParser:
    assert report.main(["--warehouse", str(wh), "--html", str(out)]) == 0
    return parse_page(out.read_text(encoding="utf-8"))


# --- the page and its numbers ----------------------------------------------------------------


CHART_SECTIONS = (
    "rows-by-date",
    "outcome-shares",
    "countries-hyperquack",
    "countries-satellite",
    "blocked-domains",
    "fingerprints",
    "satellite-classes",
    "enrichment",
    "dead-letters",
    "completeness",
    "dropped-rows",
)


def test_html_has_a_chart_with_marks_and_title_per_section(enriched: Warehouse, tmp_path) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    for key in CHART_SECTIONS:
        sec = page.sections[key]
        assert sec.nodata == "", (key, sec.nodata)
        assert len(sec.charts) == 1, key
        chart = sec.charts[0]
        assert chart.title, key
        assert [m for m in chart.marks if float(m["data-value"]) > 0], key
        assert "SELECT" in sec.sql, key
    # Offline: no external resource, no script.
    html = (tmp_path / "r.html").read_text()
    assert all(u.startswith("#") for u in page.urls), page.urls
    assert "<script" not in html and "url(" not in html and "@import" not in html


def test_rows_by_date_equal_independent_sql(enriched: Warehouse, tmp_path) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    want = {}
    for t in (*HQ, "satellite"):
        for day, n in enriched.sql(f"SELECT date, count(*) FROM {t}_scan GROUP BY date"):
            want[(day.isoformat(), t)] = float(n)
    assert marks(page, "rows-by-date") == want


def test_outcome_shares_equal_independent_sql(enriched: Warehouse, tmp_path) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    counts: Counter[tuple[str, str]] = Counter()
    totals: Counter[str] = Counter()
    for t in (*HQ, "satellite"):
        sep = "." if t == "satellite" else "/"
        for day, outcome, n in enriched.sql(
            f"SELECT date, outcome, count(*) FROM {t}_scan GROUP BY ALL"
        ):
            label = f"{t} {day.isoformat()}"
            counts[(label, outcome.split(sep)[0].split(":")[0])] += n
            totals[label] += n
    got = marks(page, "outcome-shares")
    assert set(got) == set(counts)
    for k, n in counts.items():
        assert got[k] == pytest.approx(n / totals[k[0]], abs=1e-12)


def _country_shares(wh: Warehouse, dns: bool) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    op = "=" if dns else "<>"
    for name, classified, unexpected in wh.sql(
        "SELECT country_name, sum(CASE WHEN unexpected_count IS NULL THEN 0 ELSE count END), "
        f"sum(unexpected_count) FROM derived.merged_reduced_scans WHERE source {op} 'DNS' "
        "AND domain <> 'CONTROL' GROUP BY country_name"
    ):
        out[name] = (float(unexpected or 0) / classified if classified else 0.0, int(classified))
    return out


def test_country_shares_for_both_families_equal_independent_sql(
    enriched: Warehouse, tmp_path
) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    for key, dns in (("countries-hyperquack", False), ("countries-satellite", True)):
        want = _country_shares(enriched, dns)
        assert len(want) >= 3, (key, want)  # the test IP metadata gives several countries
        got = marks(page, key)
        assert len(got) == min(20, len(want))
        for (country, series), share in got.items():
            assert series == "unexpected"
            assert share == pytest.approx(want[country][0], abs=1e-12)
        # The note after each bar names the classified rows the share is of.
        notes = page.sections[key].tables[0]
        header = notes[0]
        for row in notes[1:]:
            r = dict(zip(header, row, strict=True))
            assert int(r["classified_rows"]) == want[r["country_name"]][1]
    # Hyperquack countries are the ones the test IP metadata gives.
    names = dict(enriched.sql("SELECT country_code, country_name FROM derived.country_names"))
    hq = {c for c, _ in marks(page, "countries-hyperquack")}
    assert hq <= {names[cc] for cc in TEST_ASNS.values()}


def test_blocked_domains_and_fingerprints_equal_independent_sql(
    enriched: Warehouse, tmp_path
) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    domains: Counter[tuple[str, str]] = Counter()
    prints: Counter[tuple[str, str]] = Counter()
    for t in HQ:
        for d, sig in enriched.sql(
            f"SELECT domain, page_signature FROM {t}_scan "
            "WHERE is_known_blockpage AND NOT domain_is_control"
        ):
            domains[(d, t)] += 1
            prints[(sig, t)] += 1
    for d, answers in enriched.sql("SELECT domain, answers FROM satellite_scan"):
        for a in answers:
            for kind in ("http", "https"):
                if a[f"{kind}_analysis_is_known_blockpage"]:
                    prints[(a[f"{kind}_analysis_page_signature"], "satellite")] += 1
        if any(
            a["http_analysis_is_known_blockpage"] or a["https_analysis_is_known_blockpage"]
            for a in answers
        ):
            domains[(d, "satellite")] += 1

    def top(c: Counter[tuple[str, str]]) -> dict[tuple[str, str], float]:
        per: Counter[str] = Counter()
        for (name, _), n in c.items():
            per[name] += n
        keep = {n for n, _ in sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:20]}
        return {k: float(v) for k, v in c.items() if k[0] in keep}

    assert marks(page, "blocked-domains") == top(domains)
    assert marks(page, "fingerprints") == top(prints)
    assert any(s == "satellite" for _, s in marks(page, "fingerprints"))


def test_satellite_classes_enrichment_and_dead_letters_equal_independent_sql(
    enriched: Warehouse, tmp_path
) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    rows = enriched.sql("SELECT resolver_country, outcome FROM satellite_scan")
    per_country = Counter(c or "(none)" for c, _ in rows)
    classes = Counter((c or "(none)", o.split(":")[0]) for c, o in rows)
    got = marks(page, "satellite-classes")
    assert set(got) == set(classes)
    for k, n in classes.items():
        assert got[k] == pytest.approx(n / per_country[k[0]], abs=1e-12)

    want_cov = {}
    for t in (*HQ, "satellite"):
        p = "resolver" if t == "satellite" else "server"
        for day, n, asn, cc in enriched.sql(
            f"SELECT date, count(*), count({p}_asn), count({p}_country) FROM {t}_scan GROUP BY date"
        ):
            want_cov[(f"{t}_scan {day.isoformat()}", "with ASN")] = asn / n
            want_cov[(f"{t}_scan {day.isoformat()}", "with country")] = cc / n
    got_cov = marks(page, "enrichment")
    assert got_cov.keys() == want_cov.keys()
    for k, v in want_cov.items():
        assert got_cov[k] == pytest.approx(v, abs=1e-12)
    # With the test IP metadata every Hyperquack row has a country.
    assert all(v == 1.0 for (label, s), v in got_cov.items() if s == "with country")

    dl = {
        (f"{stage}: {cls}", st): float(n)
        for st, stage, cls, n in enriched.sql(
            "SELECT scan_type, stage, error_class, count(*) FROM dead_letter GROUP BY ALL"
        )
    }
    assert dl and marks(page, "dead-letters") == dl


def test_quality_sections_equal_the_queries_service_checks(enriched: Warehouse, tmp_path) -> None:
    page = write_report(enriched.path, tmp_path / "r.html")
    q = enriched.quality
    comp = marks(page, "completeness")
    want = {}
    for r in q["completeness"]:
        label = f"{r['scan_type']} {r['date']}"
        if r["completeness"] is not None:
            want[(label, "completeness")] = r["completeness"]
        if r["line_coverage"] is not None:
            want[(label, "line coverage")] = r["line_coverage"]
    assert comp.keys() == want.keys()
    for k, v in want.items():
        assert comp[k] == pytest.approx(v, abs=1e-12)

    cov = marks(page, "enrichment")
    for r in q["enrichment"]:
        series = "with ASN" if r["field"] == "asn" else "with country"
        assert cov[(f"{r['table']} {r['date']}", series)] == pytest.approx(r["ratio"], abs=1e-12)

    dead: Counter[tuple[str, str]] = Counter()
    for r in q["dead_letters"]:
        dead[(f"{r['stage']}: {r['error_class']}", r["scan_type"])] += r["count"]
    assert marks(page, "dead-letters") == {k: float(v) for k, v in dead.items()}

    (table,) = page.sections["freshness"].tables
    header, *body = table
    shown = {r[0]: dict(zip(header, r, strict=True)) for r in body}
    for r in q["freshness"]:
        if r["table"] == "merged_reduced_scans":
            continue
        assert shown[r["table"]]["newest_date"] == r["newest_date"]
        assert shown[r["table"]]["newest_complete_date"] == (r["newest_complete_date"] or "NULL")


_SETUP = ("setup/", "setup.", "read/system")
DERIVED_SOURCE = {"echo": "ECHO", "discard": "DISCARD", "http": "HTTP", "https": "HTTPS"}


def _fates(wh: Warehouse) -> dict[str, Counter[str]]:
    """Per scan type, base rows by the first merged_reduced_scans rule they fail ('kept'
    when none), computed in Python from the rules in services/queries/README.md."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for t in HQ:
        for day, failed, outcome, country in wh.sql(
            f"SELECT date, controls_failed, outcome, server_country FROM {t}_scan"
        ):
            if day is None:
                reason = "no_date"
            elif failed is not False:
                reason = "controls_failed"
            elif (outcome or "").startswith(_SETUP):
                reason = "setup_outcome"
            else:
                reason = "no_country" if country is None else "kept"
            out[t][reason] += 1
    rows = wh.sql(
        "SELECT source, date, measurement_id, retry, domain, domain_controls_failed, outcome, "
        "resolver_country, resolver_connect_error_rate, resolver_invalid_cert_rate, "
        "resolver_non_zero_rcode_rate, answers FROM satellite_scan"
    )
    last: dict[tuple[Any, str], int] = {}
    capable: set[tuple[str, str]] = set()
    for source, day, mid, retry, domain, *_, answers in rows:
        if retry is not None:
            last[(day, mid)] = max(retry, last.get((day, mid), retry))
        if any(
            a["https_tls_cert_matches_domain"] and a["https_tls_cert_has_trusted_ca"]
            for a in answers
        ):
            capable.add((source, domain))
    for source, day, mid, retry, domain, dcf, outcome, country, *rates, _ in rows:
        if day is None:
            reason = "no_date"
        elif retry is not None and retry != last[(day, mid)]:
            reason = "not_last_retry"
        elif (source, domain) not in capable:
            reason = "domain_not_https_capable"
        elif dcf is not False:
            reason = "domain_controls_failed"
        elif any(r is not None and r > 0.75 for r in rates):
            reason = "bad_resolver"
        elif (outcome or "").startswith(_SETUP):
            reason = "setup_outcome"
        else:
            reason = "no_country" if country is None else "kept"
        out["satellite"][reason] += 1
    return out


@pytest.mark.parametrize("which", ["enriched", "plain"])
def test_dropped_rows_equal_independent_count_and_the_queries_service(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    wh: Warehouse = request.getfixturevalue(which)
    page = write_report(wh.path, tmp_path / "r.html")
    fates = _fates(wh)
    want = {
        (reason, t): float(n)
        for t, c in fates.items()
        for reason, n in c.items()
        if reason != "kept"
    }
    got = marks(page, "dropped-rows")
    assert got and got == want
    assert page.sections["dropped-rows"].charts[0].title == (
        "Rows left out of merged_reduced_scans, by reason and scan type"
    )
    # The same numbers as the queries service's own check (its summary's dropped_rows).
    service = {
        (reason, t): float(n) for t, e in wh.dropped.items() for reason, n in e["dropped"].items()
    }
    assert got == service
    # The data table under the chart: base rows and kept rows per scan type; kept rows are
    # what merged_reduced_scans holds.
    derived = dict(
        wh.sql("SELECT source, SUM(count) FROM derived.merged_reduced_scans GROUP BY source")
    )
    (table,) = page.sections["dropped-rows"].tables
    header, *body = table
    shown = {}
    for row in body:
        r = dict(zip(header, row, strict=True))
        shown[r["scan_type"]] = (int(r["base_rows"]), int(r["kept"]))
    for t, c in fates.items():
        if t not in shown:  # nothing of this scan type was left out
            continue
        assert (
            shown[t]
            == (sum(c.values()), c["kept"])
            == (
                wh.dropped[t]["base_rows"],
                wh.dropped[t]["kept"],
            )
        )
        assert c["kept"] == derived.get(DERIVED_SOURCE.get(t, "DNS"), 0), t
    # Without IP metadata, every Hyperquack row that passes the other rules lacks a country.
    no_country = {t for (reason, t) in got if reason == "no_country"}
    assert no_country == (set(HQ) if which == "plain" else set())


def test_without_ip_metadata_hyperquack_countries_say_no_data(plain: Warehouse, tmp_path) -> None:
    page = write_report(plain.path, tmp_path / "r.html")
    sec = page.sections["countries-hyperquack"]
    assert sec.charts == [] and sec.nodata.startswith("no data: no Hyperquack rows")
    assert "SELECT" in sec.sql  # the query that found nothing is still shown
    assert marks(page, "countries-satellite")  # Satellite rows carry resolver countries
    cov = marks(page, "enrichment")
    assert {v for (label, s), v in cov.items() if not label.startswith("satellite")} == {0.0}
    charts = sum(1 for s in page.sections.values() if s.charts)
    assert charts >= 6


def test_before_the_queries_service_ran_derived_sections_say_so(plain: Warehouse, tmp_path) -> None:
    assert plain.before_queries is not None
    page = write_report(plain.before_queries, tmp_path / "r.html")
    for key in ("countries-hyperquack", "countries-satellite", "dropped-rows"):
        sec = page.sections[key]
        assert sec.charts == []
        assert "derived.merged_reduced_scans does not exist" in sec.nodata
    assert marks(page, "rows-by-date")


def test_empty_warehouse_every_section_says_no_data(plain: Warehouse, tmp_path: Path) -> None:
    # The launcher's and the queries service's tables, without rows.
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute(f"ATTACH '{plain.path / 'warehouse.duckdb'}' AS src (READ_ONLY)")
        con.execute("CREATE SCHEMA derived")
        for schema, table in con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = 'src'"
        ).fetchall():
            con.execute(f"CREATE TABLE {schema}.{table} AS FROM src.{schema}.{table} LIMIT 0")
    page = write_report(tmp_path, tmp_path / "r.html")
    for key in CHART_SECTIONS:
        sec = page.sections[key]
        assert sec.charts == [] and sec.nodata.startswith("no data"), key


def test_report_is_deterministic_and_text_mode_unchanged(
    enriched: Warehouse, tmp_path, capsys
) -> None:
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    write_report(enriched.path, a)
    write_report(enriched.path, b)
    assert a.read_bytes() == b.read_bytes()
    capsys.readouterr()
    assert report.main(["--warehouse", str(enriched.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Warehouse: ") and "HTML report" not in out
    assert "echo_scan" in out and "derived.merged_reduced_scans" in out
    assert not list(tmp_path.glob(".*.html.*"))  # no temporary files left


def test_missing_warehouse_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert report.main(["--warehouse", str(tmp_path / "nope"), "--html", "x.html"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("report: no warehouse database at ") and err.count("\n") == 1
    assert not Path("x.html").exists()


# --- headless Chromium ---------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium not found on PATH under CI=true (.ci/install-chromium.sh)")
    pytest.skip("chromium not found on PATH (Debian package 'chromium'; .ci/install-chromium.sh)")


@pytest.fixture
def browser_profile() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="cp-report-chromium-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _chromium_run(exe: str, profile: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _hex(rgb: str) -> tuple[int, int, int]:
    return (int(rgb[1:3], 16), int(rgb[3:5], 16), int(rgb[5:7], 16))


def test_chromium_screenshot_shows_the_charts(
    enriched: Warehouse, tmp_path: Path, browser_profile: str
) -> None:
    exe = _chromium()
    html = tmp_path / "report.html"
    write_report(enriched.path, html)
    png = tmp_path / "out.png"
    proc = _chromium_run(
        exe, browser_profile, f"--screenshot={png}", "--window-size=1400,4000", html.as_uri()
    )
    assert png.is_file() and png.stat().st_size > 0, proc.stderr[-2000:]
    from PIL import Image  # Pillow is locked (a dependency of apache-beam)

    with Image.open(png) as im:
        assert im.size == (1400, 4000)
        found = im.convert("RGB").getcolors(maxcolors=1 << 24)
    assert found is not None
    colours: Counter[tuple[int, int, int]] = Counter({c: n for n, c in found})
    background = colours.most_common(1)[0][1]
    assert background < 0.8 * 1400 * 4000, "screenshot is mostly one colour (blank page?)"
    assert len(colours) > 200
    # The bars: solid areas in the chart colours (scan types, expected green, header blue).
    for name, rgb in (
        ("echo", "#4e79a7"),
        ("discard", "#76b7b2"),
        ("http", "#f28e2b"),
        ("https", "#e15759"),
        ("satellite", "#b07aa1"),
        ("expected", "#59a14f"),
        ("header", "#23395d"),
    ):
        assert colours[_hex(rgb)] > 300, f"no {name} colour {rgb} in the screenshot"


def test_chromium_dom_has_every_chart(
    enriched: Warehouse, tmp_path: Path, browser_profile: str
) -> None:
    exe = _chromium()
    html = tmp_path / "report.html"
    static = write_report(enriched.path, html)
    proc = _chromium_run(exe, browser_profile, "--dump-dom", html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = parse_page(proc.stdout)
    charts = [k for k, s in dom.sections.items() if s.charts]
    assert len(charts) >= 6 and set(CHART_SECTIONS) <= set(charts)
    for key in CHART_SECTIONS:
        (chart,) = dom.sections[key].charts
        assert chart.title == static.sections[key].charts[0].title
        assert marks(dom, key) == marks(static, key)


def test_cli_subprocess_prints_the_path(enriched: Warehouse, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "report.html"
    proc = _run(
        "services.beam_launcher.report", "--warehouse", str(enriched.path), "--html", str(out)
    )
    assert proc.stdout.rstrip().splitlines()[-1] == f"HTML report: {out.resolve()}"
    assert out.is_file()


def test_countries_of_the_test_metadata_reach_the_base_tables(enriched: Warehouse) -> None:
    by_family: dict[str, set[str]] = defaultdict(set)
    for src, cc in enriched.sql(
        "SELECT DISTINCT source, country_name FROM derived.merged_reduced_scans"
    ):
        by_family["DNS" if src == "DNS" else "HQ"].add(cc)
    assert by_family["HQ"] and by_family["DNS"]
