"""Benchmark the pure-Python longest-prefix match of ``services.common.ipmeta``.

Usage: ``uv run python bench/bench_ipmeta.py [--prefixes 900000] [--lookups 300000]``

Builds a synthetic IPv4 pfx2as table shaped like a real one (886,068 lines in the 2020
file: mostly /24, every length /8–/32 present, ~0.8 % longer than /24, ~0.7 % MOAS and
a few AS sets), then measures, each as the best of ``--repeats`` runs:

* build: ``parse_pfx2as`` over the text lines (what the catalog does after gunzip);
* ``PrefixTable.lookup`` on addresses inside random table prefixes (all hits, the
  common case for measured servers), and on uniformly random addresses (many misses:
  every length is probed);
* ``Enricher.lookup`` (hit + AS name/class join + special-range check) on the hit set;
* resident memory growth of the process while the table is alive (Linux ``ru_maxrss``).

The figures are printed; the script always exits 0.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common.ipmeta import AsOrg, Enricher, PrefixTable, parse_pfx2as  # noqa: E402

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


def synthetic_lines(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    lengths = list(_LENGTH_WEIGHTS)
    weights = list(_LENGTH_WEIGHTS.values())
    seen: set[tuple[int, int]] = set()
    lines: list[str] = []
    while len(lines) < n:
        length = rng.choices(lengths, weights)[0]
        # Public-looking first octets only (1..223, not 10/127).
        addr = rng.randrange(1 << 24, 224 << 24)
        if addr >> 24 in (10, 127):
            continue
        net = addr >> (32 - length) << (32 - length)
        if (net, length) in seen:
            continue
        seen.add((net, length))
        asn = rng.randrange(1, 400000)
        r = rng.random()
        if r < 0.007:
            origin = f"{asn}_{rng.randrange(1, 65000)}"
        elif r < 0.0072:
            origin = f"{asn},{rng.randrange(1, 65000)}"
        else:
            origin = str(asn)
        lines.append(f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}\t{length}\t{origin}")
    return lines


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefixes", type=int, default=900_000)
    p.add_argument("--lookups", type=int, default=300_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    t0 = time.perf_counter()
    lines = synthetic_lines(args.prefixes)
    print(f"generated {len(lines):,} synthetic pfx2as lines in {time.perf_counter() - t0:.1f} s")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    holder: list[PrefixTable] = []

    def build() -> None:
        holder[:] = [parse_pfx2as(lines)]

    build_s = best_of(args.repeats, build)
    table = holder[0]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"build: {build_s:.2f} s for {len(table):,} prefixes "
        f"({len(table) / build_s:,.0f} prefixes/s), lengths present: {len(table.lengths())}, "
        f"max RSS growth ≈ {(rss_after - rss_before) / 1024:.0f} MiB"
    )

    rng = random.Random(2)
    hits: list[str] = []
    for line in rng.sample(lines, min(args.lookups, len(lines))):
        prefix, length, _ = line.split("\t")
        base = int.from_bytes(socket.inet_aton(prefix), "big")
        host = rng.randrange(1 << (32 - int(length)))
        hits.append(socket.inet_ntoa((base + host).to_bytes(4, "big")))
    randoms = [
        socket.inet_ntoa(rng.randrange(1 << 24, 224 << 24).to_bytes(4, "big"))
        for _ in range(args.lookups)
    ]

    lookup = table.lookup

    def lookup_all(ips: list[str]) -> Callable[[], object]:
        return lambda: [lookup(ip) for ip in ips]

    for name, ips in (("hits (inside table prefixes)", hits), ("uniform random IPv4", randoms)):
        secs = best_of(args.repeats, lookup_all(ips))
        matched = sum(1 for ip in ips if lookup(ip) is not None)
        print(
            f"PrefixTable.lookup, {name}: {len(ips) / secs:,.0f} lookups/s "
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
    secs = best_of(args.repeats, lambda: [enricher.lookup(ip) for ip in hits])
    print(
        f"Enricher.lookup, hits: {len(hits) / secs:,.0f} lookups/s "
        f"({secs / len(hits) * 1e6:.2f} µs each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
