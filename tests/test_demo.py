"""The demo a new user runs: ``make run`` (small sample) as a real subprocess.

Its derived table must hold rows of every generated scan, and of both families
(Hyperquack and Satellite) on every generated date, with countries, because the sample's
synthetic CAIDA files are synced through the routeviews service and the launcher enriches
with them; and the same launcher without IP metadata must say, in one WARNING line, what
will be missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import duckdb
import pytest

import sampledata as ss

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SIZE = 20
DERIVED_NAMES = {"echo": "ECHO", "discard": "DISCARD", "http": "HTTP", "https": "HTTPS"}


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object printed in ``text`` (the stages' summaries)."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
        i = end
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    var = tmp_path_factory.mktemp("demo") / "var"
    proc = subprocess.run(
        ["make", "-s", "run", f"VAR={var}", f"SAMPLE_SIZE={SAMPLE_SIZE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return var, proc


def _query(warehouse: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(warehouse / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.mark.slow
def test_demo_derived_table_has_every_scan_with_countries(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    var, proc = demo
    assert "ip_metadata_not_configured" not in proc.stderr
    # The IP metadata came through the routeviews service into var/ip-metadata.
    for folder in ("routeviews", "as-organizations", "as-classifications"):
        assert any((var / "ip-metadata" / folder).rglob("*.gz")), folder

    expected = {
        (DERIVED_NAMES.get(s.scan_type, "DNS"), s.start.astimezone(UTC).date())
        for s in ss.DEFAULT_SCANS
    }
    assert {name for name, _ in expected} == {"ECHO", "DISCARD", "HTTP", "HTTPS", "DNS"}
    wh = var / "warehouse"
    rows = _query(
        wh,
        "SELECT source, date, SUM(count), COUNT(DISTINCT country_name) "
        "FROM derived.merged_reduced_scans GROUP BY 1, 2",
    )
    got = {(source, day): (n, countries) for source, day, n, countries in rows}
    for key in sorted(expected):
        assert key in got, f"no {key[0]} rows for {key[1]} in merged_reduced_scans"
        assert got[key][0] > 0 and got[key][1] >= 2, (key, got[key])
    # Every generated date has both families in the derived table (the sample's companion
    # scans put a Satellite scan on each Hyperquack date and vice versa), and the derived
    # table has no other dates.
    generated_dates = {s.start.astimezone(UTC).date() for s in ss.DEFAULT_SCANS}
    families: dict[Any, set[str]] = {}
    for source, day in got:
        families.setdefault(day, set()).add("Satellite" if source == "DNS" else "Hyperquack")
    assert set(families) == generated_dates
    for day in sorted(generated_dates):
        assert families[day] == {"Hyperquack", "Satellite"}, f"{day}: only {families[day]}"
    # Every base (scan type, date) reaches the derived table too.
    for table, name in [
        *((f"{t}_scan", n) for t, n in DERIVED_NAMES.items()),
        ("satellite_scan", "DNS"),
    ]:
        for (day,) in _query(wh, f"SELECT DISTINCT date FROM {table}"):
            assert (name, day) in got, (table, day)
    countries = _query(
        wh,
        "SELECT source = 'DNS', COUNT(DISTINCT country_name) FROM derived.merged_reduced_scans "
        "GROUP BY 1",
    )
    assert dict(countries) and min(dict(countries).values()) >= 3
    assert dict(countries)[False] >= 8  # Hyperquack servers in many countries

    # The queries summary says what was left out, per scan type: no Hyperquack row lost
    # for want of a country, and every scan type keeps rows.
    summaries = [o for o in _json_objects(proc.stdout) if "dropped_rows" in o]
    assert len(summaries) == 1
    dropped = summaries[0]["dropped_rows"]
    assert set(dropped) == {"echo", "discard", "http", "https", "satellite"}
    for scan_type, t in dropped.items():
        assert t["kept"] > 0 and t["base_rows"] == t["kept"] + sum(t["dropped"].values())
        assert "no_country" not in t["dropped"], scan_type


@pytest.mark.slow
def test_launcher_without_ip_metadata_warns_once(
    demo: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    var, _ = demo
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "services.beam_launcher", "--scan-type", "echo"),
            *("--input", str(var / "bucket" / "scans"), "--require-markers"),
            *("--resources", str(var / "resources" / "current")),
            *("--warehouse", str(tmp_path / "wh")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LOG_LEVEL": "INFO"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stderr.splitlines()]
    warnings = [x for x in lines if x["message"] == "ip_metadata_not_configured"]
    assert len(warnings) == 1
    w = warnings[0]
    assert w["severity"] == "WARNING"
    assert "country" in w["missing"] and "merged_reduced_scans" in w["effect"]
    assert "--ip-metadata" in w["fix"]
    [(rows, with_country)] = _query(
        tmp_path / "wh", "SELECT COUNT(*), COUNT(server_country) FROM echo_scan"
    )
    assert rows > 0 and with_country == 0
