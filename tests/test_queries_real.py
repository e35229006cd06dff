"""The queries service on the real Censored Planet fixtures, after the launcher ran.

Reference: the seed's derived SQL, run by its own e2e test on the same Hyperquack files
(110 base rows) with its real IP metadata, asserts 55 derived rows and 22 domain values
(CONTROL + 21 domains) in its latest version (53 in older versions). Our rules give 53
with CAIDA metadata alone and exactly 55 once a per-IP organisation source separates the
two Google servers of the HTTP v2 file, the only groups that hold more than one server IP
(see the last two tests, and services/queries/README.md, "Reference numbers"). No
Satellite row survives the seed's (and our) HTTPS-capable-domain filter: no answer in
these fixtures carries a trusted-CA verdict (`trusted_cert` only exists in page fetches
from 2022 on).

IP metadata: the real CAIDA excerpts (tests/conftest.py) are laid out in tmp under one
routeviews file per fixture month (their content is one real table of late 2020, so
every fixture IP gets the ASN it had then), plus one synthetic prefix for the only server
IP the excerpt lacks (216.152.23.1 → documentation ASN 64500, a made-up organisation).
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from services.beam_launcher.run import RunConfig
from services.beam_launcher.run import run as launch
from tests.conftest import REAL, REAL_RESOURCES, build_real_input, build_real_satellite_input
from tests.test_pipeline_real import build_real_ip_metadata
from tests.test_queries_support import counter, derived, run_queries, sql

pytestmark = pytest.mark.slow

MONTHS = ("20180801", "20201101", "20210401", "20210501", "20210601", "20211001")
SYNTHETIC_PFX2AS = b"216.152.23.0\t24\t64500\n"
SYNTHETIC_AS2ORG = (
    b"# format:org_id|changed|org_name|country|source\n"
    b"TEST-64500|20201001|Synthetic Test Network (fixture gap)|US|TEST\n"
    b"# format:aut|changed|aut_name|org_id|opaque_id|source\n"
    b"64500|20201001|SYNTHETIC-TEST|TEST-64500||TEST\n"
)
TARGET = "merged_reduced_scans"


def build_dated_ip_metadata(dest: Path) -> Path:
    """CAIDA reference files in tmp covering every fixture date (see module docstring)."""
    caida = REAL / "caida"
    pfx2as = gzip.decompress((caida / "routeviews-rv2-00000000-test.pfx2as.gz").read_bytes())
    for day in MONTHS:
        path = dest / "routeviews" / day[:4] / day[4:6] / f"routeviews-rv2-{day}-1200.pfx2as.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(pfx2as + SYNTHETIC_PFX2AS, mtime=0))
    as2org = gzip.decompress((caida / "20201001.test.as-org2info.txt.gz").read_bytes())
    org_path = dest / "as-organizations" / "20201001.as-org2info.txt.gz"
    org_path.parent.mkdir(parents=True)
    org_path.write_bytes(gzip.compress(as2org.rstrip(b"\n") + b"\n" + SYNTHETIC_AS2ORG, mtime=0))
    types_path = dest / "as-classifications" / "20201101.as2types.txt.gz"
    types_path.parent.mkdir(parents=True)
    types_path.write_bytes((caida / "20201101.test.as2types.txt.gz").read_bytes())
    return dest


def _launch(input_dir: Path, wh: Path, meta: Path) -> Any:
    return launch(
        RunConfig(
            input=str(input_dir),
            warehouse=str(wh),
            resources=str(REAL_RESOURCES),
            ip_metadata=str(meta),
        )
    )


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("queries_real")
    build_real_input(base / "in")
    build_real_satellite_input(base / "in")
    meta = build_dated_ip_metadata(base / "meta")
    _launch(base / "in", base / "wh", meta)
    summary, metrics = run_queries(
        base / "wh", quality=True, quality_days=5000, export=str(base / "export")
    )
    return {"base": base, "wh": base / "wh", "meta": meta, "summary": summary, "metrics": metrics}


def test_rows_as_the_seed_rules_give(real: dict[str, Any]) -> None:
    rows = derived(real["wh"])
    assert len(rows) == 53
    assert real["summary"].rows_written == {TARGET: 53}
    assert {r["domain"] for r in rows} == {
        "CONTROL",
        "boingboing.net",
        "box.com",
        "google.com.ua",
        "mos.ru",
        "scribd.com",
        "uploaded.to",
        "www.blubster.com",
        "www.orthodoxconvert.info",
        "www.arabhra.org",
        "123rf.com",
        "1337x.to",
        "www.youporn.com",
        "xhamster.com",
        "discover.com",
        "peacefire.org",
        "secondlife.com",
        "www.epa.gov",
        "www.sex.com",
        "www.89.com",
        "www.casinotropez.com",
        "104.com.tw",
    }
    assert Counter(r["source"] for r in rows) == {
        "DISCARD": 14,
        "ECHO": 14,
        "HTTP": 12,
        "HTTPS": 13,
    }
    # 110 base rows − 1 whose controls failed − 2 setup failures = 107 rows counted.
    assert sum(r["count"] for r in rows) == 107
    dates = [d.isoformat() for d in sorted({r["date"] for r in rows})]
    assert dates == [
        "2020-11-06",
        "2020-11-09",
        "2020-11-14",
        "2020-11-22",
        "2021-04-26",
        "2021-05-30",
        "2021-05-31",
    ]
    # Every date with base rows was built (Satellite dates hold no derived rows).
    assert len(real["summary"].partitions_recomputed[TARGET]) == 10


def test_example_rows(real: dict[str, Any]) -> None:
    rows = derived(real["wh"], "country_name IN ('Pakistan', 'Thailand')")
    assert [
        (r["date"].isoformat(), r["source"], r["domain"], r["outcome"], r["count"]) for r in rows
    ] == [
        ("2020-11-14", "ECHO", "CONTROL", "✅match", 2),
        ("2020-11-14", "ECHO", "www.89.com", "❓content/mismatch", 3),
        ("2020-11-14", "ECHO", "www.89.com", "❔dial/timeout", 2),
        ("2020-11-14", "ECHO", "www.sex.com", "❓content/mismatch", 5),
        ("2021-05-31", "DISCARD", "CONTROL", "✅match", 2),
        (
            "2021-05-31",
            "DISCARD",
            "www.youporn.com",
            "❗️content/blockpage:b_nat_pak_isp_common_blockpage",
            4,
        ),
    ]
    blockpage = rows[-1]
    assert blockpage == {
        "date": dt.date(2021, 5, 31),
        "source": "DISCARD",
        "hostname": None,
        "reg_hostname": None,
        "network": "Telecard Limited",
        "subnetwork": "AS38488",
        "domain": "www.youporn.com",
        "category": "Pornography",
        "outcome": "❗️content/blockpage:b_nat_pak_isp_common_blockpage",
        "count": 4,
        "country_name": "Pakistan",
        "unexpected_count": 4,
    }
    assert rows[2]["unexpected_count"] is None  # ❔dial/timeout
    # The stateful-block vantage point: its two setup failures are left out.
    huawei = derived(
        real["wh"],
        "source = 'ECHO' AND date = DATE '2021-05-30' "
        "AND network = 'Huawei Cloud Service data center'",
    )
    assert [(r["domain"], r["outcome"], r["count"]) for r in huawei] == [
        ("104.com.tw", "❓content/mismatch", 3),
        ("CONTROL", "✅match", 2),
    ]
    synthetic = derived(real["wh"], "subnetwork = 'AS64500'")
    assert {(r["domain"], r["country_name"]) for r in synthetic} == {
        ("104.com.tw", "United States of America"),
        ("CONTROL", "United States of America"),
    }


def test_quality_on_real_data(real: dict[str, Any]) -> None:
    quality = real["summary"].quality
    completeness = {(q["scan_type"], q["date"]): q for q in quality["completeness"]}
    assert len(completeness) == 11  # 8 Hyperquack + 3 Satellite scans
    assert {q["completeness"] for q in completeness.values()} == {1.0}
    assert {q["line_coverage"] for q in completeness.values()} == {1.0}
    assert {q["ratio"] for q in quality["enrichment"]} == {1.0}
    assert quality["dead_letters"] == []
    fresh = {q["table"]: q for q in quality["freshness"]}
    assert fresh["echo_scan"] == {
        "table": "echo_scan",
        "newest_date": "2021-05-30",
        "newest_complete_date": "2020-11-14",
    }
    m = real["metrics"]
    assert counter(m, "cp_quality_completeness_ratio", scan_type="https", date="2021-04-26") == 1


def test_export(real: dict[str, Any]) -> None:
    out = real["base"] / "export"
    exported = real["summary"].exported_files
    assert exported[TARGET] == 7 and exported["satellite_scan"] == 3
    total = sum(pq.read_table(p).num_rows for p in out.glob(f"{TARGET}/date=*/*.parquet"))
    assert total == 53
    sat = sum(pq.read_table(p).num_rows for p in out.glob("satellite_scan/date=*/*.parquet"))
    assert sat == 44
    table = pq.read_table(next(out.glob("satellite_scan/date=2021-10-20/*.parquet")))
    assert table.schema.field("answers").type.value_type.get_field_index("ip") == 0


def test_second_run_recomputes_nothing(real: dict[str, Any]) -> None:
    summary, metrics = run_queries(real["wh"], export=str(real["base"] / "export"))
    assert summary.sources_changed == 0
    assert summary.partitions_recomputed == {TARGET: []}
    assert summary.exported_files == {}
    assert counter(metrics, "cp_queries_partitions_recomputed_total", target=TARGET) == 0
    assert counter(metrics, "cp_queries_rows_written_total", target=TARGET) == 0


def test_one_new_day_recomputes_one_partition(real: dict[str, Any]) -> None:
    # A new echo scan two days later: the real v2 file with its dates moved (in tmp).
    text = (REAL / "echo_v2" / "echo_results_v2.json").read_text(encoding="utf-8")
    new = real["base"] / "in" / "CP_Quack-echo-2021-06-01-01-01-01" / "results.json"
    new.parent.mkdir()
    new.write_text(text.replace("2021-05-30", "2021-06-01"), encoding="utf-8")
    launched = _launch(real["base"] / "in", real["wh"], real["meta"])
    assert launched.files_processed == 1
    summary, metrics = run_queries(real["wh"])
    assert summary.sources_changed == 1
    assert summary.partitions_recomputed == {TARGET: ["2021-06-01"]}
    assert counter(metrics, "cp_queries_partitions_recomputed_total", target=TARGET) == 1

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "date"} for r in rows]

    moved = derived(real["wh"], "date = DATE '2021-06-01'")
    assert strip(moved) == strip(
        derived(real["wh"], "date = DATE '2021-05-30' AND source = 'ECHO'")
    )
    assert counter(metrics, "cp_queries_rows_written_total", target=TARGET) == len(moved)
    assert sql(real["wh"], "SELECT count(*) FROM derived.merged_reduced_scans") == [
        (53 + len(moved),)
    ]


def test_single_snapshot_metadata(tmp_path: Path) -> None:
    """With only the 2020-11-01 routeviews file (tests/test_pipeline_real.py) the 2021
    rows have no country and are left out, as the seed leaves them out."""
    build_real_input(tmp_path / "in")
    _launch(tmp_path / "in", tmp_path / "wh", build_real_ip_metadata(tmp_path / "meta"))
    summary, _ = run_queries(tmp_path / "wh")
    rows = derived(tmp_path / "wh")
    assert len(rows) == 24 and summary.rows_written == {TARGET: 24}
    assert {r["date"].year for r in rows} == {2020}


# --- the seed's 55 ------------------------------------------------------------------------

GOOGLE_IPS = ("34.120.75.87", "35.190.118.167")  # the HTTP v2 file's two Google servers


def test_only_the_two_google_servers_share_a_derived_group(real: dict[str, Any]) -> None:
    """Which derived groups could split under other IP metadata: exactly two.

    Every derived group is one (date, scan, country, network, subnetwork, domain, category,
    outcome). A group can only split into several when it holds rows of several server
    IPs; on these fixtures only two groups do, and both hold the same two Google IPs.
    """
    union = " UNION ALL ".join(
        f"SELECT '{t}' AS scan, * FROM {t}_scan" for t in ("echo", "discard", "http", "https")
    )
    mixed = sql(
        real["wh"],
        f"""
        SELECT scan, date, IF(domain_is_control, 'CONTROL', domain) AS d, outcome,
               list(DISTINCT server_ip ORDER BY server_ip) AS ips
        FROM ({union})
        WHERE NOT controls_failed
        GROUP BY scan, date, server_country, server_as_full_name, server_asn,
                 server_organization, d, domain_category, outcome
        HAVING count(DISTINCT server_ip) > 1 ORDER BY d
        """,
    )
    assert mixed == [
        ("http", dt.date(2021, 5, 30), "104.com.tw", "expected/match", list(GOOGLE_IPS)),
        ("http", dt.date(2021, 5, 30), "CONTROL", "expected/match", list(GOOGLE_IPS)),
    ]


def test_the_seeds_55_rows_with_organisation_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's metadata also had a per-IP organisation (DB-IP ISP, kept when its ASN
    agrees with CAIDA's) inside `subnetwork`. Give the two Google servers different
    organisations, as a per-IP database can, and our rules give the seed's 55 rows: the two
    groups above split, nothing else changes. The organisation names are test data.
    """
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(4, "DBIP-ISP (test)", description="made by the test")
    for ip, org in zip(GOOGLE_IPS, ("Google LLC", "Google Cloud (test)"), strict=True):
        writer.insert_network(
            IPSet([f"{ip}/32"]), {"autonomous_system_number": 15169, "organization": org}
        )
    mmdb = tmp_path / "dbip-isp-2021-05.mmdb"
    writer.to_db_file(str(mmdb))
    monkeypatch.setenv("CP_IP_ORG_MMDB", str(mmdb))
    build_real_input(tmp_path / "in")
    build_real_satellite_input(tmp_path / "in")
    _launch(tmp_path / "in", tmp_path / "wh", build_dated_ip_metadata(tmp_path / "meta"))
    summary, _ = run_queries(tmp_path / "wh")

    rows = derived(tmp_path / "wh")
    assert len(rows) == 55
    assert summary.rows_written == {TARGET: 55}
    assert len({r["domain"] for r in rows}) == 22
    assert sum(r["count"] for r in rows) == 107
    google = derived(tmp_path / "wh", "network = 'Google LLC'")
    assert sorted((r["domain"], r["subnetwork"], r["outcome"], r["count"]) for r in google) == [
        ("104.com.tw", "AS15169 - Google Cloud (test)", "✅match", 1),
        ("104.com.tw", "AS15169 - Google LLC", "✅match", 1),
        ("CONTROL", "AS15169 - Google Cloud (test)", "✅match", 1),
        ("CONTROL", "AS15169 - Google LLC", "✅match", 1),
    ]
