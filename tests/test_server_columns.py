"""Whole-batch server lookups give what Enricher.lookup_fields gives one at a time."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from services.beam_launcher.enrichment.server_columns import SERVER_COLUMNS, ServerTables
from services.common.ipmeta import AsOrg, AsOrgTable, Enricher, parse_pfx2as

PREFIXES = [
    "0.0.0.0\t1\t5",  # ASN below every AS key
    "8.0.0.0\t8\t100",  # in both AS tables
    "8.8.0.0\t16\t200",  # names only
    "8.8.8.0\t24\t300",  # class only
    "8.8.8.128\t25\t400",  # in neither
    "9.0.0.0\t8\t4294967295",  # above every AS key
    "11.0.0.0\t8\t100_200",  # multi-origin
    "2001:db8::\t32\t100",
]
AS2ORG = {100: AsOrg("A", "A Inc", "US"), 200: AsOrg("B", None, "DE"), 250: AsOrg(None, "C", None)}
AS2TYPES = {100: "Content", 300: "Transit/Access", 350: "Enterprise"}
ODD = [None, "", "x", "1.2.3", "1.2.3.04", " 8.8.8.8 ", "8.8.8.8\x00", "10.0.0.1", "127.0.0.1"]
ODD += ["100.64.0.1", "192.0.2.1", "224.0.0.1", "255.255.255.255", "::ffff:8.8.8.8"]
ODD += ["2001:db8::1", "2002::1", 42, b"8.8.8.8"]


def enricher(**parts: Any) -> Enricher:
    return Enricher(
        pfx2as=parse_pfx2as(PREFIXES),
        pfx2as_id="rv",
        as2org=parts.get("as2org", AS2ORG),
        as2org_id="org",
        as2types=parts.get("as2types", AS2TYPES),
        as2types_id="types",
    )


def check(e: Enricher, ips: list[Any]) -> None:
    tables = ServerTables.of(e)
    assert tables is not None
    out = tables.lookup(ips, e.lookup_fields)
    want = [e.lookup_fields(ip) for ip in ips]
    for j, name in enumerate(SERVER_COLUMNS):
        assert out.arrays[name].to_pylist() == [w[j] for w in want], name
    assert out.arrays["ip_metadata_sources"].to_pylist() == [list(w[7]) for w in want]
    assert out.statuses.tolist() == [w[8] for w in want]
    assert out.has_asn.tolist() == [w[1] is not None for w in want]
    assert out.has_country.tolist() == [w[5] is not None for w in want]
    # Per row (the launcher's call): the servers' values taken by the row index.
    rows = np.array([random.Random(len(ips)).randrange(len(ips)) for _ in range(3 * len(ips))])
    by_row = tables.lookup(ips, e.lookup_fields, rows.astype(np.int64))
    assert by_row.arrays.keys() == out.arrays.keys()
    for name, values in out.arrays.items():
        assert by_row.arrays[name].equals(values.take(pa.array(rows, pa.int64()))), name
    assert by_row.statuses.tolist() == out.statuses.tolist()
    assert (by_row.has_asn == out.has_asn).all() and (by_row.has_country == out.has_country).all()


def test_routed_unrouted_and_other_values() -> None:
    ips = ["8.1.1.1", "8.8.1.1", "8.8.8.8", "8.8.8.200", "9.1.1.1", "11.1.1.1", "200.1.1.1"]
    check(enricher(), [*ips, *ODD, "1.1.1.1", "0.255.255.255"])
    check(enricher(), [*ips, "1.1.1.1", "0.255.255.255"])  # every one an IPv4 address
    check(enricher(), [" 8.8.8.8", "8.8.8.8", 1, None])  # not all strings


@pytest.mark.parametrize("seed", range(4))
def test_random_addresses(seed: int) -> None:
    rng = random.Random(seed)
    ips = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(500)]
    ips += [f"8.8.8.{rng.randrange(256)}" for _ in range(50)]
    check(enricher(), ips)


def test_the_catalogs_compact_as_table() -> None:
    compact = AsOrgTable.from_mapping(AS2ORG)
    check(enricher(as2org=compact), ["8.1.1.1", "8.8.1.1", "8.8.8.8", "8.8.8.200", "9.1.1.1"])
    check(enricher(as2org=AsOrgTable.from_mapping({})), ["8.1.1.1", "8.8.8.8"])


def test_empty_as_tables_and_no_servers() -> None:
    check(enricher(as2org={}, as2types={}), ["8.8.8.8", "9.9.9.9", "x"])
    check(enricher(), [])
    check(enricher(), ["10.0.0.1", None])  # nothing routed


def test_not_for_an_enricher_without_ipv4_prefixes_or_with_an_org_source() -> None:
    assert ServerTables.of(None) is None
    assert ServerTables.of(Enricher(pfx2as=None)) is None
    v6_only = Enricher(pfx2as=parse_pfx2as(["2001:db8::\t32\t1"]), pfx2as_id="rv")
    assert ServerTables.of(v6_only) is None

    class Org:
        file_id = "mmdb"

        def lookup(self, ip: str) -> tuple[int | None, str | None] | None:
            return None

    with_org = Enricher(pfx2as=parse_pfx2as(PREFIXES), pfx2as_id="rv", org_source=Org())
    assert ServerTables.of(with_org) is None


# The C reader of server addresses (``_hqfast.ipv4_values``) against the Python one.
_ADDRESS_CHARS = "0123456789.: \t\n\r\x0b\x0c\x1c\x1f\x00xé\u2003\u00a0"


def _native_or_skip() -> None:
    from services.beam_launcher import native

    if native.load("_hqfast") is None:
        pytest.skip("native module not built (python -m services.beam_launcher.native.build)")


@pytest.mark.parametrize("seed", range(3))
def test_native_addresses_equal_the_python_reading(seed: int) -> None:
    _native_or_skip()
    from services.beam_launcher.enrichment.server_columns import _address, native_addresses

    rng = random.Random(seed)
    values: list[Any] = [*ODD, "é8.8.8.8", "\u20038.8.8.8\u00a0", "1.2.3.4" * 20]
    for _ in range(5000):
        if rng.random() < 0.5:  # near-addresses: octets, padding, stray characters
            octets = [str(rng.choice([0, 1, 9, 10, 99, 255, 256, 300, rng.randrange(256)]))
                      for _ in range(rng.choice([3, 4, 4, 4, 5]))]  # fmt: skip
            text = ".".join(octets)
            pad = "".join(rng.choice(" \t\n\x1c\u2003") for _ in range(rng.randrange(3)))
            values.append(pad + text + pad[::-1])
        else:
            n = rng.randrange(12)
            values.append("".join(rng.choice(_ADDRESS_CHARS) for _ in range(n)))
    got = native_addresses(values)
    assert got is not None
    assert got.tolist() == [_address(v) for v in values]
    assert sum(1 for v in got.tolist() if v >= 0) > 100  # the generator made addresses too


def test_native_addresses_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.beam_launcher.enrichment.server_columns import native_addresses

    monkeypatch.setenv("CP_NATIVE_PARSER", "0")
    assert native_addresses(["8.8.8.8"]) is None


# The C longest-prefix search (``_hqfast.longest_prefix_v4``) against the numpy one.


def _random_prefixes(rng: random.Random, n: int) -> list[str]:
    """Nested, adjacent and lone IPv4 prefixes (pfx2as lines), /0 now and then."""
    lines = ["0.0.0.0\t0\t1"] if rng.random() < 0.5 else []
    for _ in range(n):
        length = rng.choice([8, 12, 16, 20, 22, 24, 24, 25, 28, 32])
        base = rng.choice([0x08000000, 0x0A000000, 0xC0A80000, rng.randrange(2**32)])
        start = (base + rng.randrange(1 << 20)) & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        addr = ".".join(str(start >> s & 255) for s in (24, 16, 8, 0))
        lines.append(f"{addr}\t{length}\t{rng.randrange(1, 70000)}")
    return lines


@pytest.mark.parametrize("seed", range(4))
def test_native_longest_prefix_equals_the_numpy_search(seed: int) -> None:
    _native_or_skip()
    rng = random.Random(seed)
    e = Enricher(
        pfx2as=parse_pfx2as(_random_prefixes(rng, 3000)),
        pfx2as_id="rv",
        as2org=AS2ORG,
        as2org_id="org",
        as2types=AS2TYPES,
        as2types_id="types",
    )
    tables = ServerTables.of(e)
    assert tables is not None
    starts = tables.starts
    near = [int(starts[rng.randrange(len(starts))]) + rng.choice([-1, 0, 1, 255, 256])
            for _ in range(3000)]  # fmt: skip
    addrs = np.array([rng.randrange(2**32) for _ in range(3000)] + near + [0, 2**32 - 1])
    addrs = np.clip(addrs, 0, 2**32 - 1)
    got = tables._longest_prefix(addrs)
    assert got.tolist() == tables._longest_prefix_numpy(addrs).tolist()
    assert (got >= 0).sum() > 1000 and (got < 0).sum() + (starts[0] == 0) > 0
    # as the Enricher's own lookup: an address with an ASN is in a prefix of that ASN
    checked = 0
    for a, k in zip(addrs[::6].tolist(), got[::6].tolist(), strict=True):
        asn = e.lookup_fields(".".join(str(a >> s & 255) for s in (24, 16, 8, 0)))[1]
        if asn is not None:  # (special ranges have none, found or not)
            assert k >= 0 and int(tables.asns[k]) == asn
            checked += 1
    assert checked > 100


def test_native_longest_prefix_refuses_mismatched_buffers() -> None:
    _native_or_skip()
    from services.beam_launcher import native

    module = native.load("_hqfast")
    starts = np.array([0, 1 << 24], dtype=np.int64)
    first16 = np.searchsorted(starts, np.arange(65537, dtype=np.int64) << 16)
    shifts = np.array([24, 24], dtype=np.int64)
    parents = np.array([-1, -1], dtype=np.int32)
    addrs = np.array([5, (1 << 24) + 5, -1, 2**32], dtype=np.int64)
    found = np.frombuffer(module.longest_prefix_v4(addrs, starts, first16, shifts, parents),
                          dtype=np.int64)  # fmt: skip
    assert found.tolist() == [0, 1, -1, -1]
    with pytest.raises(ValueError, match="65,537"):
        module.longest_prefix_v4(addrs, starts, first16[:-1], shifts, parents)
    with pytest.raises(ValueError, match="one per start"):
        module.longest_prefix_v4(addrs, starts, first16, shifts[:1], parents)
    with pytest.raises(ValueError, match="integers"):
        module.longest_prefix_v4(b"123", starts, first16, shifts, parents)
    with pytest.raises(TypeError):
        module.longest_prefix_v4(addrs, starts, first16, shifts)


def test_lookups_without_the_native_module_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_NATIVE_PARSER", "0")
    ips = ["8.1.1.1", "8.8.1.1", "8.8.8.8", "8.8.8.200", "9.1.1.1", "11.1.1.1", "200.1.1.1"]
    check(enricher(), [*ips, *ODD, "1.1.1.1", "0.255.255.255"])
