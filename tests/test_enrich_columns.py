"""RowEnricher.enrich_hyperquack_columns (one lookup per distinct (date, server_ip) of a
batch) gives exactly what enrich_hyperquack gives row by row: the same column values and
the same stats. ``ip_metadata_sources`` lists are shared only by rows of one batch with
equal sources, and the downstream Arrow conversion only reads them.

Reference data: the real CAIDA excerpts (``shared/fixtures/real/caida``, skipped with the
reason when absent) and the project's synthetic sample CAIDA
(``sampledata.caida``), each with dates whose routeviews file is present,
stale or missing, plus an IPv6 table.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from sampledata import DEFAULT_SCANS, HYPERQUACK_SCANS, scan_hosts
from sampledata.caida import write_caida
from services.beam_launcher.enrichment.ip_metadata import SERVER_COLUMNS, RowEnricher
from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
from services.beam_launcher.enrichment.server_columns import ServerTables
from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor
from services.beam_launcher.warehouse.rows import HYPERQUACK_SCAN
from services.common.ipmeta import parse_pfx2as
from tests.conftest import REAL, REAL_HQ_SCANS

CAIDA = REAL / "caida"
REAL_PFX2AS = CAIDA / "routeviews-rv2-00000000-test.pfx2as.gz"
REAL_AS2ORG = CAIDA / "20201001.test.as-org2info.txt.gz"
REAL_AS2TYPES = CAIDA / "20201101.test.as2types.txt.gz"

V6_LINES = ["2001:4860::\t32\t15169", "2001:4860:4860::\t48\t15169_36040", "2a00:1450::\t29\t15169"]
V6_IPS = ["2001:4860:4860::8888", "2001:4860:1::1", "2a00:1450:4001::1", "2c0f:fb50::1"]
SAMPLE_SIZE = 12


def _put(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _v6_table(root: Path, stamp: str) -> None:
    data = gzip.compress(("\n".join(V6_LINES) + "\n").encode())
    _put(root, f"routeviews6/{stamp[:4]}/{stamp[4:6]}/routeviews-rv6-{stamp}-1200.pfx2as.gz", data)


def per_row(
    enricher: RowEnricher, columns: dict[str, list[Any]], n_rows: int, stats: dict[str, int]
) -> None:
    """The per-row reference: enrich_hyperquack on one row dict per row, transposed back."""
    filled: dict[str, list[Any]] = {}
    for i in range(n_rows):
        row: dict[str, Any] = {"date": columns["date"][i], "server_ip": columns["server_ip"][i]}
        enricher.enrich_hyperquack(row, stats)
        for name, value in row.items():
            if name not in ("date", "server_ip"):
                filled.setdefault(name, [None] * n_rows)[i] = value
        if row.get("server_asn") is not None:
            stats["rows_with_asn"] = stats.get("rows_with_asn", 0) + 1
        if row.get("server_country") is not None:
            stats["rows_with_country"] = stats.get("rows_with_country", 0) + 1
    columns.update(filled)


def from_lookups(
    enricher: RowEnricher, columns: dict[str, list[Any]], n_rows: int, stats: dict[str, int]
) -> None:
    """A second reference that shares no code with either path beyond ``lookup``: each
    row's IpMetadata turned into columns with ``IpMetadata.as_columns``."""
    for i in range(n_rows):
        md = enricher.lookup(columns["date"][i], columns["server_ip"][i])
        for name, value in md.as_columns("server").items():
            columns[name][i] = value
        columns["ip_metadata_sources"][i] = list(md.sources)
        name = f"ip_metadata.server.{md.status}"
        stats[name] = stats.get(name, 0) + 1
        for flag, value in (("rows_with_asn", md.asn), ("rows_with_country", md.country)):
            if value is not None:
                stats[flag] = stats.get(flag, 0) + 1


