"""The rules of merged_reduced_scans, on hand-made base rows in a local warehouse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.test_queries_support import (
    VALID_CERT,
    answer,
    derived,
    hq_row,
    insert,
    ledger,
    run_queries,
    sat_row,
    warehouse,
)

D = dt.date(2022, 1, 10)
HQ = "CP_Quack-echo-2022-01-10-01-00-00"
SAT = "CP_Satellite-2022-01-10-12-00-00"


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = warehouse(tmp_path_factory.mktemp("rules"))
    insert(
        root,
        "echo",
        [
            hq_row(D, HQ),
            hq_row(D, HQ),
            hq_row(D, HQ, outcome="content/blockpage:b_test"),
            hq_row(D, HQ, outcome="setup/system_failure"),
            hq_row(D, HQ, outcome="read/system"),
            hq_row(D, HQ, outcome="dial/timeout"),
            hq_row(D, HQ, outcome="read/timeout"),
            hq_row(D, HQ, outcome="tls/timeout"),
            hq_row(D, HQ, outcome="unknown/unknown"),
            hq_row(D, HQ, domain="nullcontrols.example", controls_failed=None),
            hq_row(D, HQ, domain="failedcontrols.example", controls_failed=True),
            hq_row(D, HQ, domain="nocountry.example", server_country=None),
            hq_row(D, HQ, domain="zz.example", server_country="ZZ"),
            hq_row(D, HQ, domain="uncategorized.example", domain_category=None),
            hq_row(D, HQ, domain="ctl.example", domain_is_control=True, domain_category="Control"),
            hq_row(D, HQ, domain="org.example", server_organization="Telekom Test Org"),
        ],
    )
    capable = sat_row(D, SAT, "s1", outcome="tls.validcert", answers=[answer(**VALID_CERT)])
    insert(
        root,
        "satellite",
        [
            capable,
            # retries: only the last one counts
            sat_row(D, SAT, "s2", retry=0, outcome="dns.timedout", answers=[]),
            sat_row(D, SAT, "s2", retry=1, outcome="dns.timedout", answers=[]),
            sat_row(D, SAT, "s2", retry=2, outcome="ip.matchip"),
            # the seed counted DNS timeouts as unexpected: fixed
            sat_row(D, SAT, "s3", outcome="dns.timedout", answers=[]),
            sat_row(D, SAT, "s4", outcome="setup.system_failure", answers=[]),
            sat_row(D, SAT, "s5", outcome="dns.error:Refused", answers=[]),
            sat_row(D, SAT, "s6", outcome="dns.hostunreach", answers=[]),
            sat_row(D, SAT, "s7", outcome="dns.error:ServFail", answers=[]),
            sat_row(D, SAT, "s8", outcome="tls.connerror:AMAZON-02"),
            sat_row(D, SAT, "s9", outcome="dns.unknown", answers=[]),
            # filtered: bad resolver, failed / unknown domain controls, not HTTPS-capable
            sat_row(D, SAT, "x1", resolver_name="bad.example.", resolver_connect_error_rate=0.9),
            sat_row(D, SAT, "x2", resolver_name="ctlfail.example.", domain_controls_failed=True),
            sat_row(D, SAT, "x3", resolver_name="ctlnull.example.", domain_controls_failed=None),
            sat_row(D, SAT, "x4", domain="incapable.example"),
            # a profiled good resolver and the predefined name 'special'
            sat_row(
                D,
                SAT,
                "g1",
                resolver_name="special",
                resolver_connect_error_rate=0.1,
                resolver_invalid_cert_rate=0.2,
                resolver_non_zero_rcode_rate=0.3,
            ),
        ],
    )
    ledger(root, "echo", HQ)
    ledger(root, "satellite", SAT)
    run_queries(root)
    return root


def _by(rows: list[dict], **kw: object) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def test_hyperquack_outcomes_and_counts(wh: Path) -> None:
    rows = _by(derived(wh), source="ECHO", domain="example.org")
    got = {r["outcome"]: (r["count"], r["unexpected_count"]) for r in rows}
    assert got == {
        "✅match": (2, 0),
        "❗️content/blockpage:b_test": (1, 1),
        "❔dial/timeout": (1, None),
        "❗️read/timeout": (1, 1),
        "❓tls/timeout": (1, 1),
        "❔unknown/unknown": (1, None),
    }  # setup/system_failure and read/system are left out


def test_hyperquack_filters_and_labels(wh: Path) -> None:
    rows = _by(derived(wh), source="ECHO")
    domains = {r["domain"] for r in rows}
    assert not domains & {"nullcontrols.example", "failedcontrols.example", "nocountry.example"}
    match = _by(rows, domain="example.org", outcome="✅match")[0]
    assert match == {
        "date": D,
        "source": "ECHO",
        "hostname": None,
        "reg_hostname": None,
        "network": "Deutsche Telekom AG",
        "subnetwork": "AS3320",
        "domain": "example.org",
        "category": "News Media",
        "outcome": "✅match",
        "count": 2,
        "country_name": "Germany",
        "unexpected_count": 0,
    }
    assert _by(rows, domain="zz.example")[0]["country_name"] == "ZZ"  # unknown code kept
    assert _by(rows, domain="uncategorized.example")[0]["category"] == "Uncategorized"
    assert _by(rows, domain="CONTROL")[0]["category"] == "Control"
    assert _by(rows, domain="org.example")[0]["subnetwork"] == "AS3320 - Telekom Test Org"


def test_satellite_outcomes_emoji_and_timeout_fix(wh: Path) -> None:
    rows = _by(derived(wh), source="DNS", hostname="dns1.isp.example.co.uk.")
    got = {r["outcome"]: (r["count"], r["unexpected_count"]) for r in rows}
    assert got == {
        "✅tls.validcert": (1, 0),
        "✅ip.matchip": (1, 0),  # s2: only retry 2, not the two timeouts before it
        "❓dns.timedout": (1, None),  # the fixed seed bug: not counted as unexpected
        "❗️dns.error:Refused": (1, 1),
        "❔dns.hostunreach": (1, None),
        "❓dns.error:ServFail": (1, 1),
        "❓tls.connerror:AMAZON-02": (1, 1),
        "❗️dns.unknown": (1, 1),
    }  # setup.system_failure is left out like setup/…
    assert {r["reg_hostname"] for r in rows} == {"example.co.uk"}
    assert {r["country_name"] for r in rows} == {
        "United Kingdom of Great Britain and Northern Ireland"
    }
    assert {r["subnetwork"] for r in rows} == {"AS2856"}


def test_satellite_filters(wh: Path) -> None:
    rows = _by(derived(wh), source="DNS")
    hostnames = {r["hostname"] for r in rows}
    assert "bad.example." not in hostnames  # a profile rate above 0.75
    assert "ctlfail.example." not in hostnames and "ctlnull.example." not in hostnames
    assert "incapable.example" not in {r["domain"] for r in rows}
    special = _by(rows, hostname="special")
    assert [(r["reg_hostname"], r["outcome"]) for r in special] == [("special", "✅ip.matchip")]


def test_partition_does_not_depend_on_window(tmp_path: Path) -> None:
    """HTTPS capability is per scan even when the scan's rows span two dates."""
    root = warehouse(tmp_path)
    d2 = D + dt.timedelta(days=1)
    insert(
        root,
        "satellite",
        [
            sat_row(D, SAT, "a", outcome="tls.validcert", answers=[answer(**VALID_CERT)]),
            sat_row(d2, SAT, "b", outcome="ip.matchip"),
        ],
    )
    ledger(root, "satellite", SAT)
    run_queries(root)
    before = derived(root, f"date = DATE '{d2}'")
    assert [r["outcome"] for r in before] == ["✅ip.matchip"]
    summary, _ = run_queries(root, start=d2, end=d2)
    assert summary.partitions_recomputed == {"merged_reduced_scans": [d2.isoformat()]}
    assert derived(root, f"date = DATE '{d2}'") == before
