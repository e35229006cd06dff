"""Benchmark IP metadata at real size: loading, memory, lookups, and per-row enrichment.

Usage: ``uv run python bench/bench_ipmeta.py [--prefixes 1000000] [--scan FILE.json.gz]``

Writes a synthetic reference set shaped like the real one into ``--workdir`` (default: a
temporary folder): a RouteViews IPv4 pfx2as file of ``--prefixes`` lines in address order
(886,068 in the 2020 file: mostly /24, every length /8–/32, ~0.8 % longer than /24,
~0.7 % MOAS, a few AS sets; ~75,000 origin ASes), an as-org2info file (~115,000 ASes,
~100,000 organisations) and an as2types file, in the mirrored layout ``ReferenceCatalog``
reads. The servers of the measured batch get /24 prefixes of their own, as real servers
are routed. Then it prints:

* load per process (each in a fresh subprocess, as every local worker loads its own
  copy): parse without the cache, parse + write the cache (first process on a machine),
  and read from the cache (every later process); seconds per file kind and the process's
  resident memory before and after (``VmRSS``) and at peak (``VmHWM``);
* ``PrefixTable.lookup`` on addresses inside table prefixes and on uniformly random
  IPv4 addresses, and ``Enricher.lookup`` on the hits (lookups/s);
* ``RowEnricher.enrich_hyperquack_columns`` on a batch of ``--batch-lines`` lines of an
  HTTP scan parsed with ``HyperquackProcessor.process_columns`` (the first lines of
  ``--scan``; skipped with a message when the file is absent): µs per row for a fresh
  enricher (every server looked up) and a warm one (memoised), next to the µs per row
  of ``process_columns`` itself;
* the first ``--file-lines`` lines of ``--scan`` as one worker runs them: the tables
  loaded from the cache, then per batch ``process_columns`` and
  ``enrich_hyperquack_columns``; enrichment's CPU seconds (load included) as a share of
  ``process_columns``'s (the whole run costs more than parsing, so its share of the run
  is smaller).

Load and lookup figures are printed for two prefix tables: ``ours``
(``services.common.ipmeta.PrefixTable``, flat sorted arrays in pure Python) and ``pyasn``
(``bench/ipmeta_pyasn.py``: the same API on pyasn's radix tree in C, loaded from its
ipasn text; in the catalog's cache too). Both answer the same lookups, and the number
of answers that differ is printed (it must be 0). ``--tables ours`` skips pyasn.

Timings are CPU seconds of the measuring process (``time.process_time``; the
development machine is shared, so wall time would measure the neighbours), best of
``--repeats``. The script always exits 0.

Figures measured with it (1,000,000 prefixes) are in the module docstring of
``services/common/ipmeta.py``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import services.common.ipmeta as ipmeta  # noqa: E402
from services.common.ipmeta import AsOrg, Enricher, ReferenceCatalog  # noqa: E402

TABLES = {"ours": "ours (flat arrays)", "pyasn": "pyasn (radix tree)"}

# Share of prefixes per length, roughly as in a 2020 RouteViews IPv4 table.
_LENGTH_WEIGHTS = {
    8: 0.0002,
    9: 0.0002,
    10: 0.0004,
    11: 0.001,
    12: 0.002,
    13: 0.004,
    14: 0.007,
    15: 0.012,
    16: 0.015,
    17: 0.012,
    18: 0.02,
    19: 0.03,
    20: 0.045,
    21: 0.05,
    22: 0.1,
    23: 0.08,
    24: 0.6142,
    25: 0.002,
    26: 0.002,
    27: 0.0015,
    28: 0.001,
    29: 0.0008,
    30: 0.0005,
    31: 0.0002,
    32: 0.0004,
}
ORIGIN_ASES = 75_000  # distinct origin ASes of a 2020-2021 IPv4 table
AS2ORG_ASES = 115_000  # ASes in an as-org2info file of that time (routed or not)
SCAN_DATE = "2021-05-30"
HTTP_SCAN = "CP_Quack-http-2021-05-30-05-02-33"
DEFAULT_SCAN = Path(f"/tmp/b13/s100k/scans/{HTTP_SCAN}/results.json.gz")


def _asn_pool(rng: random.Random) -> list[int]:
    return rng.sample(range(1, 400_000), AS2ORG_ASES)


def synthetic_lines(
    n: int, seed: int = 1, servers: Sequence[str] = (), asns: list[int] | None = None
) -> list[str]:
    """``n`` pfx2as lines: a /24 for each server's network, then random prefixes."""
    rng = random.Random(seed)
    origins = (asns or _asn_pool(random.Random(seed)))[:ORIGIN_ASES]
    lengths = list(_LENGTH_WEIGHTS)
    weights = list(_LENGTH_WEIGHTS.values())
    seen: set[tuple[int, int]] = set()
    lines: list[str] = []

    def emit(net: int, length: int) -> None:
        seen.add((net, length))
        asn = rng.choice(origins)
        r = rng.random()
        if r < 0.007:
            origin = f"{asn}_{rng.choice(origins)}"
        elif r < 0.0072:
            origin = f"{asn},{rng.choice(origins)}"
        else:
            origin = str(asn)
        lines.append(f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}\t{length}\t{origin}")

    for ip in servers:
        net = int.from_bytes(socket.inet_aton(ip), "big") >> 8 << 8
        if (net, 24) not in seen and len(lines) < n:
            emit(net, 24)
    while len(lines) < n:
        length = rng.choices(lengths, weights)[0]
        addr = rng.randrange(1 << 24, 224 << 24)  # public-looking first octets only
        if addr >> 24 in (10, 127):
            continue
        net = addr >> (32 - length) << (32 - length)
        if (net, length) not in seen:
            emit(net, length)

    def order(line: str) -> tuple[bytes, int]:  # CAIDA's files are in address order
        prefix, length, _ = line.split("\t", 2)
        return socket.inet_aton(prefix), int(length)

    return sorted(lines, key=order)