def check_same(location: str | None, columns: dict[str, list[Any]], n_rows: int) -> None:
    """Both paths on fresh enrichers, then the vectorised one again on a warm enricher."""
    ref_cols = {k: list(v) for k, v in columns.items()}
    ref_stats: dict[str, int] = {"other": 1}
    per_row(RowEnricher(location), ref_cols, n_rows, ref_stats)
    plain_cols = {k: list(v) for k, v in columns.items()}
    plain_stats: dict[str, int] = {"other": 1}
    from_lookups(RowEnricher(location), plain_cols, n_rows, plain_stats)
    assert (plain_cols, plain_stats) == (ref_cols, ref_stats)

    warm = RowEnricher(location)
    outputs = []
    for _ in range(2):  # cold, then every (date, ip) memoised
        cols = {k: list(v) for k, v in columns.items()}
        stats: dict[str, int] = {"other": 1}
        warm.enrich_hyperquack_columns(cols, n_rows, stats)
        assert stats == ref_stats
        assert cols.keys() == ref_cols.keys()
        for name in cols:
            assert cols[name] == ref_cols[name], name
            assert len(cols[name]) == n_rows, name
        sources = cols["ip_metadata_sources"]
        assert all(type(s) is list for s in sources)
        # Rows share a sources list only with rows of equal sources.
        values_of: dict[int, list[Any]] = {}
        for s in sources:
            values_of.setdefault(id(s), []).append(s)
        assert all(v == vs[0] for vs in values_of.values() for v in vs)
        outputs.append(sources)
        check_arrow_reads_only(cols, ref_cols, n_rows)
    # Never the same list in two batches' output.
    assert not {id(s) for s in outputs[0]} & {id(s) for s in outputs[1]}
    check_arrow_output(location, columns, ref_cols, ref_stats, n_rows)
    if n_rows:
        # Mutating one batch's list touches no row with other sources, nor the next
        # batch's values.
        first = list(sources[0])
        sources[0].append("mutated")
        for s, want in zip(sources, ref_cols["ip_metadata_sources"], strict=True):
            if want != first:
                assert s == want
        again = {k: list(v) for k, v in columns.items()}
        warm.enrich_hyperquack_columns(again, n_rows, {})
        assert again["ip_metadata_sources"] == ref_cols["ip_metadata_sources"]


def check_arrow_output(
    location: str | None,
    columns: dict[str, list[Any]],
    ref_cols: dict[str, list[Any]],
    ref_stats: dict[str, int],
    n_rows: int,
) -> None:
    """With ``arrow=True`` (the launcher's call), cold and warm, the stats are the same
    and the Arrow table equals the one from the per-row reference's lists."""
    enricher = RowEnricher(location)
    fresh = {k: v for k, v in ref_cols.items() if k != "date"}
    want = HYPERQUACK_SCAN.columns_to_arrow(fresh, n_rows)
    for _ in range(2):
        cols: dict[str, Any] = {k: list(v) for k, v in columns.items()}
        stats: dict[str, int] = {"other": 1}
        enricher.enrich_hyperquack_columns(cols, n_rows, stats, arrow=True)
        assert stats == ref_stats
        got = HYPERQUACK_SCAN.columns_to_arrow(
            {k: v for k, v in cols.items() if k != "date"}, n_rows
        )
        assert got.equals(want)
        for name in (*SERVER_COLUMNS, "ip_metadata_sources"):
            values = cols[name]
            assert len(values) == n_rows, name
            assert (values.to_pylist() if isinstance(values, pa.Array) else values) == ref_cols[
                name
            ], name


def check_arrow_reads_only(
    cols: dict[str, list[Any]], ref_cols: dict[str, list[Any]], n_rows: int
) -> None:
    """The downstream conversion (TableSpec.columns_to_arrow) leaves the shared sources
    lists as they were, and gives the table fresh per-row lists give."""
    # Dates are left out: some batches here carry "" dates, which no parser produces.
    subset = {k: v for k, v in cols.items() if k != "date"}
    sources = cols["ip_metadata_sources"]
    objects, before = list(sources), copy.deepcopy(sources)
    table = HYPERQUACK_SCAN.columns_to_arrow(subset, n_rows)
    assert sources == before and all(a is b for a, b in zip(sources, objects, strict=True))
    fresh = {k: v for k, v in ref_cols.items() if k != "date"}
    fresh["ip_metadata_sources"] = [list(s) for s in ref_cols["ip_metadata_sources"]]
    assert table.equals(HYPERQUACK_SCAN.columns_to_arrow(fresh, n_rows))


def batch(pairs: list[tuple[Any, Any]]) -> tuple[dict[str, list[Any]], int]:
    cols: dict[str, list[Any]] = {
        "date": [d for d, _ in pairs],
        "server_ip": [ip for _, ip in pairs],
        "domain": [f"d{i}.example" for i in range(len(pairs))],
    }
    for name in (*SERVER_COLUMNS, "ip_metadata_sources"):
        cols[name] = [None] * len(pairs)
    return cols, len(pairs)


