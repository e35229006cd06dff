"""End-to-end Satellite runs on the real scans: joins, skipped files, reruns, isolation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from services.beam_launcher.run import RunConfig, RunFailed, run
from tests.conftest import (
    REAL_RESOURCES,
    REAL_SAT_SCANS,
    build_real_satellite_input,
    require_real,
)
from tests.test_pipeline_local import good_lines, write_scan

pytestmark = pytest.mark.slow


def q(wh: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def cfg(inp: Path, wh: Path, **kw: object) -> RunConfig:
    return RunConfig(input=str(inp), warehouse=str(wh), resources=str(REAL_RESOURCES), **kw)


@pytest.fixture(scope="module")
def sat_wh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sat")
    build_real_satellite_input(base / "in")
    run(cfg(base / "in", base / "wh"))
    return base / "wh"


def test_row_counts_per_version(sat_wh: Path) -> None:
    got = dict(q(sat_wh, "SELECT source, count(*) FROM satellite_scan GROUP BY 1"))
    assert got == {
        REAL_SAT_SCANS["satellite_v1"]: 8,
        REAL_SAT_SCANS["satellite_v2.1"]: 16,
        REAL_SAT_SCANS["satellite_v2.2"]: 20,
    }
    assert q(sat_wh, "SELECT count(*) FROM dead_letter") == [(0,)]
    assert q(sat_wh, "SELECT count(*) FROM satellite_scan WHERE domain = 'a.root-servers.net'") == [
        (6,)
    ]


def test_documented_sql_gives_the_seeds_v21_success(sat_wh: Path) -> None:
    # docs/tables.md: the seed's v2.1 `success` (not connect_error) from our rows, in
    # BigQuery SQL, run here through the queries service's DuckDB translation.
    from services.beam_launcher.warehouse.schemas import SEED_V21_SUCCESS_SQL
    from services.queries.dialect import parse_bigquery, to_duckdb

    (tree,) = parse_bigquery(SEED_V21_SUCCESS_SQL)
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{sat_wh / 'warehouse.duckdb'}' AS base (READ_ONLY)")
        got = dict(con.execute(to_duckdb(tree)).fetchall())
        lines = dict(
            con.execute(
                "SELECT DISTINCT measurement_id, source_line FROM base.satellite_scan "
                "WHERE source_file = 'results.json' AND source = ?",
                [REAL_SAT_SCANS["satellite_v2.1"]],
            ).fetchall()
        )
    raw = (require_real() / "satellite_v2.1" / "results.json").read_text().splitlines()
    assert len(lines) == 4
    expected = {mid: not json.loads(raw[n - 1])["connect_error"] for mid, n in lines.items()}
    assert {mid: got[mid] for mid in lines} == expected
    assert sorted(expected.values()) == [False, True, True, True]


def test_unknown_file_is_recorded_as_skipped(sat_wh: Path) -> None:
    rows = q(sat_wh, "SELECT file_key, status, reason FROM processed_files WHERE status <> 'ok'")
    assert len(rows) == 1
    key, status, reason = rows[0]
    assert key.endswith("/resolver_info.json") and status == "skipped" and reason


def test_resolver_tags_answers_and_page_fetches_are_joined(sat_wh: Path) -> None:
    resolvers = q(
        sat_wh,
        "SELECT DISTINCT resolver_name, resolver_country FROM satellite_scan "
        "WHERE resolver_ip = '208.67.222.222'",
    )
    assert resolvers == [("dns.umbrella.com.", "US")]
    row = q(
        sat_wh,
        "SELECT answers[1].ip, answers[1].https_tls_cert_common_name, "
        "answers[1].http_response_status, outcome, outcome_rule_id FROM satellite_scan "
        "WHERE domain = '9gag.com' AND resolver_ip = '116.63.159.66'",
    )
    assert row == [
        (
            "31.13.92.35",
            "*.facebook.com",
            "400 default_vip_400",
            "tls.baddomain:*.facebook.com",
            "TLS-BADDOMAIN",
        )
    ]
    # v1: answer tags from tagged_answers.json, confidence computed by post-processing.
    v1 = q(
        sat_wh,
        "SELECT count(*) FROM satellite_scan, unnest(answers) t(a) "
        f"WHERE source = '{REAL_SAT_SCANS['satellite_v1']}' AND a.as_name IS NOT NULL",
    )
    assert v1[0][0] > 0
    # match_confidence is filled (always NULL in the seed).
    filled = q(
        sat_wh,
        "SELECT count(*) FROM satellite_scan, unnest(answers) t(a) "
        "WHERE a.match_confidence IS NOT NULL",
    )
    assert filled[0][0] > 0


def test_late_file_reprocesses_the_whole_scan_without_duplicates(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    build_real_satellite_input(inp)
    v22 = inp / REAL_SAT_SCANS["satellite_v2.2"]
    late = tmp_path / "blockpages.json"
    shutil.move(v22 / "blockpages.json", late)
    run(cfg(inp, wh))
    before = q(wh, "SELECT count(*) FROM satellite_scan")
    assert run(cfg(inp, wh)).files_processed == 0
    shutil.move(late, v22 / "blockpages.json")
    summary = run(cfg(inp, wh))
    assert summary.files_processed == 5  # every read file of that one scan
    assert q(wh, "SELECT count(*) FROM satellite_scan") == before == [(44,)]
    fetched = q(
        wh,
        "SELECT count(*) FROM satellite_scan, unnest(answers) t(a) "
        "WHERE a.https_tls_cert_common_name IS NOT NULL",
    )
    assert fetched[0][0] > 0


def test_broken_satellite_scan_does_not_block_hyperquack(tmp_path: Path) -> None:
    inp, wh = tmp_path / "in", tmp_path / "wh"
    write_scan(inp, "CP_Quack-echo-2021-06-01-10-00-00", good_lines(5))
    bad = inp / "CP_Satellite-2021-10-20-14-00-01"
    bad.mkdir(parents=True)
    real = require_real()
    record = json.loads((real / "satellite_v2.2" / "results.json").read_text().splitlines()[0])
    record["start_time"] = ""  # the seed dropped such rows silently
    (bad / "results.json").write_text(
        "\n".join([json.dumps(record), "{not json", json.dumps(record)])
    )
    with pytest.raises(RunFailed, match=r"CP_Satellite-2021-10-20-14-00-01/results\.json"):
        run(cfg(inp, wh))
    assert q(wh, "SELECT count(*) FROM echo_scan") == [(15,)]
    assert q(wh, "SELECT count(*) FROM satellite_scan") == [(0,)]
    classes = q(wh, "SELECT error_class, count(*) FROM dead_letter GROUP BY 1 ORDER BY 1")
    assert classes == [("invalid_json", 1), ("missing_start_time", 2)]


def test_resolver_and_answer_ip_metadata(tmp_path: Path) -> None:
    from services.beam_launcher.metrics import LauncherMetrics
    from tests.test_pipeline_real import build_real_ip_metadata

    build_real_satellite_input(tmp_path / "in")
    meta = build_real_ip_metadata(tmp_path / "meta")
    # The same excerpt filed under a date just before the v2.2 scan.
    v22 = meta / "routeviews/2021/10/routeviews-rv2-20211019-1200.pfx2as.gz"
    v22.parent.mkdir(parents=True)
    v22.write_bytes(
        (meta / "routeviews/2020/11/routeviews-rv2-20201101-1200.pfx2as.gz").read_bytes()
    )
    metrics = LauncherMetrics()
    run(cfg(tmp_path / "in", tmp_path / "wh", ip_metadata=str(meta)), metrics)
    wh = tmp_path / "wh"
    rows = q(
        wh,
        "SELECT resolver_ip, resolver_asn, resolver_as_name, ip_metadata_sources "
        "FROM satellite_scan WHERE resolver_ip = '208.67.222.222' LIMIT 1",
    )
    assert rows[0][1] == 36692 and rows[0][2] == "OPENDNS"
    assert "routeviews-rv2-20211019-1200" in rows[0][3]
    # v1 (2018) and v2.1 (2021-04) have no routeviews file within 30 days: kept, empty.
    old = q(
        wh, "SELECT count(*), count(resolver_asn) FROM satellite_scan WHERE date < '2021-06-01'"
    )
    assert old == [(24, 0)]
    coverage = metrics.registry.get_sample_value(
        "cp_launcher_enrichment_coverage_ratio", {"scan_type": "satellite", "field": "asn"}
    )
    assert coverage is not None and 0 < coverage < 1
    missing = metrics.registry.get_sample_value(
        "cp_launcher_ip_metadata_missing_lookups", {"scan_type": "satellite"}
    )
    assert missing and missing >= 24


def test_rcode_minus_1_without_error_is_kept_counted_and_classified(tmp_path: Path) -> None:
    from tests.test_satellite_parse import v21_record

    require_real()  # the real signatures and categories (cfg's resources)
    inp, wh = tmp_path / "in", tmp_path / "wh"
    scan = inp / "CP_Satellite-2021-04-26-14-00-01"
    scan.mkdir(parents=True)
    lines = [v21_record({"rcode": ["-1"]}, True)] * 3 + [
        v21_record({"192.0.2.80": ["ip"], "rcode": ["0"]}, False)
    ]
    (scan / "results.json").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    summary = run(cfg(inp, wh))
    # Three of four lines lack their error text: far above the 10% bad-line threshold, yet
    # the file is ok because they are measurements, not bad lines.
    assert summary.rejected == []
    assert summary.stats["row_warnings.rcode_error_missing"] == 3
    assert summary.beam_counters["satellite.row_warnings.rcode_error_missing"] == 3
    assert q(wh, "SELECT count(*) FROM dead_letter") == [(0,)]
    rows = q(
        wh,
        "SELECT received_rcode, received_error, success, outcome, outcome_rule_id "
        "FROM satellite_scan ORDER BY source_line",
    )
    assert rows == [
        (-1, None, False, "dns.timedout", "DNS-RCODE-CONNERR"),
        (-1, None, False, "dns.timedout", "DNS-RCODE-CONNERR"),
        (-1, None, False, "dns.timedout", "DNS-RCODE-CONNERR"),
        (0, None, True, "ip.matchip", "IP-MATCHIP"),
    ]
    assert q(wh, "SELECT status, rows_written, dead_letters FROM processed_files") == [("ok", 4, 0)]