def write_catalog(root: Path, lines: list[str], asns: list[int]) -> None:
    """The pfx2as lines plus as-org2info and as2types files, in the catalog layout."""

    def put(rel: str, text_lines: list[str]) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = ("\n".join(text_lines) + "\n").encode()
        path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))

    put("routeviews/2021/05/routeviews-rv2-20210529-1200.pfx2as.gz", lines)
    orgs = [f"ORG{i}-ARIN" for i in range(100_000)]
    countries = ["US", "DE", "BR", "IN", "RU", "CN", "GB", "FR", "JP", "KR"]
    put(
        "as-organizations/20210401.as-org2info.txt.gz",
        [
            "# format:org_id|changed|org_name|country|source",
            *(
                f"{o}|20210322|Organisation number {i} Ltd|{countries[i % 10]}|ARIN"
                for i, o in enumerate(orgs)
            ),
            "# format:aut|changed|aut_name|org_id|opaque_id|source",
            *(f"{a}|20210322|AS-NAME-{a}|{orgs[i % len(orgs)]}||ARIN" for i, a in enumerate(asns)),
        ],
    )
    classes = ("Transit/Access", "Content", "Enterprise")
    put(
        "as-classifications/20210401.as2types.txt.gz",
        ["# format: as|source|type", *(f"{a}|peerDB_class|{classes[a % 3]}" for a in asns)],
    )


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table_parser(name: str) -> Callable[[Any], Any]:
    """parse_pfx2as of the named table; for pyasn, also made the catalog's pfx2as codec
    (parse, cache encode and decode) in this process."""
    if name == "ours":
        return ipmeta.parse_pfx2as
    from bench.ipmeta_pyasn import PyasnPrefixTable, parse_pfx2as_pyasn

    ipmeta._PFX2AS = ipmeta._Codec(
        "pfx2as-pyasn",
        lambda data: parse_pfx2as_pyasn(ipmeta._gz_lines(data)),
        PyasnPrefixTable.to_bytes,
        PyasnPrefixTable.from_bytes,
    )
    return parse_pfx2as_pyasn