# ---------------------------------------------------------------------------------------
# Real CAIDA excerpts + real Hyperquack records


@pytest.fixture(scope="module")
def real_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real excerpts under dated names: routeviews 2020-11-01 and 2021-05-01."""
    for path in (REAL_PFX2AS, REAL_AS2ORG, REAL_AS2TYPES):
        if not path.is_file():
            pytest.skip(f"real CAIDA excerpt not found: {path} (shared/fixtures/real is absent)")
    root = tmp_path_factory.mktemp("real-caida")
    pfx = REAL_PFX2AS.read_bytes()
    _put(root, "routeviews/2020/11/routeviews-rv2-20201101-1200.pfx2as.gz", pfx)
    _put(root, "routeviews/2021/05/routeviews-rv2-20210501-1200.pfx2as.gz", pfx)
    _put(root, "as-organizations/20201001.as-org2info.txt.gz", REAL_AS2ORG.read_bytes())
    _put(root, "as-classifications/20201101.as2types.txt.gz", REAL_AS2TYPES.read_bytes())
    _v6_table(root, "20201101")
    return root


def real_table_ips() -> list[str]:
    """An address inside every prefix of the real excerpt (first and last host)."""
    with gzip.open(REAL_PFX2AS, "rt") as fh:
        lines = fh.read().splitlines()
    ips: list[str] = []
    import ipaddress

    for line in lines:
        prefix, length, _ = line.split("\t")
        net = ipaddress.ip_network(f"{prefix}/{length}")
        ips += [str(net.network_address), str(net.broadcast_address)]
    return ips


def test_real_hyperquack_records_enrich_the_same(real_root: Path) -> None:
    """Every real Hyperquack fixture file, parsed to columns, then enriched both ways."""
    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    seen_status: set[str] = set()
    for rel, scan in REAL_HQ_SCANS.items():
        lines = (REAL / rel).read_bytes().splitlines()
        out = proc.process_columns(FileTask.for_test(scan, Path(rel).name), 1, lines)
        assert out.n_rows > 0
        check_same(str(real_root), out.columns, out.n_rows)
        stats: dict[str, int] = {}
        RowEnricher(str(real_root)).enrich_hyperquack_columns(out.columns, out.n_rows, stats)
        seen_status |= {k.rsplit(".", 1)[1] for k in stats if k.startswith("ip_metadata.")}
    # Dated 2020-11 scans are matched, 2021-04 is past the 30-day limit of 2021-05-01's
    # predecessor and before it: the real fixtures exercise both.
    assert {"ok", "no_table"} <= seen_status


def test_real_excerpt_every_prefix_and_odd_values(real_root: Path) -> None:
    ips = real_table_ips()
    odd: list[Any] = [None, "", "10.1.2.3", "not an ip", "::ffff:8.8.8.8", "1.2.3", *V6_IPS]
    dates: list[Any] = ["2020-11-05", "2021-05-30", "2021-01-20", "2020-10-01", None, ""]
    pairs = [(d, ip) for ip in [*ips, *odd] for d in dates] * 2
    cols, n = batch(pairs)
    check_same(str(real_root), cols, n)
    stats: dict[str, int] = {}
    RowEnricher(str(real_root)).enrich_hyperquack_columns(cols, n, stats)
    for status in ("ok", "no_table", "special", "invalid", "unconfigured"):
        assert stats.get(f"ip_metadata.server.{status}", 0) > 0, status
    assert stats["rows_with_asn"] == sum(a is not None for a in cols["server_asn"])
    assert 0 < stats["rows_with_country"] == sum(c is not None for c in cols["server_country"])
    # 396549 (192.26.92.0/24) has names but no class: columns are filled independently.
    assert any(
        a == 396549 and c is None
        for a, c in zip(cols["server_asn"], cols["server_as_class"], strict=True)
    )
    # IPv6 rows on a date with the rv6 table are matched from it.
    v6 = [i for i, (d, ip) in enumerate(pairs) if ip == V6_IPS[0] and d == "2020-11-05"]
    assert v6 and cols["server_netblock"][v6[0]] == "2001:4860:4860::/48"
    assert cols["ip_metadata_sources"][v6[0]][0] == "routeviews-rv6-20201101-1200"


# ---------------------------------------------------------------------------------------
# The project's synthetic sample CAIDA


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """write_caida's files placed in the mirrored layout the catalog reads."""
    out = tmp_path_factory.mktemp("sample-caida")
    written = write_caida(out / "caida", DEFAULT_SCANS, SAMPLE_SIZE, 0)
    root = out / "meta"
    folders = {
        "routing/routeviews-prefix2as": "routeviews",
        "as-organizations": "as-organizations",
        "as-classification": "as-classifications",
    }
    for rel in written.files:
        for src, dest in folders.items():
            if rel.startswith(src + "/") and rel.endswith(".gz"):
                target = root / dest / rel[len(src) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "caida" / rel, target)
    _v6_table(root, written.dates[0].replace("-", ""))
    return root


