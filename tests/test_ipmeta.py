"""services.common.ipmeta: parsers, longest-prefix match, Enricher, ReferenceCatalog.

The real CAIDA excerpts (``../shared/fixtures/real/caida``) are read in place; the
expected values below were read by hand from those files (facts of the fixture):

* pfx2as excerpt (402 lines, date unknown, 2020): e.g. ``146.112.62.0/24 36692``,
  ``104.207.136.0/21 20473``, ``122.155.80.0/21 9931``, ``8.0.0.0/9 3356``,
  ``8.0.0.0/12 3356``, ``8.8.8.0/24 15169``.
* as-org2info 20201001 (pipe format): e.g. ``36692|…|OPENDNS|OPEND-2-ARIN|…`` and
  ``OPEND-2-ARIN|20200922|Cisco OpenDNS, LLC|US|ARIN``.
* as2types 20201101: e.g. ``36692|peerDB_class|Content``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from services.common import ipmeta
from services.common import storage as st
from services.common.ipmeta import (
    COMPILED_DIR,
    KIND_FOLDERS,
    KIND_ROUTEVIEWS,
    AsOrg,
    Enricher,
    IpMetadata,
    PrefixTable,
    ReferenceCatalog,
    compile_reference,
    enrich_pairs,
    parse_as2org,
    parse_as2types,
    parse_asn,
    parse_ip,
    parse_origin,
    parse_pfx2as,
)
from services.common.logsetup import configure_logging
from tests.conftest import REAL

CAIDA = REAL / "caida"
PFX2AS = CAIDA / "routeviews-rv2-00000000-test.pfx2as.gz"
AS2ORG = CAIDA / "20201001.test.as-org2info.txt.gz"
AS2TYPES = CAIDA / "20201101.test.as2types.txt.gz"


def _real_lines(path: Path) -> list[str]:
    if not path.is_file():
        pytest.skip(f"real CAIDA excerpt not found: {path} (shared/fixtures/real is absent)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


@pytest.fixture(scope="module")
def real_enricher() -> Enricher:
    return Enricher(
        pfx2as=parse_pfx2as(_real_lines(PFX2AS)),
        pfx2as_id="routeviews-rv2-00000000-test",
        as2org=parse_as2org(_real_lines(AS2ORG)),
        as2org_id="20201001.as-org2info",
        as2types=parse_as2types(_real_lines(AS2TYPES)),
        as2types_id="20201101.as2types",
    )


# ---------------------------------------------------------------------------------------
# Real excerpts: concrete values


REAL_SOURCES = ("routeviews-rv2-00000000-test", "20201001.as-org2info", "20201101.as2types")

# ip (where it occurs in the real fixtures) → (netblock, asn, as_name, org, class, country)
REAL_IPS = {
    # Hyperquack echo v1 servers (echo_v1/echo_results_v1.json)
    "146.112.62.39": ("146.112.62.0/24", 36692, "OPENDNS", "Cisco OpenDNS, LLC", "Content", "US"),
    "104.207.140.33": ("104.207.136.0/21", 20473, "AS-CHOOPA", "Choopa, LLC", "Content", "US"),
    "122.155.84.41": (
        "122.155.80.0/21",
        9931,
        "CAT-AP",
        "CAT Telecom Public Company Limited",
        "Transit/Access",
        "TH",
    ),
    # Satellite v1 resolvers (satellite_v1/resolvers.json)
    "145.239.6.50": ("145.239.0.0/16", 16276, "OVH", "OVH SAS", "Content", "FR"),
    "185.228.168.156": ("185.228.168.0/24", 205157, "CIDNOC", "Daniel Cid", "Enterprise", "IE"),
    "1.1.1.1": ("1.1.1.0/24", 13335, "CLOUDFLARENET", "Cloudflare, Inc.", "Content", "US"),
    # MOAS line 156.154.71.0/24 397225_397215_… : the first origin is reported
    "156.154.71.37": (
        "156.154.71.0/24",
        397225,
        "ULTRADNS",
        "NeuStar, Inc.",
        "Transit/Access",
        "US",
    ),
    # Satellite v2.1 vantage points (nested prefixes: /21 ⊃ /24, /16 ⊃ /18 ⊃ /24)
    "121.100.49.41": (
        "121.100.49.0/24",
        38742,
        "AWCC-AS-AP",
        "Afghan Wireless Communication Company",
        "Transit/Access",
        "AF",
    ),
    "201.174.163.10": (
        "201.174.163.0/24",
        32098,
        "TRANSTELCO-INC",
        "Transtelco Inc",
        "Transit/Access",
        "US",
    ),
    # Satellite v2.2 resolvers
    "208.67.222.222": ("208.67.222.0/24", 36692, "OPENDNS", "Cisco OpenDNS, LLC", "Content", "US"),
    "203.144.128.194": (
        "203.144.128.0/24",
        7470,
        "TRUEINTERNET-AS-AP",
        "TRUE INTERNET CORPORATION CO. LTD.",
        "Transit/Access",
        "TH",
    ),
}


@pytest.mark.parametrize("ip", sorted(REAL_IPS))
def test_real_fixture_ips_get_expected_metadata(real_enricher: Enricher, ip: str) -> None:
    netblock, asn, as_name, org, cls, country = REAL_IPS[ip]
    m = real_enricher.lookup(ip)
    assert (m.netblock, m.asn, m.as_name, m.as_full_name, m.as_class, m.country) == (
        netblock,
        asn,
        as_name,
        org,
        cls,
        country,
    )
    assert m.organization is None  # no MMDB configured
    assert m.sources == REAL_SOURCES
    assert m.status == "ok"


def test_real_excerpts_parse_completely() -> None:
    table = parse_pfx2as(_real_lines(PFX2AS))
    assert (len(table), table.bad_lines) == (402, 0)
    assert table.has_ipv4 and not table.has_ipv6
    assert table.lengths() == (24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 9, 8)
    assert len(parse_as2org(_real_lines(AS2ORG))) == 282  # AS lines in the excerpt
    assert len(parse_as2types(_real_lines(AS2TYPES))) == 277


@pytest.mark.parametrize(
    ("ip", "netblock"),
    [
        # 8.0.0.0/9 ⊃ 8.0.0.0/12 ⊃ 8.8.8.0/24 (all in the excerpt)
        ("8.8.8.8", "8.8.8.0/24"),
        ("8.9.1.1", "8.0.0.0/12"),
        ("8.100.0.1", "8.0.0.0/9"),
        # 210.26.0.0/15 ⊃ 210.27.160.0/19 ⊃ 210.27.176.0/20 ⊃ 210.27.176.0/24
        ("210.27.176.200", "210.27.176.0/24"),
        ("210.27.177.1", "210.27.176.0/20"),
        ("210.27.161.1", "210.27.160.0/19"),
        ("210.26.1.1", "210.26.0.0/15"),
        # 45.188.236.0/22 ⊃ /23 ⊃ /24 (same origin, three lengths)
        ("45.188.236.9", "45.188.236.0/24"),
        ("45.188.237.9", "45.188.236.0/23"),
        ("45.188.239.9", "45.188.236.0/22"),
    ],
)
def test_nested_prefixes_resolve_to_the_longest_match(
    real_enricher: Enricher, ip: str, netblock: str
) -> None:
    assert real_enricher.lookup(ip).netblock == netblock


@pytest.mark.parametrize(
    ("ip", "asn", "origin"),
    [
        ("1.2.4.1", 24409, "24409_24151_24406"),  # MOAS
        ("37.142.1.1", 12849, "12849,21450"),  # AS set
        ("8.12.247.1", 12025, "12025_11217,20019"),  # origin + AS set
        ("160.34.1.1", 4192, "4192,7160_7160"),  # AS set first, then an origin
        ("161.232.1.1", 6939, "6939,55195,207266_6939,55195,64512,207266"),
        ("63.156.135.1", 209, "209_4200010324"),  # a 32-bit private ASN as second origin
    ],
)
def test_moas_and_as_set_lines_report_the_first_asn_and_keep_the_raw_origin(
    real_enricher: Enricher, ip: str, asn: int, origin: str
) -> None:
    assert real_enricher.pfx2as is not None
    match = real_enricher.pfx2as.lookup(ip)
    assert match is not None
    assert (match.asn, match.origin) == (asn, origin)
    assert real_enricher.lookup(ip).asn == asn


def test_real_asns_missing_from_as2org_give_empty_names(real_enricher: Enricher) -> None:
    # Every ASN named anywhere in the pfx2as excerpt that the as2org excerpt lacks
    # (README: 64 of them; all are private-use ASNs in second origins / AS sets).
    table_lines = [line.split("\t") for line in _real_lines(PFX2AS)]
    all_asns = {
        parse_asn(tok)
        for _, _, origin in table_lines
        for tok in origin.replace(",", "_").split("_")
    }
    missing = sorted(a for a in all_asns if a not in real_enricher.as2org)
    assert len(missing) == 64
    assert 4200010324 in missing and 65002 in missing
    for asn in missing:
        assert real_enricher.asn_info(asn) == (AsOrg(None, None, None), None)
    # The reported (first) ASN of every line is in the excerpt, so go through a lookup with
    # a table whose origin is one of the missing ASNs: names stay empty, nothing raises.
    enricher = Enricher(
        pfx2as=parse_pfx2as(["63.156.135.0\t24\t4200010324"]),
        pfx2as_id="t",
        as2org=real_enricher.as2org,
        as2org_id="20201001.as-org2info",
        as2types=real_enricher.as2types,
        as2types_id="20201101.as2types",
    )
    m = enricher.lookup("63.156.135.7")
    assert (m.netblock, m.asn, m.status) == ("63.156.135.0/24", 4200010324, "ok")
    assert (m.as_name, m.as_full_name, m.country, m.as_class) == (None, None, None, None)


def test_asn_missing_from_as2types_keeps_names(real_enricher: Enricher) -> None:
    # 192.26.92.0/24 396549_… : 396549 is in the as2org excerpt but not in as2types.
    m = real_enricher.lookup("192.26.92.30")
    assert (m.asn, m.as_name, m.as_full_name, m.country, m.as_class) == (
        396549,
        "VRSN-AC50-340",
        "VeriSign Global Registry Services",
        "US",
        None,
    )


def test_as2org_jsonl_of_the_real_excerpt_parses_the_same() -> None:
    """Rewrite the real pipe file as CAIDA JSONL (in memory): same mapping."""
    lines = _real_lines(AS2ORG)
    jsonl: list[str] = []
    section = None
    for line in lines:
        if line.startswith("# format:"):
            section = "org" if line.startswith("# format:org_id") else "aut"
            continue
        if line.startswith("#"):
            continue
        f = line.split("|")
        if section == "org":
            obj = {"changed": f[1], "country": f[3], "name": f[2], "organizationId": f[0]}
            jsonl.append(json.dumps({**obj, "source": f[4], "type": "Organization"}))
        else:
            obj = {"asn": f[0], "changed": f[1], "name": f[2], "opaqueId": f[4]}
            jsonl.append(json.dumps({**obj, "organizationId": f[3], "type": "ASN"}))
    assert parse_as2org(jsonl) == parse_as2org(lines)


# ---------------------------------------------------------------------------------------
# Empty metadata, never an exception


@pytest.mark.parametrize(
    ("ip", "status"),
    [
        ("10.1.2.3", "special"),
        ("192.168.1.1", "special"),
        ("172.16.5.4", "special"),
        ("127.0.0.1", "special"),
        ("100.64.0.1", "special"),
        ("169.254.1.1", "special"),
        ("0.0.0.0", "special"),
        ("224.0.0.251", "special"),
        ("255.255.255.255", "special"),
        ("192.0.2.1", "special"),
        ("::1", "special"),
        ("fe80::1", "special"),
        ("2001:db8::1", "special"),
        ("2001:4860:4860::8888", "no_table"),  # IPv6 without an IPv6 table
        ("", "invalid"),
        ("garbage", "invalid"),
        ("1.2.3", "invalid"),
        ("1.2.3.4.5", "invalid"),
        ("01.02.03.04", "invalid"),
        ("256.1.1.1", "invalid"),
        ("1.2.3.4/24", "invalid"),
        ("1.2.3.4\x00", "invalid"),
        (None, "invalid"),
        (16843009, "invalid"),
        ("203.0.113.5", "special"),  # documentation range under a 203/8 slow path
    ],
)
def test_special_and_unparsable_ips_give_empty_metadata(
    real_enricher: Enricher, ip: object, status: str
) -> None:
    m = real_enricher.lookup(ip)  # type: ignore[arg-type]
    assert m.is_empty and m.as_name is None and m.country is None
    assert m.status == status
    assert m.sources == ()


def test_unrouted_public_ip_is_empty_but_names_the_table(real_enricher: Enricher) -> None:
    m = real_enricher.lookup("100.0.0.1")  # public, no prefix in the excerpt
    assert m.is_empty and m.status == "not_routed"
    assert m.sources == ("routeviews-rv2-00000000-test",)


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(real_enricher: Enricher) -> None:
    assert real_enricher.lookup("::ffff:8.8.8.8").netblock == "8.8.8.0/24"
    assert real_enricher.lookup(" 8.8.8.8 ").asn == 15169


def test_ipv6_table_longest_match() -> None:
    table = parse_pfx2as(
        ["2001:4860::\t32\t15169", "2001:4860:4860::\t48\t15169_36040", "2a00::\t12\t3320"]
    )
    e = Enricher(
        pfx2as=parse_pfx2as(["8.8.8.0\t24\t15169"]),
        pfx2as_id="rv2",
        pfx2as6=table,
        pfx2as6_id="routeviews-rv6-20210530-1200",
    )
    m = e.lookup("2001:4860:4860::8888")
    assert (m.netblock, m.asn, m.sources) == (
        "2001:4860:4860::/48",
        15169,
        ("routeviews-rv6-20210530-1200",),
    )
    assert e.lookup("2001:4860:1::1").netblock == "2001:4860::/32"
    assert e.lookup("2a0f::1").netblock == "2a00::/12"
    assert e.lookup("8.8.8.8").sources == ("rv2",)


@settings(max_examples=300, deadline=None)
@given(hs.text(max_size=60))
def test_lookup_never_raises_on_any_text(text: str) -> None:
    e = _small_enricher()
    m = e.lookup(text)
    assert isinstance(m, IpMetadata)


_SMALL: list[Enricher] = []


def _small_enricher() -> Enricher:
    if not _SMALL:
        _SMALL.append(
            Enricher(pfx2as=parse_pfx2as(["1.0.0.0\t8\t1", "2001::\t16\t2"]), pfx2as_id="x")
        )
    return _SMALL[0]


@settings(max_examples=400, deadline=None)
@given(hs.integers(min_value=0, max_value=2**32 - 1))
def test_matcher_agrees_with_brute_force_on_the_real_table(addr: int) -> None:
    lines = _real_lines(PFX2AS)
    table = _table_cache(lines)
    nets = _nets_cache(lines)
    ip = ipaddress.IPv4Address(addr)
    covering = [(n, asn) for n, asn in nets if ip in n]
    want = max(covering, key=lambda c: c[0].prefixlen, default=None)
    got = table.lookup(str(ip))
    if want is None:
        assert got is None
    else:
        assert got is not None and (got.netblock, got.asn) == (str(want[0]), want[1])


@settings(max_examples=200, deadline=None)
@given(hs.sampled_from(range(402)), hs.integers(min_value=0, max_value=2**32 - 1))
def test_matcher_agrees_with_brute_force_inside_real_prefixes(i: int, noise: int) -> None:
    # Addresses inside table prefixes (uniform addresses rarely hit a 402-line table).
    lines = _real_lines(PFX2AS)
    nets = _nets_cache(lines)
    net = nets[i][0]
    ip = ipaddress.IPv4Address(int(net.network_address) + noise % net.num_addresses)
    want = max(((n, a) for n, a in nets if ip in n), key=lambda c: c[0].prefixlen)
    got = _table_cache(lines).lookup(str(ip))
    assert got is not None and (got.netblock, got.asn) == (str(want[0]), want[1])


_CACHE: dict[str, object] = {}


def _table_cache(lines: list[str]) -> PrefixTable:
    table = _CACHE.get("table")
    if not isinstance(table, PrefixTable):
        table = _CACHE["table"] = parse_pfx2as(lines)
    return table


def _nets_cache(lines: list[str]) -> list[tuple[ipaddress.IPv4Network, int]]:
    if "nets" not in _CACHE:
        out = []
        for line in lines:
            prefix, length, origin = line.split("\t")
            out.append((ipaddress.IPv4Network(f"{prefix}/{length}"), parse_origin(origin)[0]))
        _CACHE["nets"] = out
    return _CACHE["nets"]  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Parsers


def test_parse_asn_and_origin() -> None:
    assert parse_asn("4200010324") == 4200010324
    assert parse_asn("1.10") == 65546  # asdot
    for bad in ("", "x", "-1", "1.70000", "4294967296", "1_2"):
        with pytest.raises(ValueError):
            parse_asn(bad)
    assert parse_origin("12025_11217,20019") == (12025, (12025, 11217, 20019))
    assert parse_origin("16625_16625,65002") == (16625, (16625, 65002))


def test_parse_pfx2as_skips_bad_lines_and_keeps_first_duplicate() -> None:
    table = parse_pfx2as(
        [
            b"1.0.0.0\t24\t13335",
            "1.0.0.0\t24\t99",  # duplicate prefix: first line wins
            "",
            "# comment",
            "1.0.0.0\t33\t1",  # length out of range
            "300.0.0.0\t8\t1",
            "1.2.3.0\t24",
            "1.2.3.0\t24\tAS1",
            "9.9.9.9\t24\t19281",  # host bits set: ignored
        ]
    )
    assert (len(table), table.bad_lines) == (2, 4)
    assert table.lookup("1.0.0.1") == ("1.0.0.0/24", 13335, "13335")
    assert table.lookup("9.9.9.200") == ("9.9.9.0/24", 19281, "19281")
    assert parse_ip("::ffff:1.2.3.4") == (4, 0x01020304)


def test_parse_as2org_pipe_sections_in_either_order_and_old_field_lists() -> None:
    old_readme_order = [
        "# name: AS Org",
        "# format: aut|changed|name|org_id|source",  # 5 fields, AS section first
        "1|20120224|LVLT-1|LVLT-ARIN|ARIN",
        "2|20120224|NO-ORG|MISSING-ORG|ARIN",
        "notanasn|x|y|z|w",
        "3|short",
        "# format: org_id|changed|name|country|source",
        "LVLT-ARIN|20120130|Level 3 Communications, Inc.|US|ARIN",
        "PIPE-ORG|20120130|Name | With Pipe|DE|RIPE",
    ]
    got = parse_as2org(old_readme_order)
    assert got == {
        1: AsOrg("LVLT-1", "Level 3 Communications, Inc.", "US"),
        2: AsOrg("NO-ORG", None, None),
    }
    current = [
        "# format:org_id|changed|org_name|country|source",
        "PIPE-ORG|20120130|Name | With Pipe|DE|RIPE",
        "EMPTY-ORG|||JP|JPNIC",
        "# format:aut|changed|aut_name|org_id|opaque_id|source",
        "7|20180220|PIPED|PIPE-ORG|abc_ARIN|ARIN",
        "8||E|EMPTY-ORG||JPNIC",
    ]
    assert parse_as2org(current) == {
        7: AsOrg("PIPED", "Name | With Pipe", "DE"),
        8: AsOrg("E", None, "JP"),
    }


def test_parse_as2org_jsonl() -> None:
    lines = [
        '{"changed":"20121010","country":"US","name":"99MAIN NETWORK SERVICES",'
        '"organizationId":"9NS-ARIN","source":"ARIN","type":"Organization"}',
        '{"asn":"400644","changed":"20220418","name":"BGPKIT-LLC","opaqueId":"x_ARIN",'
        '"organizationId":"BL-1057-ARIN","source":"ARIN","type":"ASN"}',
        '{"country":"US","name":"BGPKIT LLC","organizationId":"BL-1057-ARIN",'
        '"source":"ARIN","type":"Organization"}',
        '{"asn":"6","name":"NINE","organizationId":"9NS-ARIN","type":"ASN"}',
        '{"asn":"x","type":"ASN"}',
        "{broken json",
        "[1, 2]",
    ]
    assert parse_as2org(lines) == {
        400644: AsOrg("BGPKIT-LLC", "BGPKIT LLC", "US"),
        6: AsOrg("NINE", "99MAIN NETWORK SERVICES", "US"),
    }


def test_parse_as2types() -> None:
    lines = [
        "# format: as|source|type",
        "# types: Content|Enterpise|Transit/Access",  # the 2015 misspelling: header ignored
        "1|CAIDA_class|Transit/Access",
        "13335|peerDB_class|Content",
        "7|manual_class|Enterprise",
        "bad|x|y",
        "9|CAIDA_class|",
        "10",
    ]
    assert parse_as2types(lines) == {1: "Transit/Access", 13335: "Content", 7: "Enterprise"}


# ---------------------------------------------------------------------------------------
# Optional organisation source (MMDB design hook)


class _FakeOrgSource:
    file_id = "dbip-isp-2025-02"

    def __init__(self, answers: dict[str, tuple[int | None, str | None] | None]) -> None:
        self.answers = answers

    def lookup(self, ip: str) -> tuple[int | None, str | None] | None:
        if ip == "boom":
            raise RuntimeError("reader failed")
        return self.answers.get(ip)


def test_org_source_kept_only_when_its_asn_agrees() -> None:
    table = parse_pfx2as(["8.8.8.0\t24\t15169", "1.1.1.0\t24\t13335"])
    src = _FakeOrgSource({"8.8.8.8": (15169, "Google LLC"), "1.1.1.1": (9999, "Other Org")})
    e = Enricher(pfx2as=table, pfx2as_id="rv", org_source=src)
    agree, disagree = e.lookup("8.8.8.8"), e.lookup("1.1.1.1")
    assert (agree.organization, agree.sources) == ("Google LLC", ("rv", "dbip-isp-2025-02"))
    assert (disagree.organization, disagree.sources) == (None, ("rv",))
    assert e.lookup("8.8.4.4").organization is None  # not in the MMDB


def test_as_columns_for_rows() -> None:
    m = IpMetadata(netblock="8.8.8.0/24", asn=15169, as_name="GOOGLE", country="US")
    cols = m.as_columns("resolver")
    assert cols["resolver_netblock"] == "8.8.8.0/24" and cols["resolver_asn"] == 15169
    assert set(cols) == {
        "resolver_netblock",
        "resolver_asn",
        "resolver_as_name",
        "resolver_as_full_name",
        "resolver_as_class",
        "resolver_country",
        "resolver_organization",
    }


# ---------------------------------------------------------------------------------------
# ReferenceCatalog


def _gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode())


def _put(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


@pytest.fixture
def catalog_root(tmp_path: Path) -> Path:
    """A mirrored layout: routeviews files with different tables, AS snapshots."""
    rv = "routeviews/2021/05/routeviews-rv2-{}.pfx2as.gz"
    _put(tmp_path, rv.format("20210501-1200"), _gz(["8.8.8.0\t24\t1501"]))
    _put(tmp_path, rv.format("20210530-0000"), _gz(["8.8.8.0\t24\t3000"]))
    _put(tmp_path, rv.format("20210530-1200"), _gz(["8.8.8.0\t24\t15169"]))
    _put(tmp_path, "routeviews/README.txt", b"not a pfx2as file")
    org = [
        "# format:org_id|changed|org_name|country|source",
        "GOGL-ARIN||Google LLC|US|ARIN",
        "# format:aut|changed|aut_name|org_id|opaque_id|source",
        "15169||GOOGLE|GOGL-ARIN||ARIN",
    ]
    _put(tmp_path, "as-organizations/20210101.as-org2info.txt.gz", _gz(org))
    _put(tmp_path, "as-organizations/20210401.as-org2info.txt.gz", _gz(org))
    jsonl = [
        '{"organizationId":"GOGL-ARIN","name":"Google LLC (jsonl)","country":"US",'
        '"type":"Organization"}',
        '{"asn":"15169","name":"GOOGLE","organizationId":"GOGL-ARIN","type":"ASN"}',
    ]
    _put(tmp_path, "as-organizations/20210401.as-org2info.jsonl.gz", _gz(jsonl))
    _put(tmp_path, "as-classifications/20201101.as2types.txt.gz", _gz(["15169|x|Content"]))
    _put(tmp_path, "as-classifications/20210401.as2types.txt.gz", _gz(["15169|x|Enterprise"]))
    return tmp_path


def test_catalog_choice_by_date(catalog_root: Path) -> None:
    cat = ReferenceCatalog(str(catalog_root), max_staleness_days=30)
    sel = cat.choose(dt.date(2021, 5, 30))
    assert sel.routeviews is not None and sel.as2org is not None and sel.as2class is not None
    assert sel.routeviews.file_id == "routeviews-rv2-20210530-1200"  # latest RIB time
    assert sel.as2org.file_id == "20210401.as-org2info"
    assert sel.as2org.url.endswith(".jsonl.gz")  # JSONL preferred on the same date
    assert sel.as2class.file_id == "20210401.as2types"
    assert sel.age_days("as2org") == 59

    sel = cat.choose(dt.date(2021, 5, 15))
    assert sel.routeviews is not None
    assert sel.routeviews.file_id == "routeviews-rv2-20210501-1200"

    # Beyond the staleness limit: no routeviews, reason "stale"; snapshots still chosen.
    sel = cat.choose(dt.date(2021, 7, 15))
    assert (sel.routeviews, sel.routeviews_reason) == (None, "stale")
    assert sel.as2org is not None and sel.as2org.file_id == "20210401.as-org2info"
    relaxed = ReferenceCatalog(str(catalog_root), max_staleness_days=60).choose(
        dt.date(2021, 7, 15)
    )
    assert relaxed.routeviews is not None and relaxed.routeviews_reason is None

    # Before every routeviews file: "missing". Snapshot at or before, else earliest after.
    sel = cat.choose(dt.date(2021, 4, 1))
    assert (sel.routeviews, sel.routeviews_reason) == (None, "missing")
    assert sel.as2org is not None and sel.as2org.file_id == "20210401.as-org2info"
    sel = cat.choose(dt.date(2020, 6, 1))
    assert sel.as2org is not None and sel.as2org.file_id == "20210101.as-org2info"
    assert sel.as2class is not None and sel.as2class.file_id == "20201101.as2types"


def test_catalog_enricher_uses_the_dated_files_and_caches(catalog_root: Path) -> None:
    cat = ReferenceCatalog(str(catalog_root), max_tables=1)
    e, _ = cat.enricher_for(dt.date(2021, 5, 31))
    m = e.lookup("8.8.8.8")
    assert (m.asn, m.as_name, m.as_full_name, m.as_class) == (
        15169,
        "GOOGLE",
        "Google LLC (jsonl)",
        "Enterprise",
    )
    assert m.sources == (
        "routeviews-rv2-20210530-1200",
        "20210401.as-org2info",
        "20210401.as2types",
    )
    loads = cat.loads
    cat.enricher_for(dt.date(2021, 6, 2))  # same files: all cached
    assert cat.loads == loads
    e2, _ = cat.enricher_for(dt.date(2021, 5, 10))  # other routeviews file: one load
    assert cat.loads == loads + 1
    assert e2.lookup("8.8.8.8").asn == 1501
    cat.enricher_for(dt.date(2021, 5, 31))  # evicted (max_tables=1): loaded again
    assert cat.loads == loads + 2


def test_enrich_pairs_keeps_rows_of_stale_dates(catalog_root: Path) -> None:
    cat = ReferenceCatalog(str(catalog_root), max_staleness_days=30)
    d_ok, d_stale = dt.date(2021, 5, 30), dt.date(2021, 9, 1)
    pairs: list[tuple[dt.date, Any]] = [
        (d_ok, "8.8.8.8"),
        (d_ok, "8.8.8.8"),  # looked up once
        (d_ok, "10.0.0.1"),
        (d_ok, "x"),
        (d_ok, None),  # a row without an IP
        (d_stale, "8.8.8.8"),
    ]
    out, stats = enrich_pairs(cat, pairs)
    assert len(out) == 5
    assert out[(d_ok, "8.8.8.8")].asn == 15169
    stale = out[(d_stale, "8.8.8.8")]
    assert stale.is_empty and stale.status == "no_table" and stale.sources == ()
    assert stats.dates_without_routeviews == {d_stale: "stale"}
    assert dict(stats.by_status) == {"ok": 1, "special": 1, "invalid": 2, "no_table": 1}
    assert stats.coverage == 0.2


def test_catalog_on_an_empty_or_absent_root(tmp_path: Path) -> None:
    cat = ReferenceCatalog(str(tmp_path / "nothing"))
    sel = cat.choose(dt.date(2021, 1, 1))
    assert (sel.routeviews, sel.routeviews_reason, sel.as2org, sel.as2class) == (
        None,
        "missing",
        None,
        None,
    )
    e, _ = cat.enricher_for(dt.date(2021, 1, 1))
    assert e.lookup("8.8.8.8").status == "no_table"


def test_catalog_ipv6_files_feed_ipv6_lookups(catalog_root: Path) -> None:
    _put(
        catalog_root,
        "routeviews6/2021/05/routeviews-rv6-20210529-1200.pfx2as.gz",
        _gz(["2001:4860::\t32\t15169"]),
    )
    e, sel = ReferenceCatalog(str(catalog_root)).enricher_for(dt.date(2021, 5, 30))
    assert sel.routeviews6 is not None
    m = e.lookup("2001:4860:4860::8888")
    assert (m.netblock, m.asn, m.as_name) == ("2001:4860::/32", 15169, "GOOGLE")
    assert m.sources[0] == "routeviews-rv6-20210529-1200"
    assert e.lookup("8.8.8.8").sources[0] == "routeviews-rv2-20210530-1200"


# ---------------------------------------------------------------------------------------
# The inlined parse path and the compact (cached) forms


def _parse_with_add(lines: list[str]) -> PrefixTable:
    """The reference: every line through PrefixTable.add (the general path)."""
    table = PrefixTable()
    for text in (line.strip() for line in lines):
        if not text or text[0] == "#":
            continue
        parts = text.split("\t")
        if len(parts) != 3:
            parts = text.split()
        try:
            prefix, length, origin = parts
            table.add(prefix, int(length), origin)
        except (ValueError, OSError):
            table.bad_lines += 1
    return table.freeze()


def _same_table(a: PrefixTable, b: PrefixTable) -> None:
    assert (a._v4, a._v6, a._raw) == (b._v4, b._v6, b._raw)
    arrays = ("_p_start", "_p_len", "_p_asn", "_p_parent")
    assert [getattr(a, n) for n in arrays] == [getattr(b, n) for n in arrays]
    assert (a.count, a.bad_lines, a.lengths(4), a.lengths(6)) == (
        b.count,
        b.bad_lines,
        b.lengths(4),
        b.lengths(6),
    )
    assert a._deep6 == b._deep6


_PREFIXES = hs.sampled_from(
    ["1.2.3.0", "8.8.8.8", "01.2.3.4", "255.255.255.255", "0.0.0.0", "2001:db8::", "::", "x"]
)
_LENGTHS = hs.one_of(
    hs.integers(0, 40).map(str), hs.sampled_from(["024", " 24", "2_4", "+8", "", "x", "٢"])
)
_ORIGINS = hs.one_of(
    hs.integers(0, 2**32 + 5).map(str),
    hs.sampled_from(["015169", "00", "1_2", "3,4_5", "1.10", "", "AS1", "١٢", "4294967296"]),
)


@settings(max_examples=300, deadline=None)
@given(
    hs.lists(hs.tuples(_PREFIXES, _LENGTHS, _ORIGINS, hs.sampled_from(["\t", " "])), max_size=30)
)
def test_inlined_parse_equals_the_general_path(parts: list[tuple[str, str, str, str]]) -> None:
    lines = [sep.join(p) for *p, sep in parts]
    _same_table(parse_pfx2as(lines), _parse_with_add(lines))


def test_inlined_parse_equals_the_general_path_on_the_real_excerpt() -> None:
    lines = _real_lines(PFX2AS)
    _same_table(parse_pfx2as(lines), _parse_with_add(lines))


def test_compact_prefix_table_round_trip() -> None:
    lines = [*_real_lines(PFX2AS), "2001:4860::\t32\t15169", "2001:4860:4860::8888\t128\t1_2"]
    lines += ["2c0f:fb50::\t32\t015169", "bad line"]
    table = parse_pfx2as(lines)
    back = PrefixTable.from_bytes(table.to_bytes())
    _same_table(back, table)
    for ip in ("8.8.8.8", "146.112.62.39", "2001:4860:4860::8888", "2c0f:fb50::1", "9.9.9.9"):
        assert back.lookup(ip) == table.lookup(ip)
    assert back.lookup("2c0f:fb50::1") == ("2c0f:fb50::/32", 15169, "015169")
    blob = table.to_bytes()
    for bad in (b"", blob[:-3], blob + b"x", b"\x05" + blob[1:]):
        with pytest.raises(ValueError):
            PrefixTable.from_bytes(bad)


def test_compact_as_tables_round_trip() -> None:
    from services.common.ipmeta import (
        as2org_from_bytes,
        as2org_to_bytes,
        as2types_from_bytes,
        as2types_to_bytes,
    )

    orgs = parse_as2org(_real_lines(AS2ORG))
    orgs[7] = AsOrg("NAME-ONLY", None, None)
    back = as2org_from_bytes(as2org_to_bytes(orgs))
    assert dict(back) == orgs and len(back) == len(orgs)
    absent = next(a for a in range(1, 2**16) if a not in orgs)
    assert back[7] == AsOrg("NAME-ONLY", None, None)
    assert back.get(absent) is None and absent not in back
    assert back.get(-1) is None and back.get("15169") is None  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        back[2**40]
    types = parse_as2types(_real_lines(AS2TYPES))
    assert as2types_from_bytes(as2types_to_bytes(types)) == types
    for bad in (b"", b"{}", b"[1]", b'{"asn": [1], "org": []}'):
        with pytest.raises(ValueError):
            as2org_from_bytes(bad)
        with pytest.raises(ValueError):
            as2types_from_bytes(bad)


def _loaded(cat: ReferenceCatalog, day: dt.date) -> tuple[Any, Any, Any]:
    sel = cat.choose(day)
    assert sel.routeviews and sel.as2org and sel.as2class
    return (
        cat.load_pfx2as(sel.routeviews),
        cat.load_as2org(sel.as2org),
        cat.load_as2types(sel.as2class),
    )


def test_catalog_cache_is_written_once_then_read(catalog_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    day = dt.date(2021, 5, 31)
    plain = _loaded(ReferenceCatalog(str(catalog_root)), day)
    first = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    got = _loaded(first, day)
    assert (first.cache_hits, first.cache_writes) == (0, 3)
    names = sorted(p.name for p in cache.iterdir() if p.name != ".lock")
    assert len(names) == 3 and all(n.endswith(".cpmeta") for n in names)
    assert names[0].startswith("20210401.as-org2info.as2org.")
    second = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    again = _loaded(second, day)
    assert (second.cache_hits, second.cache_writes) == (3, 0)
    for a, b, c in zip(plain, got, again, strict=True):
        if isinstance(a, PrefixTable):
            _same_table(a, b)
            _same_table(a, c)
        else:
            assert dict(a) == dict(b) == dict(c)
    e, _ = second.enricher_for(day)
    assert e.lookup("8.8.8.8").as_full_name == "Google LLC (jsonl)"


def test_catalog_cache_follows_the_file_bytes(catalog_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    day = dt.date(2021, 5, 31)
    _loaded(ReferenceCatalog(str(catalog_root), cache_dir=cache), day)
    # The same file name with other contents (a re-mirrored file) is parsed anew.
    _put(
        catalog_root,
        "routeviews/2021/05/routeviews-rv2-20210530-1200.pfx2as.gz",
        _gz(["8.8.8.0\t24\t64500"]),
    )
    cat = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    table, _, _ = _loaded(cat, day)
    assert table.lookup("8.8.8.8").asn == 64500
    assert (cat.cache_hits, cat.cache_writes) == (2, 1)


def test_catalog_cache_damage_is_logged_and_repaired(
    catalog_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")  # an earlier test may have left a higher level
    cache = tmp_path / "cache"
    day = dt.date(2021, 5, 31)
    _loaded(ReferenceCatalog(str(catalog_root), cache_dir=cache), day)
    (entry,) = cache.glob("routeviews-*.cpmeta")
    blob = bytearray(entry.read_bytes())
    blob[-1] ^= 0xFF
    entry.write_bytes(bytes(blob))
    cat = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    table, _, _ = _loaded(cat, day)
    assert table.lookup("8.8.8.8").asn == 15169
    assert (cat.cache_hits, cat.cache_writes) == (2, 1)
    err = capsys.readouterr().err
    assert "ipmeta_cache_damaged" in err and "checksum mismatch" in err
    cat2 = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    _loaded(cat2, day)
    assert cat2.cache_hits == 3  # rewritten whole


def _compile_all(root: Path) -> list[str]:
    """compile_reference for every mirrored file under ``root`` (as services/routeviews
    does after a sync); the entry names."""
    storage = st.storage_for(str(root))
    cat = ReferenceCatalog(str(root))
    names = []
    for kind in KIND_FOLDERS:
        for ref in cat.available(kind):
            result, name = compile_reference(storage, str(root), ref)
            assert result == "compiled"
            names.append(name)
    assert [compile_reference(storage, str(root), ref, set(names))[0]
            for ref in cat.available(KIND_ROUTEVIEWS)] == ["present"] * 3  # fmt: skip
    return sorted(names)


def test_catalog_reads_the_compiled_forms_instead_of_parsing(
    catalog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = dt.date(2021, 5, 31)
    plain = _loaded(ReferenceCatalog(str(catalog_root)), day)
    names = _compile_all(catalog_root)
    assert sorted(p.name for p in (catalog_root / COMPILED_DIR).iterdir()) == names
    # Parsing is not possible any more: every table must come from compiled/.
    for parser in ("parse_pfx2as", "parse_as2org", "parse_as2types"):
        monkeypatch.setattr(ipmeta, parser, _no_parse)
    cache = tmp_path / "cache"
    for cat in (ReferenceCatalog(str(catalog_root)),
                ReferenceCatalog(str(catalog_root), cache_dir=cache)):  # fmt: skip
        got = _loaded(cat, day)
        assert cat.compiled_hits == 3
        for a, b in zip(plain, got, strict=True):
            if isinstance(a, PrefixTable):
                _same_table(a, b)
            else:
                assert dict(a) == dict(b)
    # ... and the local cache took them as they were: the next process reads it.
    cached = sorted(cache.glob("*.cpmeta"))
    assert len(cached) == 3
    for entry in cached:
        assert entry.read_bytes() == (catalog_root / COMPILED_DIR / entry.name).read_bytes()
    again = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    _loaded(again, day)
    assert (again.cache_hits, again.compiled_hits) == (3, 0)


def _no_parse(lines: Any) -> Any:
    raise AssertionError("parsed instead of read from compiled/")


def test_catalog_a_damaged_or_stale_compiled_form_is_parsed_instead(
    catalog_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    day = dt.date(2021, 5, 31)
    _compile_all(catalog_root)
    (entry,) = (catalog_root / COMPILED_DIR).glob("routeviews-rv2-20210530-1200.*")
    blob = bytearray(entry.read_bytes())
    blob[-1] ^= 0xFF
    entry.write_bytes(bytes(blob))
    cat = ReferenceCatalog(str(catalog_root))
    table, _, _ = _loaded(cat, day)
    assert table.lookup("8.8.8.8").asn == 15169
    assert cat.compiled_hits == 2
    err = capsys.readouterr().err
    assert "ipmeta_compiled_damaged" in err and "checksum mismatch" in err
    # A file mirrored again with other bytes has no entry under its new name: parsed.
    _put(
        catalog_root,
        "routeviews/2021/05/routeviews-rv2-20210530-1200.pfx2as.gz",
        _gz(["8.8.8.0\t24\t64500"]),
    )
    cat = ReferenceCatalog(str(catalog_root))
    table, _, _ = _loaded(cat, day)
    assert table.lookup("8.8.8.8").asn == 64500
    assert cat.compiled_hits == 2


def test_catalog_cache_folder_that_cannot_be_written(
    catalog_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")  # an earlier test may have left a higher level
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    cat = ReferenceCatalog(str(catalog_root), cache_dir=blocker / "sub")
    table, orgs, _ = _loaded(cat, dt.date(2021, 5, 31))
    assert table.lookup("8.8.8.8").asn == 15169 and orgs[15169].as_name == "GOOGLE"
    assert (cat.cache_hits, cat.cache_writes) == (0, 0)
    err = capsys.readouterr().err
    assert err.count("ipmeta_cache_not_written") == 1  # said once, not per file


def test_catalog_cache_keeps_the_most_recently_used(
    catalog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.common.ipmeta as ipmeta

    monkeypatch.setattr(ipmeta, "CACHE_KEEP", 2)
    cache = tmp_path / "cache"
    (cache / "keep-me.txt").parent.mkdir()
    (cache / "keep-me.txt").write_text("not ours")
    cat = ReferenceCatalog(str(catalog_root), cache_dir=cache)
    _loaded(cat, dt.date(2021, 5, 31))
    assert len(list(cache.glob("*.cpmeta"))) == 2
    assert (cache / "keep-me.txt").exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from services.common.ipmeta import CACHE_ENV, default_cache_dir

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    for off in ("off", "", "0"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert default_cache_dir() is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cp-pipeline" / "ipmeta"


_BASES = [0x08080800, 0x08000000, 0xC0A80000, 0x0A000000, 0xFFFFFFFF, 0]


@settings(max_examples=300, deadline=None)
@given(
    hs.lists(
        hs.tuples(hs.sampled_from(_BASES), hs.integers(0, 2**12), hs.integers(0, 32)),
        max_size=40,
    ),
    hs.lists(hs.tuples(hs.sampled_from(_BASES), hs.integers(-(2**12), 2**12)), max_size=30),
)
def test_nested_v4_prefixes_match_brute_force(
    prefixes: list[tuple[int, int, int]], probes: list[tuple[int, int]]
) -> None:
    """Clustered prefixes (deep nesting, shared starts, /0 and /32) against brute force."""
    nets: dict[ipaddress.IPv4Network, int] = {}
    lines = []
    for i, (base, offset, length) in enumerate(prefixes):
        net = ipaddress.IPv4Network(((base + offset * 37) % 2**32, length), strict=False)
        lines.append(f"{net.network_address}\t{length}\t{i + 1}")
        nets.setdefault(net, i + 1)
    table = parse_pfx2as(lines)
    half = len(lines) // 2  # also: added after a freeze (thawed, then frozen again)
    grown = parse_pfx2as(lines[:half])
    for line in lines[half:]:
        prefix, length, origin = line.split("\t")
        grown.add(prefix, int(length), origin)
    grown.freeze()
    _same_table(grown, table)
    addrs = [(base + delta) % 2**32 for base, delta in probes]
    addrs += [int(n.network_address) for n in nets] + [int(n.broadcast_address) for n in nets]
    for addr in addrs:
        ip = ipaddress.IPv4Address(addr)
        covering = [(n, asn) for n, asn in nets.items() if ip in n]
        want = max(covering, key=lambda c: c[0].prefixlen, default=None)
        got = table.lookup(str(ip))
        if want is None:
            assert got is None
        else:
            assert got is not None and (got.netblock, got.asn) == (str(want[0]), want[1])


def test_catalog_cache_one_parse_when_processes_start_together(
    catalog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two catalogs (as two worker processes) loading at once: the folder lock makes one
    parse and write each file while the other waits and reads its entry."""
    import threading
    import time

    import services.common.ipmeta as ipmeta

    real_parse = ipmeta.parse_pfx2as

    def slow_parse(lines: Any) -> PrefixTable:
        time.sleep(0.5)
        return real_parse(lines)

    monkeypatch.setattr(ipmeta, "parse_pfx2as", slow_parse)
    cache = tmp_path / "cache"
    cats = [ReferenceCatalog(str(catalog_root), cache_dir=cache) for _ in range(2)]
    start = threading.Barrier(2)
    results: list[Any] = []

    def work(cat: ReferenceCatalog) -> None:
        start.wait()
        results.append(_loaded(cat, dt.date(2021, 5, 31))[0].lookup("8.8.8.8"))

    threads = [threading.Thread(target=work, args=(c,)) for c in cats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.asn for r in results] == [15169, 15169]
    assert sum(c.cache_writes for c in cats) == 3
    assert sum(c.cache_hits for c in cats) == 3