def child_load(root: str, cache: str, table: str) -> int:
    """One worker process's load (run in a subprocess): JSON figures on stdout."""
    import datetime as dt

    table_parser(table)
    rss0 = _status_mib("VmRSS")
    cat = ReferenceCatalog(root, cache_dir=cache or None)
    sel = cat.choose(dt.date.fromisoformat(SCAN_DATE))
    assert sel.routeviews and sel.as2org and sel.as2class
    out: dict[str, Any] = {"rss_start_mib": rss0}
    for name, load, ref in (
        ("pfx2as", cat.load_pfx2as, sel.routeviews),
        ("as2org", cat.load_as2org, sel.as2org),
        ("as2types", cat.load_as2types, sel.as2class),
    ):
        t0 = time.process_time()
        load(ref)
        out[f"{name}_s"] = time.process_time() - t0
    out.update(
        rss_end_mib=_status_mib("VmRSS"),
        hwm_mib=_status_mib("VmHWM"),
        cache_hits=cat.cache_hits,
        cache_writes=cat.cache_writes,
    )
    print(json.dumps(out))
    return 0


def measure_loads(root: Path, cache: Path, table: str) -> None:
    label = TABLES[table]

    def run(cache_arg: str) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--child-load", str(root), cache_arg, table]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    cache = cache / table
    shutil.rmtree(cache, ignore_errors=True)  # "cold" must be cold
    for mode, cache_arg in (
        ("no cache (parse)", ""),
        ("cache cold (parse + write)", str(cache)),
        ("cache warm (read)", str(cache)),
    ):
        r = run(cache_arg)
        total = r["pfx2as_s"] + r["as2org_s"] + r["as2types_s"]
        print(
            f"[{label}] load, {mode}: {total:.2f} s (pfx2as {r['pfx2as_s']:.2f}, as2org "
            f"{r['as2org_s']:.2f}, as2types {r['as2types_s']:.2f}); RSS "
            f"{r['rss_start_mib']:.0f} → {r['rss_end_mib']:.0f} MiB "
            f"(+{r['rss_end_mib'] - r['rss_start_mib']:.0f}), peak {r['hwm_mib']:.0f} MiB"
        )
    size = sum(p.stat().st_size for p in cache.iterdir())
    print(f"[{label}] cache folder: {size / 2**20:.1f} MiB")


def scan_batch(scan: Path | None, n_lines: int) -> tuple[list[bytes], bool]:
    """The first lines of a scan file; ([], False) with a message when it is absent."""
    if scan is not None and scan.is_file():
        with gzip.open(scan, "rb") as fh:
            return [line.rstrip(b"\n") for line in itertools.islice(fh, n_lines)], True
    print(f"scan {scan} not found: no per-row enrichment figures (pass --scan)")
    return [], False