@pytest.mark.parametrize("day", ["2020-11-05", "2021-05-30", "2020-10-01", "2030-01-01"])
def test_one_day_batches_are_looked_up_whole(real_root: Path, day: str) -> None:
    """A batch of one day (the launcher's usual batch) is enriched by whole-batch lookups
    (routed, unrouted, special, IPv6, invalid and empty values; stale and missing
    reference files), to the per-row reference's columns and stats."""
    odd: list[Any] = [None, "", "10.1.2.3", "not an ip", "::ffff:8.8.8.8", "1.2.3", *V6_IPS]
    odd += [" 8.8.8.8 ", "1.2.3.04", "223.255.255.1", "100.64.0.1", "0.0.0.0", "8.8.8.8\x00"]
    plain = [*real_table_ips()[::3], "1.1.1.1", "203.0.113.9", "8.8.8.8"]
    ips = [*plain, *odd]
    cols, n = batch([(day, ip) for ip in ips] * 2)
    check_same(str(real_root), cols, n)
    cols, n = batch([(day, ip) for ip in plain] * 2)  # addresses only: the common batch
    check_same(str(real_root), cols, n)
    e = RowEnricher(str(real_root))
    e.enrich_hyperquack_columns(batch([(day, ip) for ip in ips])[0], len(ips), {}, arrow=True)
    # A day with no routeviews file (before the first, or the last too old) has no IPv4
    # table: its servers are looked up one at a time.
    want = type(None) if day in ("2020-10-01", "2030-01-01") else ServerTables
    assert [type(t) for t in e._tables.values()] == [want]


def sample_pairs() -> list[tuple[Any, Any]]:
    pairs: list[tuple[Any, Any]] = []
    for spec in HYPERQUACK_SCANS:
        day = spec.start.astimezone(dt.UTC).date()
        for host in scan_hosts(spec, SAMPLE_SIZE, 0):
            pairs.append((day.isoformat(), host.ip))
            pairs.append(((day + dt.timedelta(days=400)).isoformat(), host.ip))  # stale
            pairs.append(((day - dt.timedelta(days=4000)).isoformat(), host.ip))  # missing
    return pairs


def test_sample_caida_scan_hosts_enrich_the_same(sample_root: Path) -> None:
    pairs = sample_pairs()
    cols, n = batch(pairs)
    check_same(str(sample_root), cols, n)
    stats: dict[str, int] = {}
    RowEnricher(str(sample_root)).enrich_hyperquack_columns(cols, n, stats)
    # Every server on its scan date gets its synthetic AS and country.
    assert stats["ip_metadata.server.ok"] == len(pairs) // 3
    assert stats["rows_with_country"] == len(pairs) // 3
    assert stats["ip_metadata.server.no_table"] == 2 * len(pairs) // 3


def test_no_location_gives_empty_columns_and_one_shared_list() -> None:
    cols, n = batch([("2021-05-30", "8.8.8.8")] * 50 + [(None, None)] * 3)
    check_same(None, cols, n)
    stats: dict[str, int] = {}
    RowEnricher(None).enrich_hyperquack_columns(cols, n, stats)
    assert stats == {"ip_metadata.server.unconfigured": 53}
    assert cols["server_asn"] == [None] * 53 and cols["ip_metadata_sources"] == [[]] * 53
    one, *_ = batch([("2021-05-30", "8.8.8.8")] * 5)
    RowEnricher(None).enrich_hyperquack_columns(one, 5, {})  # one server: one shared list
    assert len({id(s) for s in one["ip_metadata_sources"]}) == 1


