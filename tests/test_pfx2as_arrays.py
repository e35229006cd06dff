"""The column-wise pfx2as reader gives the line reader's table, line for line."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from services.beam_launcher.enrichment.ip_metadata import RowEnricher
from services.beam_launcher.enrichment.pfx2as_arrays import parse_pfx2as_text
from services.common import ipmeta
from services.common.ipmeta import PrefixTable, parse_pfx2as

REAL_PFX2AS = (
    Path(__file__).resolve().parents[2]
    / "shared/fixtures/real/caida/routeviews-rv2-00000000-test.pfx2as.gz"
)


def state(table: PrefixTable) -> dict[str, object]:
    """Everything a table holds and answers from."""
    return {
        "start": list(table._p_start),
        "len": list(table._p_len),
        "asn": list(table._p_asn),
        "parent": list(table._p_parent),
        "raw": dict(table._raw),
        "v6": {n: dict(b) for n, b in table._v6.items()},
        "count": table.count,
        "bad_lines": table.bad_lines,
    }


def by_lines(text: bytes) -> PrefixTable:
    return parse_pfx2as(text.decode("utf-8", "replace").splitlines())


def check_same(text: bytes) -> PrefixTable:
    got = parse_pfx2as_text(text)
    assert got is not None
    assert state(got) == state(by_lines(text))
    return got


EDGE_LINES = [
    "8.0.0.0\t9\t3356",
    "8.8.8.0\t24\t15169",
    "8.8.8.0\t24\t99999",  # the same prefix again: the first line wins
    "8.8.8.128\t25\t015169",  # leading zero: the raw origin is kept
    "8.8.8.200\t25\t7",  # host bits set: the same /25 as the line before, which wins
    "# a comment",
    "",
    "   ",
    "9.0.0.0\t8\t1_2",  # multi-origin: first origin, raw kept
    "10.0.0.0\t8\t4,5_6",  # AS set
    "11.0.0.0\t8\t1.10",  # asdot
    " 12.0.0.0\t8\t12 ",  # spaces around: the line reader strips them
    "13.0.0.0 8 13",  # space separated
    "01.2.3.0\t24\t1",  # leading zero octet: malformed
    "256.2.3.0\t24\t1",  # octet out of range
    "14.0.0.0\t33\t1",  # length out of range
    "15.0.0.0\t08\t15",  # length with a leading zero
    "16.0.0.0\t024\t16",  # a three-digit length
    "17.0.0.0\t8\t4294967296",  # ASN out of range
    "18.0.0.0\t8\t42949672950",  # eleven digits
    "19.0.0.0\t8\t4294967295",  # the largest ASN
    "0.0.0.0\t0\t20",  # the whole space
    "20.1.2.3\t32\t21",
    "20.1.2.0\t24\t22",
    "20.1.0.0\t16\t23",
    "20.1.2.3\t31\t24",
    "2001:db8::\t32\t64500",  # IPv6 lines go to the line reader
    "2001:db8::\t32\t64501",
    "21.0.0.0\t8",  # two fields
    "22.0.0.0\t8\t1\textra",  # four fields
    "23.0.0.0\t8\tabc",
    "24.0.0.0\t8\t",  # empty origin
    "8.8.8.0\t24\t15169",  # again, after other lines
    "1.2.3.4.5\t24\t1",
    "1.2.3\t24\t1",
]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_edge_lines_give_the_line_readers_table(trailing_newline: bool) -> None:
    text = "\n".join(EDGE_LINES).encode() + (b"\n" if trailing_newline else b"")
    table = check_same(text)
    assert table.bad_lines >= 10
    assert table.lookup("8.8.8.130") == ipmeta.PrefixMatch("8.8.8.128/25", 15169, "015169")
    assert table.lookup("8.8.8.8") == ipmeta.PrefixMatch("8.8.8.0/24", 15169, "15169")
    assert table.lookup("20.1.2.2").netblock == "20.1.2.2/31"
    assert table.lookup("20.1.2.1").netblock == "20.1.2.0/24"
    assert table.lookup("20.1.2.3").netblock == "20.1.2.3/32"
    assert table.lookup("20.1.3.1").netblock == "20.1.0.0/16"
    assert table.lookup("200.1.3.1").netblock == "0.0.0.0/0"


def test_a_prefix_first_given_on_an_uncommon_line_keeps_that_line() -> None:
    text = b"30.0.0.0\t8\t1_2\n30.0.0.0\t8\t3\n31.0.0.0\t8\t4\n31.0.0.0\t8\t5_6\n"
    table = check_same(text)
    assert table.lookup("30.1.1.1") == ipmeta.PrefixMatch("30.0.0.0/8", 1, "1_2")
    assert table.lookup("31.1.1.1") == ipmeta.PrefixMatch("31.0.0.0/8", 4, "4")


@pytest.mark.parametrize(
    "text", [b"1.0.0.0\t8\t1\r\n2.0.0.0\t8\t2\n", b"1.0.0.0\t8\t1\n# caf\xc3\xa9\n", b"a\x0cb\n"]
)
def test_text_it_does_not_read_is_left_to_the_line_reader(text: bytes) -> None:
    assert parse_pfx2as_text(text) is None


def test_empty_text() -> None:
    assert state(check_same(b"")) == state(by_lines(b""))
    assert len(check_same(b"\n\n# nothing\n")) == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_nested_tables(seed: int) -> None:
    """Prefixes nested several deep, duplicates and stray lines, in random order."""
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        n = rng.choice([0, 1, 7, 8, 12, 16, 16, 20, 22, 23, 24, 24, 24, 25, 30, 32])
        addr = rng.getrandbits(32) if rng.random() < 0.5 else rng.choice([0x08080800, 0x0A000000])
        addr |= rng.getrandbits(8) if rng.random() < 0.1 else 0
        ip = ".".join(str(addr >> s & 255) for s in (24, 16, 8, 0))
        asn = rng.choice(["15169", "0", "7", "4294967295", "1_2", "0123", str(rng.getrandbits(20))])
        line = f"{ip}\t{n}\t{asn}"
        if rng.random() < 0.02:
            line = rng.choice(["", "# x", f" {line}", line.replace("\t", " "), f"{ip}\t{n}"])
        lines.append(line)
    table = check_same("\n".join(lines).encode())
    reference = by_lines("\n".join(lines).encode())
    for _ in range(2000):
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        assert table.lookup(ip) == reference.lookup(ip)


def test_the_real_caida_excerpt() -> None:
    if not REAL_PFX2AS.exists():
        pytest.skip(f"real fixture absent: {REAL_PFX2AS}")
    text = gzip.decompress(REAL_PFX2AS.read_bytes())
    table = check_same(text)
    assert len(table) > 300


def test_the_launchers_catalog_parses_files_with_it(tmp_path: Path) -> None:
    """The launcher's catalog reads routeviews files with it, to the line reader's table."""
    lines = "\n".join(EDGE_LINES).encode()
    folder = tmp_path / "routeviews/2021/05"
    folder.mkdir(parents=True)
    (folder / "routeviews-rv2-20210530-1200.pfx2as.gz").write_bytes(gzip.compress(lines))
    catalog = ipmeta.ReferenceCatalog(
        str(tmp_path), cache_dir=None, read_pfx2as_text=parse_pfx2as_text
    )
    enricher, selection = catalog.enricher_for(ipmeta.dt.date(2021, 5, 30))
    assert selection.routeviews is not None
    assert enricher.pfx2as is not None
    assert state(enricher.pfx2as) == state(by_lines(lines))
    assert RowEnricher(str(tmp_path)).catalog._pfx2as.parse is not ipmeta._PFX2AS.parse