def measure_enrich(root: Path, cache: Path, lines: list[bytes], repeats: int) -> None:
    from services.beam_launcher.enrichment.ip_metadata import RowEnricher
    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
    from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor

    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    task = FileTask.for_test(HTTP_SCAN)
    holder: list[Any] = []

    def parse() -> None:
        holder[:] = [proc.process_columns(task, 1, lines)]

    parse_s = best_of(repeats, parse)
    out = holder[0]
    n = out.n_rows
    distinct = len(set(zip(out.columns["date"], out.columns["server_ip"], strict=True)))
    print(
        f"batch: {len(lines):,} lines → {n:,} rows, {distinct:,} distinct (date, server_ip); "
        f"process_columns {parse_s / n * 1e6:.2f} µs/row"
    )
    os.environ["CP_IPMETA_CACHE"] = str(cache / "ours")
    loaded = RowEnricher(str(root))
    loaded.lookup(SCAN_DATE, "1.1.1.1")  # load the date's tables (timed above)

    def fresh() -> None:
        e = RowEnricher(str(root))
        e.catalog = loaded.catalog  # tables loaded, nothing memoised
        cols = {k: list(v) for k, v in out.columns.items()}
        t0 = time.process_time()
        e.enrich_hyperquack_columns(cols, n, {})
        timings.append(time.process_time() - t0)

    timings: list[float] = []
    for _ in range(repeats):
        fresh()
    cold = min(timings)
    stats: dict[str, int] = {}
    cols = {k: list(v) for k, v in out.columns.items()}
    loaded.enrich_hyperquack_columns(cols, n, stats)
    warm = best_of(repeats, lambda: loaded.enrich_hyperquack_columns(dict(out.columns), n, {}))
    ok = stats.get("ip_metadata.server.ok", 0)
    print(
        f"enrich_hyperquack_columns: fresh enricher {cold / n * 1e6:.2f} µs/row "
        f"({cold * 1e3:.1f} ms per batch, {cold / n / (parse_s / n):.1%} of process_columns), "
        f"warm (memoised) {warm / n * 1e6:.2f} µs/row ({warm / n / (parse_s / n):.1%}); "
        f"{ok / n:.0%} of rows matched"
    )

    def per_row() -> None:
        st: dict[str, int] = {}
        for i in range(n):
            row = {"date": out.columns["date"][i], "server_ip": out.columns["server_ip"][i]}
            loaded.enrich_hyperquack(row, st)

    row_s = best_of(repeats, per_row)
    print(f"enrich_hyperquack row by row (warm, for comparison): {row_s / n * 1e6:.2f} µs/row")


