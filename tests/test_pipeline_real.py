"""End-to-end runs of the launcher on the real Censored Planet Hyperquack samples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pytest

from services.beam_launcher.run import RunConfig, run
from tests.conftest import REAL_RESOURCES, build_real_input

pytestmark = pytest.mark.slow


def _run(input_dir: Path, warehouse: Path, **kw: object) -> object:
    cfg = RunConfig(
        input=str(input_dir), warehouse=str(warehouse), resources=str(REAL_RESOURCES), **kw
    )
    return run(cfg)


@pytest.fixture(scope="module")
def real_warehouses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for version in ("v1", "v2"):
        base = tmp_path_factory.mktemp(f"real_{version}")
        build_real_input(base / "in", (version,))
        _run(base / "in", base / "wh")
        out[version] = base / "wh"
    return out


def _query(wh: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(wh / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


ALL_HQ = " UNION ALL ".join(
    f"SELECT '{t}' AS t, * FROM {t}_scan" for t in ("echo", "discard", "http", "https")
)


@pytest.mark.parametrize(
    ("version", "per_table", "measurements"),
    [
        ("v1", {"discard": 14, "echo": 14, "http": 14, "https": 11}, 16),
        ("v2", {"discard": 16, "echo": 17, "http": 16, "https": 8}, 16),
    ],
)
def test_row_counts_match_reference(real_warehouses, version, per_table, measurements) -> None:
    wh = real_warehouses[version]
    got = dict(_query(wh, f"SELECT t, count(*) FROM ({ALL_HQ}) GROUP BY t"))
    assert got == per_table
    assert _query(wh, f"SELECT count(DISTINCT measurement_id) FROM ({ALL_HQ})") == [(measurements,)]
    assert _query(wh, "SELECT count(*) FROM dead_letter") == [(0,)]
    status = _query(wh, "SELECT status, count(*), sum(lines) FROM processed_files GROUP BY 1")
    assert status == [("ok", 4, 16)]


def test_v2_outcomes(real_warehouses) -> None:
    wh = real_warehouses["v2"]
    got = dict(_query(wh, f"SELECT outcome, count(*) FROM ({ALL_HQ}) GROUP BY 1"))
    # The seed's own replay of these files gives exactly these counts.
    assert got == {
        "expected/match": 30,
        "content/mismatch": 9,
        "read/timeout": 4,
        "read/tcp.reset": 4,
        "content/blockpage:b_nat_pak_isp_common_blockpage": 4,
        "content/blockpage:d_corp_cn_ucloud": 4,
        "setup/system_failure": 2,
    }


def test_v1_outcomes(real_warehouses) -> None:
    wh = real_warehouses["v1"]
    got = Counter(dict(_query(wh, f"SELECT outcome, count(*) FROM ({ALL_HQ}) GROUP BY 1")))
    assert got == Counter(
        {
            "expected/match": 16,
            "content/mismatch": 13,
            "expected/trusted_host:akamai": 10,
            "read/timeout": 5,
            "content/status_mismatch:503": 5,
            "dial/timeout": 2,
            "content/status_mismatch:302": 2,
        }
    )


def _row(wh: Path, table: str, where: str, cols: str) -> list[tuple]:
    return _query(wh, f"SELECT {cols} FROM {table} WHERE {where} ORDER BY start_time")


def test_v1_echo_retries_controls_and_blockpage(real_warehouses) -> None:
    wh = real_warehouses["v1"]
    rows = _row(
        wh,
        "echo_scan",
        "server_ip = '122.155.84.41' AND source_line = 4",
        "domain, domain_is_control, retry, outcome, outcome_rule_id, page_signature, "
        "is_known_blockpage, no_response_in_measurement_matches_template, domain_category",
    )
    assert [r[:3] for r in rows] == [
        ("www.89.com", False, 0),
        ("www.89.com", False, 1),
        ("www.89.com", False, 2),
        ("www.89.com", False, 3),
        ("www.89.com", False, 4),
        ("example5718349450314.com", True, None),
    ]
    assert rows[1][3:5] == ("dial/timeout", "HQ-DIAL-TIMEOUT")
    # The 503 page the middlebox echoed is a known false positive, so the outcome stays
    # content/mismatch and the row says which signature matched.
    assert rows[0][3:8] == (
        "content/mismatch",
        "HQ-CONTENT-MISMATCH",
        "x_generic_503_4",
        False,
        True,
    )
    assert rows[5][3] == "expected/match" and rows[5][8] == "Control"
    assert rows[0][8] == "Pornography"


def test_v2_blockpage_and_stateful_block(real_warehouses) -> None:
    wh = real_warehouses["v2"]
    rows = _row(
        wh,
        "discard_scan",
        "server_ip = '116.0.42.17'",
        "domain, retry, outcome, page_signature, is_known_blockpage, matches_template",
    )
    assert [r[1] for r in rows] == [None, 0, 1, 2, 3, None]
    assert rows[1][2:] == (
        "content/blockpage:b_nat_pak_isp_common_blockpage",
        "b_nat_pak_isp_common_blockpage",
        True,
        False,
    )
    stateful = _row(
        wh,
        "echo_scan",
        "server_ip = '139.159.212.25'",
        "domain_is_control, retry, stateful_block, outcome, matches_template",
    )
    assert [r[2] for r in stateful] == [True] * 7
    # C+ T- T- T- T- C- C+: the first control after the tests fails, a later one passes.
    assert [(r[0], r[1], r[4]) for r in stateful] == [
        (True, None, True),
        (False, 0, False),
        (False, 1, False),
        (False, 2, False),
        (False, 3, False),
        (True, None, False),
        (True, None, True),
    ]
    assert [r[3] for r in stateful[4:6]] == ["setup/system_failure"] * 2


def test_tls_fields_v1_and_v2(real_warehouses) -> None:
    cols = (
        "received_tls_version, received_tls_cipher_suite, received_tls_cert_common_name, "
        "received_tls_cert_issuer, received_tls_cert_matches_domain, "
        "octet_length(received_tls_cert) > 1000, outcome"
    )
    v1 = _row(real_warehouses["v1"], "https_scan", "domain = 'www.arabhra.org' AND retry = 0", cols)
    assert v1 == [
        (
            771,
            49199,
            "jobs.bankaudi.com.lb",
            "Entrust Certification Authority - L1M",
            False,
            True,
            "content/status_mismatch:302",
        )
    ]
    v2 = _row(
        real_warehouses["v2"], "https_scan", "server_ip = '111.198.172.139' AND retry = 0", cols
    )
    assert v2[0][0:3] == (771, 156, "e.cebbank.com")
    assert v2[0][4:] == (False, True, "content/mismatch")


def test_provenance_columns(real_warehouses) -> None:
    wh = real_warehouses["v2"]
    rows = _query(
        wh,
        "SELECT DISTINCT source, source_file, source_line, outcome_rules_version FROM http_scan "
        "ORDER BY source_line",
    )
    assert [r[2] for r in rows] == [1, 2, 3, 4]
    assert {r[0] for r in rows} == {"CP_Quack-http-2021-05-30-01-01-01"}
    assert {r[1] for r in rows} == {"results.json"}
    assert all(r[3].startswith("hq-outcomes-") for r in rows)
    files = _query(
        wh, "SELECT count(*) FROM glob('" + str(wh) + "/parquet/http_scan/date=*/*.parquet')"
    )
    assert files == [(1,)]


def build_real_ip_metadata(dest: Path) -> Path:
    """The real CAIDA excerpts laid out as the routeviews service mirrors them (in tmp)."""
    from tests.conftest import REAL

    caida = REAL / "caida"
    layout = {
        "routeviews-rv2-00000000-test.pfx2as.gz": (
            "routeviews/2020/11/routeviews-rv2-20201101-1200.pfx2as.gz"
        ),
        "20201001.test.as-org2info.txt.gz": "as-organizations/20201001.as-org2info.txt.gz",
        "20201101.test.as2types.txt.gz": "as-classifications/20201101.as2types.txt.gz",
    }
    for src, rel in layout.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((caida / src).read_bytes())
    return dest


def test_dated_ip_metadata_enrichment(tmp_path: Path) -> None:
    build_real_input(tmp_path / "in")
    meta = build_real_ip_metadata(tmp_path / "meta")
    summary = run(
        RunConfig(
            input=str(tmp_path / "in"),
            warehouse=str(tmp_path / "wh"),
            resources=str(REAL_RESOURCES),
            ip_metadata=str(meta),
        )
    )
    wh = tmp_path / "wh"
    got = _query(
        wh,
        "SELECT DISTINCT server_netblock, server_asn, server_as_name, server_as_full_name, "
        "server_as_class, server_country, ip_metadata_sources FROM echo_scan "
        "WHERE server_ip = '122.155.84.41'",
    )
    assert got == [
        (
            "122.155.80.0/21",
            9931,
            "CAT-AP",
            "CAT Telecom Public Company Limited",
            "Transit/Access",
            "TH",
            ["routeviews-rv2-20201101-1200", "20201001.as-org2info", "20201101.as2types"],
        )
    ]
    # 2021 scans are more than 30 days after the only routeviews file: rows are kept with
    # empty metadata and counted, the run does not fail.
    v2 = _query(wh, "SELECT count(*), count(server_asn) FROM echo_scan WHERE date >= '2021-01-01'")
    assert v2 == [(17, 0)]
    assert summary.stats["ip_metadata.server.no_table"] == 57
    assert summary.stats["rows_with_asn"] > 0


def test_organization_from_mmdb_only_when_asns_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(4, "DBIP-ISP (test)", description="made by the test")
    writer.insert_network(
        IPSet(["122.155.80.0/21"]), {"autonomous_system_number": 9931, "organization": "CAT Org"}
    )
    writer.insert_network(  # disagrees with CAIDA (AS36692): must not be used
        IPSet(["146.112.62.0/24"]), {"autonomous_system_number": 1, "organization": "Wrong"}
    )
    mmdb = tmp_path / "dbip-isp-2020-11.mmdb"
    writer.to_db_file(str(mmdb))
    monkeypatch.setenv("CP_IP_ORG_MMDB", str(mmdb))
    build_real_input(tmp_path / "in", ("v1",))
    run(
        RunConfig(
            input=str(tmp_path / "in"),
            warehouse=str(tmp_path / "wh"),
            resources=str(REAL_RESOURCES),
            ip_metadata=str(build_real_ip_metadata(tmp_path / "meta")),
        )
    )
    got = dict(
        _query(
            tmp_path / "wh",
            "SELECT DISTINCT server_ip, server_organization FROM echo_scan "
            "WHERE server_ip IN ('122.155.84.41', '146.112.62.39')",
        )
    )
    assert got == {"122.155.84.41": "CAT Org", "146.112.62.39": None}
    sources = _query(
        tmp_path / "wh",
        "SELECT DISTINCT ip_metadata_sources FROM echo_scan WHERE server_ip = '122.155.84.41'",
    )
    assert sources == [
        (
            [
                "routeviews-rv2-20201101-1200",
                "20201001.as-org2info",
                "20201101.as2types",
                "dbip-isp-2020-11",
            ],
        )
    ]