def test_empty_batch() -> None:
    cols, n = batch([])
    stats: dict[str, int] = {}
    RowEnricher(None).enrich_hyperquack_columns(cols, n, stats)
    assert stats == {} and all(cols[c] == [] for c in SERVER_COLUMNS)


def test_mismatched_columns_are_an_error() -> None:
    cols, _ = batch([("2021-05-30", "8.8.8.8")] * 3)
    with pytest.raises(ValueError):
        RowEnricher(None).enrich_hyperquack_columns(cols, 4, {})
    cols["date"].pop()
    with pytest.raises(ValueError):
        RowEnricher(None).enrich_hyperquack_columns(cols, 3, {})


class CountingEnricher(RowEnricher):
    """Records each (date, ip) the per-server path looks up (not memoised yet)."""

    def __init__(self, location: str | None) -> None:
        super().__init__(location)
        self.calls: list[tuple[str | None, str | None]] = []

    def _new_server_hits(self, date: Any, files: Any, ips: list[Any]) -> list[Any]:
        self.calls += [(date, ip) for ip in ips]
        return super()._new_server_hits(date, files, ips)


def test_each_distinct_pair_is_looked_up_once(sample_root: Path) -> None:
    distinct = sample_pairs()[:9]  # scan date, stale and missing: three sets of files
    pairs = distinct * 300
    cols, n = batch(pairs)
    e = CountingEnricher(str(sample_root))
    e.enrich_hyperquack_columns(cols, n, {})
    assert sorted(e.calls, key=str) == sorted(set(distinct), key=str)
    e.enrich_hyperquack_columns(*batch(pairs), {})  # the next batch: memoised
    assert len(e.calls) == len(set(distinct))


def test_days_with_the_same_reference_files_share_lookups(sample_root: Path) -> None:
    """A scan spans days; days whose routeviews/AS files are the same look each server up
    once, while days that select other files (or none) get their own lookups and
    results."""
    day_s, ip = sample_pairs()[0]
    day = dt.date.fromisoformat(day_s)
    e = CountingEnricher(str(sample_root))
    assert e.catalog is not None
    by_key: dict[Any, list[str]] = {}
    for k in range(40):  # the sample has daily files, then a gap: later days share them
        d = day + dt.timedelta(days=k)
        by_key.setdefault(e.catalog.choose(d).key, []).append(d.isoformat())
    days = max(by_key.values(), key=len)[:3]
    assert len(days) == 3
    far = (day - dt.timedelta(days=4000)).isoformat()  # no routeviews file at all
    keys = {d: e.catalog.choose(dt.date.fromisoformat(d)).key for d in (*days, far)}
    assert keys[days[0]] == keys[days[1]] == keys[days[2]] != keys[far]
    assert keys[days[0]][0] is not None and keys[far][0] is None
    pairs = [(d, ip) for d in (*days, far)] * 5
    cols, n = batch(pairs)
    e.enrich_hyperquack_columns(cols, n, {})
    assert sorted(e.calls) == sorted([(days[0], ip), (far, ip)])
    expected = {k: list(v) for k, v in batch(pairs)[0].items()}
    per_row(RowEnricher(str(sample_root)), expected, n, {})
    assert cols == expected
    assert cols["server_asn"][0] is not None and cols["server_asn"][3] is None


# ---------------------------------------------------------------------------------------
# Random batches


def _pool(sample_root: Path) -> list[tuple[Any, Any]]:
    pairs = sample_pairs()[::7]
    table = parse_pfx2as(V6_LINES)
    assert table.lookup(V6_IPS[0]) is not None
    odd_ips: list[Any] = [None, "", "10.0.0.1", "x", "8.8.8.8", "::ffff:1.1.1.1", *V6_IPS]
    odd_dates: list[Any] = [None, "", pairs[0][0], "1999-01-01", "2030-01-01"]
    return pairs + [(d, ip) for d in odd_dates for ip in odd_ips]


@pytest.fixture(scope="module")
def pool(sample_root: Path) -> list[tuple[Any, Any]]:
    return _pool(sample_root)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=hs.data())
def test_random_batches_enrich_the_same(
    sample_root: Path, pool: list[tuple[Any, Any]], data: hs.DataObject
) -> None:
    picks = data.draw(hs.lists(hs.integers(0, len(pool) - 1), max_size=80))
    cols, n = batch([pool[i] for i in picks])
    check_same(str(sample_root), cols, n)