def measure_file(root: Path, cache: Path, scan: Path, batch_lines: int, max_lines: int) -> None:
    """A whole scan file as one worker sees it: load (from the cache), then per batch
    process_columns and enrich_hyperquack_columns; CPU seconds of each."""
    from services.beam_launcher.enrichment.ip_metadata import RowEnricher
    from services.beam_launcher.enrichment.resources import SAMPLE_RESOURCES, load_resources
    from services.beam_launcher.hyperquack.processing import FileTask, HyperquackProcessor

    proc = HyperquackProcessor(load_resources(str(SAMPLE_RESOURCES)))
    task = FileTask.for_test(HTTP_SCAN)
    os.environ["CP_IPMETA_CACHE"] = str(cache / "ours")
    t0 = time.process_time()
    enricher = RowEnricher(str(root))
    enricher.lookup(SCAN_DATE, "1.1.1.1")
    load_s = time.process_time() - t0
    parse_s = enrich_s = 0.0
    rows = lines_done = 0
    stats: dict[str, int] = {}
    with gzip.open(scan, "rb") as fh:
        while lines_done < max_lines:
            lines = [b.rstrip(b"\n") for b in itertools.islice(fh, batch_lines)]
            if not lines:
                break
            t0 = time.process_time()
            out = proc.process_columns(task, lines_done + 1, lines)
            t1 = time.process_time()
            enricher.enrich_hyperquack_columns(out.columns, out.n_rows, stats)
            t2 = time.process_time()
            parse_s += t1 - t0
            enrich_s += t2 - t1
            rows += out.n_rows
            lines_done += len(lines)
    lookups = enricher._server_count
    total = load_s + enrich_s
    print(
        f"whole file ({lines_done:,} lines, {rows:,} rows, {lookups:,} distinct servers, "
        f"batches of {batch_lines:,} lines): process_columns {parse_s:.2f} CPU s; "
        f"enrichment {total:.2f} CPU s = load {load_s:.2f} (cache) + batches {enrich_s:.2f} "
        f"({enrich_s / rows * 1e6:.2f} µs/row incl. lookups) = {total / parse_s:.1%} of "
        f"process_columns"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefixes", type=int, default=1_000_000)
    p.add_argument("--lookups", type=int, default=300_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scan", type=Path, default=DEFAULT_SCAN, help="an HTTP v2 .json.gz")
    p.add_argument("--batch-lines", type=int, default=5_000, help="≈16k rows of HTTP v2")
    p.add_argument(
        "--file-lines", type=int, default=100_000, help="lines of --scan for the whole-file run"
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument(
        "--tables", default="ours,pyasn", help="prefix tables to measure: ours, pyasn or both"
    )
    p.add_argument(
        "--child-load", nargs=3, metavar=("ROOT", "CACHE", "IMPL"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.child_load:
        return child_load(*args.child_load)

    print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    tmp = tempfile.TemporaryDirectory(prefix="bench-ipmeta-") if args.workdir is None else None
    work = Path(tmp.name) if tmp else args.workdir
    try:
        lines_batch, real = scan_batch(args.scan, args.batch_lines)
        servers: list[str] = []
        if real:
            servers = list(dict.fromkeys(json.loads(b)["vp"] for b in lines_batch))
        t0 = time.process_time()
        asns = _asn_pool(random.Random(1))
        lines = synthetic_lines(args.prefixes, servers=servers, asns=asns)
        root, cache = work / "ip-metadata", work / "cache"
        write_catalog(root, lines, asns)
        print(
            f"wrote {len(lines):,} pfx2as lines, {AS2ORG_ASES:,} ASes in "
            f"{time.process_time() - t0:.1f} s under {work}"
        )
        tables = [t for t in TABLES if t in args.tables.split(",")]
        for name in tables:
            measure_loads(root, cache, name)
        answers = []
        for name in tables:
            table = table_parser(name)(lines)
            print(
                f"[{TABLES[name]}] table: {len(table):,} prefixes, {len(table.lengths())} lengths"
            )
            answers.append(measure_lookups(table, TABLES[name], lines, args.lookups, args.repeats))
            del table
        if len(answers) == 2:
            differ = sum(a != b for a, b in zip(*answers, strict=True))
            print(f"answers that differ between the two tables: {differ} of {len(answers[0]):,}")
        if real:
            measure_enrich(root, cache, lines_batch, args.repeats)
            if args.file_lines:
                measure_file(root, cache, args.scan, args.batch_lines, args.file_lines)
    finally:
        if tmp:
            tmp.cleanup()
    return 0


def measure_lookups(table: Any, label: str, lines: list[str], n: int, repeats: int) -> list[Any]:
    """Lookup rates of one table; its answers (netblock, ASN, origin) on the hits, then
    the random addresses."""
    rng = random.Random(2)
    hits: list[str] = []
    for line in rng.sample(lines, min(n, len(lines))):
        prefix, length, _ = line.split("\t")
        base = int.from_bytes(socket.inet_aton(prefix), "big")
        host = rng.randrange(1 << (32 - int(length)))
        hits.append(socket.inet_ntoa((base + host).to_bytes(4, "big")))
    randoms = [
        socket.inet_ntoa(rng.randrange(1 << 24, 224 << 24).to_bytes(4, "big")) for _ in range(n)
    ]
    lookup = table.lookup

    def lookup_all(ips: list[str]) -> Callable[[], object]:
        return lambda: [lookup(ip) for ip in ips]

    for name, ips in (("hits (inside table prefixes)", hits), ("uniform random IPv4", randoms)):
        secs = best_of(repeats, lookup_all(ips))
        matched = sum(1 for ip in ips if lookup(ip) is not None)
        print(
            f"[{label}] PrefixTable.lookup, {name}: {len(ips) / secs:,.0f} lookups/s "
            f"({secs / len(ips) * 1e6:.2f} µs each; {matched / len(ips):.0%} matched)"
        )
    as2org = {asn: AsOrg(f"AS{asn}", f"Org {asn}", "US") for asn in range(1, 400000, 3)}
    as2types = {asn: "Transit/Access" for asn in range(1, 400000, 2)}
    enricher = Enricher(
        pfx2as=table,
        pfx2as_id="synthetic",
        as2org=as2org,
        as2org_id="org",
        as2types=as2types,
        as2types_id="cls",
    )
    secs = best_of(repeats, lambda: [enricher.lookup(ip) for ip in hits])
    print(
        f"[{label}] Enricher.lookup, hits: {len(hits) / secs:,.0f} lookups/s "
        f"({secs / len(hits) * 1e6:.2f} µs each)"
    )
    return [tuple(m) if m is not None else None for m in map(lookup, hits + randoms)]


if __name__ == "__main__":
    sys.exit(main())
