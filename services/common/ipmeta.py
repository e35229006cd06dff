"""IP metadata from CAIDA reference data: netblock, ASN, AS names, AS class and country.

Pure library: the parsers take lines, the matcher takes strings, and only
``ReferenceCatalog`` touches storage (through ``services.common.storage``).

Sources (formats in ``shared/docs/formats.md`` §4):

* RouteViews prefix-to-AS (``routeviews-rv2-YYYYMMDD-HHMM.pfx2as.gz``):
  ``prefix<TAB>length<TAB>origin`` → netblock and ASN by longest-prefix match.
* AS organisations (``YYYYMMDD.as-org2info.txt.gz`` pipe format with ``# format:``
  sections in either order, or ``YYYYMMDD.as-org2info.jsonl.gz``):
  ASN → (AS short name, organisation name, organisation's registration country).
* AS classification (``YYYYMMDD.as2types.txt.gz``): ASN → ``Transit/Access`` |
  ``Content`` | ``Enterprise``.

Origin rule (pfx2as): the origin field is a ``_``-separated list of origins (MOAS, most
frequent first since 2010-10-27), each of which may be an AS set written ``a,b,c``. The
ASN we report is **the first ASN of the first origin** (``4192,7160_7160`` → 4192,
``12025_11217,20019`` → 12025). That is CAIDA's suggested simplification and what the
seed gets from pyasn (which parses the field with ``atol``; so would pyasn's own ipasn
loader, which also reads asdot ``1.10`` as 1, refuses ASN 0 and /0 by failing the whole
load, and keeps the last of two equal prefixes where we keep the first). The raw origin
string is kept in the table (``PrefixMatch.origin``) for anyone who needs all origins.

Longest-prefix match is pure Python, by measurement (issue 16, 2026-12-03). IPv4
prefixes are frozen into flat sorted arrays (start, length, ASN, index of the enclosing
prefix): a lookup is one binary search, then a walk up the enclosing prefixes to the
first that holds the address. IPv6 keeps one dict per prefix length, probed longest
first. pyasn 1.6.2 was measured in its place: it has no wheel, but builds from its
source package in ~3 s (``uv sync``), and the images could build it in a builder stage
with gcc (tried with podman). Behind this module's API (the address parsed once for the
special-range check, a ``PrefixMatch`` with the netblock string) its C radix tree was
no faster and much larger. ``bench/bench_ipmeta.py`` on 1,000,000 synthetic prefixes,
two runs on the shared 2-core machine (load average 7-10), ours vs pyasn:
``PrefixTable.lookup`` on addresses inside prefixes 144-174k/s vs 132-135k/s, on random
addresses 151-162k/s vs 153-163k/s, ``Enricher.lookup`` 83-88k/s vs 68-72k/s (its bare
``search_best`` on a string, without the netblock and ``PrefixMatch``, does ~320-410k/s);
pfx2as load from the cache 0.06 vs 0.41 CPU-s and +44 vs +171 MiB resident per process
(the tree holds ~150 bytes per prefix: node, prefix and a Python object each); first
parse 3.1 vs 2.6 CPU-s, with the cache write 3.6 vs 3.5. Both gave the same netblock,
ASN and origin for all 600,000 probes, and on the real CAIDA excerpt and generated
tables (``tests/test_ipmeta_pyasn.py``). So the pipeline keeps this table (no
fallback needed, no compiler for the shared images); the pyasn version is kept in
``bench/ipmeta_pyasn.py`` (pyasn is a ``dev`` dependency) to measure it again.

Loading cost and the cache. Every worker process loads its own tables, so
``ReferenceCatalog(cache_dir=…)`` keeps each parsed table in a compact form (the flat
arrays; AS tables as arrays plus one text; a SHA-256 checksum) named by the SHA-256 of
the source file's bytes: the first process on a machine parses and writes it (others
starting at the same time wait on a folder lock, then read it), later ones read it.
``RowEnricher`` uses :func:`default_cache_dir` (``$CP_IPMETA_CACHE``; ``off`` disables).
Measured with ``bench/bench_ipmeta.py`` (1,000,000 synthetic IPv4 prefixes in address
order, 115,000 ASes; CPU seconds of a fresh process on the 2-core development machine
while other jobs ran, 2026-12-03): parse 5.2 s (pfx2as 3.3, as2org 1.7, as2types 0.2),
+159 MiB resident (peak +224); from the cache 0.18 s (pfx2as 0.08, as2org 0.05, as2types
0.05), +43 MiB; cache files 22 MiB. The launcher parses pfx2as text as whole columns
(``ReferenceCatalog(read_pfx2as_text=…)``, ``services/beam_launcher/enrichment/
pfx2as_arrays.py``): the same table in 0.6 instead of 2.2 CPU-s for 1M prefixes.
Before (one dict per length, dicts of tuples, no cache): 3.2 s and +210 MiB in every
process. ``PrefixTable.lookup``: ~150,000/s
(memory-latency bound on that machine: one probe of a 1M-entry dict cost 360 ns, of a
small one 60 ns; the old per-length dicts gave the same rate).

Example:
    >>> table = parse_pfx2as(["8.0.0.0\\t9\\t3356", "8.8.8.0\\t24\\t15169"])
    >>> table.lookup("8.8.8.8")
    PrefixMatch(netblock='8.8.8.0/24', asn=15169, origin='15169')
    >>> table.lookup("8.1.2.3").netblock
    '8.0.0.0/9'
    >>> orgs = parse_as2org(["# format:aut|changed|aut_name|org_id|opaque_id|source",
    ...                      "15169|20120224|GOOGLE|GOGL-ARIN||ARIN",
    ...                      "# format:org_id|changed|org_name|country|source",
    ...                      "GOGL-ARIN|20191031|Google LLC|US|ARIN"])
    >>> orgs[15169]
    AsOrg(as_name='GOOGLE', org_name='Google LLC', country='US')
    >>> e = Enricher(pfx2as=table, pfx2as_id="routeviews-rv2-20201101-1200",
    ...              as2org=orgs, as2org_id="20201001.as-org2info",
    ...              as2types={15169: "Content"}, as2types_id="20201101.as2types")
    >>> m = e.lookup("8.8.8.8")
    >>> (m.netblock, m.asn, m.as_name, m.as_full_name, m.as_class, m.country)
    ('8.8.8.0/24', 15169, 'GOOGLE', 'Google LLC', 'Content', 'US')
    >>> m.sources
    ('routeviews-rv2-20201101-1200', '20201001.as-org2info', '20201101.as2types')
    >>> e.lookup("10.1.2.3").status, e.lookup("not an ip").status
    ('special', 'invalid')
"""

from __future__ import annotations

import array
import bisect
import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import ipaddress
import itertools
import os
import re
import socket
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from services.common import storage as st

__all__ = [
    "AsOrg",
    "AsOrgTable",
    "Enricher",
    "EnrichmentStats",
    "IpMetadata",
    "OrgSource",
    "PrefixMatch",
    "PrefixTable",
    "RefFile",
    "ReferenceCatalog",
    "Selection",
    "default_cache_dir",
    "enrich_pairs",
    "metadata_fields",
    "parse_as2org",
    "parse_as2types",
    "parse_asn",
    "parse_origin",
    "parse_pfx2as",
    "read_pfx2as",
]

# ---------------------------------------------------------------------------------------
# Origins and ASNs


def parse_asn(token: str) -> int:
    """An ASN in asplain (``64512``) or asdot (``1.10`` = 65546); ValueError otherwise."""
    token = token.strip()
    if token.isascii() and token.isdigit():
        value = int(token)
    else:
        hi, sep, lo = token.partition(".")
        if not (sep and hi.isascii() and hi.isdigit() and lo.isascii() and lo.isdigit()):
            raise ValueError(f"not an ASN: {token!r}")
        if int(hi) > 0xFFFF or int(lo) > 0xFFFF:
            raise ValueError(f"asdot part out of range: {token!r}")
        value = (int(hi) << 16) | int(lo)
    if value > 0xFFFFFFFF:
        raise ValueError(f"ASN out of range: {token!r}")
    return value


def parse_origin(raw: str) -> tuple[int, tuple[int, ...]]:
    """The reported ASN and every distinct ASN of a pfx2as origin field, in order.

    ``_`` separates the origins of a multi-origin prefix (MOAS); ``,`` separates the
    members of an AS set. The reported ASN is the first ASN of the first origin.

    >>> parse_origin("12025_11217,20019")
    (12025, (12025, 11217, 20019))
    >>> parse_origin("4192,7160_7160")
    (4192, (4192, 7160))
    """
    seen: dict[int, None] = {}
    for origin in raw.split("_"):
        for member in origin.split(","):
            seen.setdefault(parse_asn(member), None)
    if not seen:  # pragma: no cover - split always yields one token
        raise ValueError("empty origin")
    asns = tuple(seen)
    return asns[0], asns


# ---------------------------------------------------------------------------------------
# Prefix table and longest-prefix match


class PrefixMatch(NamedTuple):
    netblock: str  # "prefix/length", e.g. "8.8.8.0/24"
    asn: int  # first ASN of the first origin
    origin: str  # the raw origin field, e.g. "12025_11217,20019"


class PrefixTable:
    """Longest-prefix match over IPv4 and IPv6 prefixes.

    While building, one dict per prefix length keyed by ``address >> (width - length)``:
    the network bits only, so host bits set in an input prefix are ignored. A prefix
    given twice keeps its first line (CAIDA files have no duplicates). ``freeze`` turns
    the IPv4 part into sorted arrays (see ``match_v4``).
    """

    __slots__ = (
        "_deep6",
        "_lengths4",
        "_p_asn",
        "_p_len",
        "_p_parent",
        "_p_start",
        "_probes6",
        "_probes6_short",
        "_raw",
        "_v4",
        "_v6",
        "bad_lines",
        "count",
    )

    # Most IPv6 prefixes are at most /48. Addresses whose /48 holds no longer prefix
    # start probing at that length, skipping the empty probes of the longer lengths.
    SPLIT6 = 48

    def __init__(self) -> None:
        # While building: length → {network bits: asn}. ``freeze`` turns the IPv4 part
        # into the flat arrays below and empties ``_v4``.
        self._v4: dict[int, dict[int, int]] = {}
        self._v6: dict[int, dict[int, int]] = {}
        # Raw origin strings only where they differ from str(asn) (MOAS / AS sets: <1 %).
        self._raw: dict[tuple[int, int, int], str] = {}  # (family, length, key) → raw
        # Frozen IPv4 prefixes sorted by (start address, length): start, length, ASN and
        # the index of the innermost prefix enclosing it (-1: none).
        self._p_start = array.array("I")
        self._p_len = array.array("B")
        self._p_asn = array.array("I")
        self._p_parent = array.array("i")
        self._lengths4: tuple[int, ...] = ()
        self._probes6: tuple[tuple[int, int, dict[int, int]], ...] = ()
        self._probes6_short: tuple[tuple[int, int, dict[int, int]], ...] = ()
        self._deep6: frozenset[int] = frozenset()
        self.count = 0
        self.bad_lines = 0

    # -- building ------------------------------------------------------------------------

    @staticmethod
    def entry(prefix: str, length: int, origin: str) -> tuple[int, int, int, int, str | None]:
        """What :meth:`add` stores for one line: (family, length, network bits, ASN, raw
        origin or None when it is ``str(asn)``); ValueError (or OSError) when malformed.

        >>> PrefixTable.entry("8.8.8.0", 24, "15169_36040")
        (4, 24, 526344, 15169, '15169_36040')
        """
        asn, _ = parse_origin(origin)
        if ":" in prefix:
            family, width = 6, 128
            addr = int.from_bytes(socket.inet_pton(socket.AF_INET6, prefix), "big")
        else:
            family, width = 4, 32
            addr = int.from_bytes(socket.inet_pton(socket.AF_INET, prefix), "big")
        if not 0 <= length <= width:
            raise ValueError(f"prefix length out of range: {length}")
        key = addr >> (width - length)
        return family, length, key, asn, (origin if origin != str(asn) else None)

    def add(self, prefix: str, length: int, origin: str) -> None:
        """Add one prefix; ValueError on a malformed prefix, length or origin."""
        family, length, key, asn, raw = self.entry(prefix, length, origin)
        if family == 4:
            if self._p_start:  # frozen: back to dicts until the next freeze
                self._thaw4()
            by_len = self._v4
        else:
            by_len = self._v6
        bucket = by_len.get(length)
        if bucket is None:
            bucket = by_len[length] = {}
        if key in bucket:
            return
        bucket[key] = asn
        if raw is not None:
            self._raw[(family, length, key)] = raw
        self.count += 1

    def freeze(self) -> PrefixTable:
        """Build the IPv4 arrays and fix the IPv6 probe order (longest first). Called by
        ``parse_pfx2as``; idempotent."""
        if self._v4:
            self._build4()
        self._probes6 = tuple((n, 128 - n, self._v6[n]) for n in sorted(self._v6, reverse=True))
        self._probes6_short = tuple(p for p in self._probes6 if p[0] <= self.SPLIT6)
        self._deep6 = self._deep_keys(self._v6, self.SPLIT6)
        return self

    def _build4(self) -> None:
        """IPv4 dicts → arrays sorted by (start, length), each with its enclosing prefix.

        Prefixes are nested or disjoint, so one pass with a stack of open prefixes finds
        each one's innermost encloser.
        """
        enc: list[int] = []
        for n, bucket in self._v4.items():
            shift = 32 - n
            enc += [(key << shift) << 6 | n for key in bucket]
        enc.sort()
        starts = [e >> 6 for e in enc]
        lens = [e & 63 for e in enc]
        v4 = self._v4
        asns = [v4[n][start >> (32 - n)] for start, n in zip(starts, lens, strict=True)]
        parents: list[int] = []
        open_ends: list[int] = []
        open_idx: list[int] = []
        for i, (start, n) in enumerate(zip(starts, lens, strict=True)):
            while open_ends and open_ends[-1] < start:
                open_ends.pop()
                open_idx.pop()
            parents.append(open_idx[-1] if open_idx else -1)
            open_ends.append(start | ((1 << (32 - n)) - 1))
            open_idx.append(i)
        self._set4(
            array.array("I", starts),
            array.array("B", lens),
            array.array("I", asns),
            array.array("i", parents),
        )
        self._v4 = {}

    def _set4(
        self,
        starts: array.array[int],
        lens: array.array[int],
        asns: array.array[int],
        parents: array.array[int],
    ) -> None:
        self._p_start, self._p_len, self._p_asn, self._p_parent = starts, lens, asns, parents
        self._lengths4 = tuple(sorted(set(lens), reverse=True))

    def _thaw4(self) -> None:
        """The frozen IPv4 arrays back into per-length dicts (to add more prefixes)."""
        for start, n, asn in zip(self._p_start, self._p_len, self._p_asn, strict=True):
            self._v4.setdefault(n, {})[start >> (32 - n)] = asn
        self._set4(array.array("I"), array.array("B"), array.array("I"), array.array("i"))

    @staticmethod
    def _deep_keys(by_len: dict[int, dict[int, int]], split: int) -> frozenset[int]:
        """The split-length networks that contain a longer prefix."""
        deep: set[int] = set()
        for length, bucket in by_len.items():
            if length > split:
                drop = length - split
                deep.update(key >> drop for key in bucket)
        return frozenset(deep)

    # -- queries -------------------------------------------------------------------------

    @property
    def has_ipv4(self) -> bool:
        return bool(self._p_start) or bool(self._v4)

    @property
    def has_ipv6(self) -> bool:
        return bool(self._v6)

    def lengths(self, family: int = 4) -> tuple[int, ...]:
        """The prefix lengths present, longest first."""
        if family == 4:
            return self._lengths4
        return tuple(p[0] for p in self._probes6)

    def match_v4(self, addr: int) -> PrefixMatch | None:
        """Longest match for an IPv4 address given as a 32-bit int.

        The last prefix starting at or before ``addr`` (binary search), then up its chain
        of enclosing prefixes to the first that holds ``addr``: that is the longest match
        (any prefix between the match and the candidate in sort order lies inside the
        match, so the candidate descends from it).
        """
        i = self.index_v4(addr)
        return self.match_at(i) if i >= 0 else None

    def index_v4(self, addr: int) -> int:
        """The index of the longest IPv4 prefix holding ``addr`` (see :meth:`match_v4`),
        or -1; :meth:`match_at` gives its match."""
        starts = self._p_start
        i = bisect.bisect_right(starts, addr) - 1
        while i >= 0:
            shift = 32 - self._p_len[i]
            if addr >> shift == starts[i] >> shift:
                return i
            i = self._p_parent[i]
        return -1

    def match_at(self, i: int) -> PrefixMatch:
        """The match of the frozen IPv4 prefix at index ``i`` (from :meth:`index_v4`)."""
        start = self._p_start[i]
        length = self._p_len[i]
        asn = self._p_asn[i]
        raw = self._raw.get((4, length, start >> (32 - length))) if self._raw else None
        return PrefixMatch(self.netblock_at(i), asn, raw or str(asn))

    def arrays_v4(self) -> tuple[array.array[int], ...]:
        """The frozen IPv4 prefixes as arrays sorted by (start, length): start address
        (``I``), length (``B``), ASN (``I``) and the index of the innermost enclosing
        prefix (``i``, -1: none); read-only views for whole-batch lookups."""
        return self._p_start, self._p_len, self._p_asn, self._p_parent

    def netblock_at(self, i: int) -> str:
        """``"a.b.c.d/n"`` of the frozen IPv4 prefix at index ``i``."""
        start = self._p_start[i]
        return (
            f"{start >> 24}.{start >> 16 & 255}.{start >> 8 & 255}.{start & 255}/{self._p_len[i]}"
        )

    def asn_at(self, i: int) -> int:
        """The ASN of the frozen IPv4 prefix at index ``i``."""
        return self._p_asn[i]

    def match_v6(self, addr: int) -> PrefixMatch | None:
        """Longest match for an IPv6 address given as a 128-bit int."""
        probes = self._probes6 if addr >> 80 in self._deep6 else self._probes6_short
        for length, shift, bucket in probes:
            key = addr >> shift
            asn = bucket.get(key)
            if asn is not None:
                net = socket.inet_ntop(socket.AF_INET6, (key << shift).to_bytes(16, "big"))
                raw = self._raw.get((6, length, key)) if self._raw else None
                return PrefixMatch(f"{net}/{length}", asn, raw or str(asn))
        return None

    def lookup(self, ip: str) -> PrefixMatch | None:
        """Longest match for an address string; None when unmatched or not an address."""
        parsed = parse_ip(ip)
        if parsed is None:
            return None
        family, addr = parsed
        return self.match_v4(addr) if family == 4 else self.match_v6(addr)

    def __len__(self) -> int:
        return self.count

    # -- compact form (the catalog's cache) ----------------------------------------------

    def to_bytes(self) -> bytes:
        """The table as flat arrays: a JSON header, then per length the keys and ASNs.

        IPv4: the frozen arrays as they are; IPv6: per length the keys as two uint64
        arrays (high, low 64 bits) and the ASNs.
        Native byte order (the cache is local to a machine). :meth:`from_bytes` reads it.
        """
        header: dict[str, Any] = {
            "count": self.count,
            "bad_lines": self.bad_lines,
            "byteorder": sys.byteorder,
            "v4": len(self._p_start),
            "v6": [[n, len(b)] for n, b in self._v6.items()],
            "raw": [[f, n, str(k), r] for (f, n, k), r in self._raw.items()],
        }
        if self._v4:
            raise ValueError("freeze() the table first")
        chunks = [a.tobytes() for a in (self._p_start, self._p_len, self._p_asn, self._p_parent)]
        mask = (1 << 64) - 1
        for bucket in self._v6.values():
            chunks += [
                array.array("Q", [k >> 64 for k in bucket]).tobytes(),
                array.array("Q", [k & mask for k in bucket]).tobytes(),
                array.array("I", bucket.values()).tobytes(),
            ]
        head = orjson.dumps(header)
        return b"".join([len(head).to_bytes(8, "little"), head, *chunks])

    @classmethod
    def from_bytes(cls, data: bytes) -> PrefixTable:
        """A frozen table from :meth:`to_bytes`; ValueError when the data is not one."""
        try:
            size = int.from_bytes(data[:8], "little")
            header = orjson.loads(data[8 : 8 + size])
            if header["byteorder"] != sys.byteorder:
                raise ValueError("written on a machine of the other byte order")
            view = memoryview(data)[8 + size :]
            pos = 0

            def take_array(code: str, n: int) -> array.array[int]:
                nonlocal pos
                arr = array.array(code)
                end = pos + n * arr.itemsize
                if end > len(view):
                    raise ValueError("truncated")
                arr.frombytes(view[pos:end])
                pos = end
                return arr

            def take(code: str, n: int) -> list[int]:
                return take_array(code, n).tolist()

            table = cls()
            n4 = int(header["v4"])
            table._set4(
                take_array("I", n4), take_array("B", n4), take_array("I", n4), take_array("i", n4)
            )
            for n, k in header["v6"]:
                hi, lo = take("Q", k), take("Q", k)
                keys = [h << 64 | low for h, low in zip(hi, lo, strict=True)]
                table._v6[int(n)] = dict(zip(keys, take("I", k), strict=True))
            if pos != len(view):
                raise ValueError("trailing bytes")
            table._raw = {(int(f), int(n), int(k)): str(r) for f, n, k, r in header["raw"]}
            table.count = int(header["count"])
            table.bad_lines = int(header["bad_lines"])
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"not a compact prefix table: {exc}") from exc
        return table.freeze()


def parse_pfx2as(lines: Iterable[str | bytes]) -> PrefixTable:
    """Build a table from pfx2as lines (IPv4 and/or IPv6; blank and ``#`` lines skipped).

    Malformed lines are skipped and counted in ``table.bad_lines`` (see
    :func:`read_pfx2as`, which also gives the common line its fast path).
    """
    table = PrefixTable()
    v4 = table._v4
    raw = table._raw
    count = 0

    def add_plain4(prefix: str, addr: int, length: int, asn: int, origin: str) -> None:
        nonlocal count
        key = addr >> (32 - length)
        bucket = v4.get(length)
        if bucket is None:
            bucket = v4[length] = {}
        if key in bucket:
            return
        bucket[key] = asn
        if len(origin) > 1 and origin[0] == "0":  # "015169": keep the raw field
            raw[(4, length, key)] = origin
        count += 1

    table.bad_lines += read_pfx2as(lines, add_plain4, table.add)
    table.count += count
    return table.freeze()


def read_pfx2as(
    lines: Iterable[str | bytes],
    add_plain4: Callable[[str, int, int, int, str], None],
    add: Callable[[str, int, str], None],
) -> int:
    """Feed pfx2as lines to a prefix table being built; returns the malformed lines.

    Blank and ``#`` lines are skipped. The common line (tab-separated: an IPv4 prefix, a
    decimal length and one plain decimal ASN) is checked here and given, already parsed,
    to ``add_plain4(prefix, address as int, length, asn, origin field)``; every other
    line goes to ``add(prefix, length, origin)``, which raises ValueError (or OSError)
    on a malformed one. Both must give the same table for the same line.
    """
    bad = 0
    pton = socket.inet_pton
    af_inet = socket.AF_INET
    from_bytes = int.from_bytes
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text or text[0] == "#":
            continue
        parts = text.split("\t")
        if len(parts) == 3:
            prefix, length_s, origin = parts
            if (
                origin.isdigit()
                and length_s.isdigit()
                and origin.isascii()
                and length_s.isascii()
                and ":" not in prefix
                and len(length_s) < 3
            ):
                asn = int(origin)
                length = int(length_s)
                try:
                    addr = from_bytes(pton(af_inet, prefix), "big")
                except (OSError, ValueError):
                    bad += 1
                    continue
                if asn > 0xFFFFFFFF or length > 32:
                    bad += 1
                    continue
                add_plain4(prefix, addr, length, asn, origin)
                continue
        else:
            parts = text.split()
        try:
            prefix, length_s, origin = parts
            add(prefix, int(length_s), origin)
        except (ValueError, OSError):
            bad += 1
    return bad


# ---------------------------------------------------------------------------------------
# IP parsing


def parse_ip(ip: str) -> tuple[int, int] | None:
    """(family, integer) of an address string, or None. IPv4-mapped IPv6 → IPv4.

    Strict: no leading zeros, no shorthand forms (``inet_pton`` rules).
    """
    try:
        text = ip.strip()
        if ":" not in text:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0]), "big")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d
        return 4, value & 0xFFFFFFFF
    return 6, value


# First octets under which IANA special-purpose IPv4 ranges live; anything else is
# global unicast and skips the (slower) ipaddress check.
V4_SPECIAL_FIRST_OCTETS = frozenset([0, 10, 100, 127, 169, 172, 192, 198, 203, *range(224, 256)])


def is_special_v4(addr: int) -> bool:
    """Private, loopback, link-local, shared, documentation, multicast or reserved."""
    if addr >> 24 not in V4_SPECIAL_FIRST_OCTETS:
        return False
    a = ipaddress.IPv4Address(addr)
    return not a.is_global or a.is_multicast or a.is_reserved


def is_special_v6(addr: int) -> bool:
    """Anything outside global unicast 2000::/3, or a special range inside it."""
    if addr >> 125 != 1:
        return True
    a = ipaddress.IPv6Address(addr)
    return not a.is_global or a.is_multicast or a.is_reserved


# ---------------------------------------------------------------------------------------
# AS organisations and classes


class AsOrg(NamedTuple):
    as_name: str | None  # aut_name, e.g. "GOOGLE"
    org_name: str | None  # organisation name, e.g. "Google LLC"
    country: str | None  # organisation's registration country (ISO alpha-2)


_NO_ORG = AsOrg(None, None, None)
#: ASNs whose (AsOrg, class) one Enricher keeps decoded (CAIDA lists about 120k ASNs).
ASN_MEMO_SIZE = 200_000


def _none_if_empty(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


_FIELD_ALIASES = {"name": None, "aut_name": "name", "org_name": "name", "aut": "asn"}


def _format_fields(header: str) -> list[str]:
    # "# format:org_id|changed|org_name|..." or "# format: aut|changed|name|org_id|source"
    spec = header.split(":", 1)[1]
    return [f.strip().lower() for f in spec.split("|")]


def _fit_fields(parts: list[str], fields: list[str], name_field: str) -> list[str] | None:
    """Match a line's parts to the header; extra ``|`` are assumed to be in the name."""
    if len(parts) == len(fields):
        return parts
    if len(parts) < len(fields) or name_field not in fields:
        return None
    i = fields.index(name_field)
    extra = len(parts) - len(fields)
    return [*parts[:i], "|".join(parts[i : i + extra + 1]), *parts[i + extra + 1 :]]


def parse_as2org(lines: Iterable[str | bytes]) -> dict[int, AsOrg]:
    """ASN → AsOrg from either CAIDA as-org2info format (detected per line).

    Pipe format: sections are found by their ``# format:`` header (org section:
    first field ``org_id``; AS section: first field ``aut``), in either order, with
    or without ``opaque_id``. JSONL: objects with ``type`` ``Organization`` or ``ASN``.
    An AS whose organisation is missing gets ``AsOrg(as_name, None, None)``.
    Unparsable lines are skipped.
    """
    orgs: dict[str, tuple[str | None, str | None]] = {}
    auts: dict[int, tuple[str | None, str]] = {}
    section: str | None = None
    fields: list[str] = []
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text:
            continue
        if text[0] == "{":
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            kind = obj.get("type")
            if kind == "Organization" and obj.get("organizationId"):
                orgs[str(obj["organizationId"])] = (
                    _none_if_empty(obj.get("name")),
                    _none_if_empty(obj.get("country")),
                )
            elif kind == "ASN" and obj.get("asn") is not None:
                try:
                    asn = parse_asn(str(obj["asn"]))
                except ValueError:
                    continue
                auts[asn] = (_none_if_empty(obj.get("name")), str(obj.get("organizationId") or ""))
            continue
        if text[0] == "#":
            if text[1:].lstrip().lower().startswith("format:"):
                fields = _format_fields(text)
                section = {"org_id": "org", "aut": "aut"}.get(fields[0])
            continue
        if section is None:
            continue
        parts = text.split("|")
        if section == "org":
            name_field = "org_name" if "org_name" in fields else "name"
            fitted = _fit_fields(parts, fields, name_field)
            if fitted is None:
                continue
            rec = dict(zip(fields, fitted, strict=True))
            if rec.get("org_id"):
                orgs[rec["org_id"]] = (
                    _none_if_empty(rec.get(name_field)),
                    _none_if_empty(rec.get("country")),
                )
        else:
            name_field = "aut_name" if "aut_name" in fields else "name"
            fitted = _fit_fields(parts, fields, name_field)
            if fitted is None:
                continue
            rec = dict(zip(fields, fitted, strict=True))
            try:
                asn = parse_asn(rec["aut"])
            except ValueError:
                continue
            auts[asn] = (_none_if_empty(rec.get(name_field)), rec.get("org_id") or "")
    out: dict[int, AsOrg] = {}
    for asn, (as_name, org_id) in auts.items():
        org_name, country = orgs.get(org_id, (None, None))
        out[asn] = AsOrg(as_name, org_name, country)
    return out


def parse_as2types(lines: Iterable[str | bytes]) -> dict[int, str]:
    """ASN → class (``Transit/Access``, ``Content``, ``Enterprise``) from ``as|source|type``.

    Values are taken from the data lines as written (the header's type list is ignored:
    a 2015 header misspells one). ``#`` lines and malformed lines are skipped.
    """
    out: dict[int, str] = {}
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text or text[0] == "#":
            continue
        parts = text.split("|")
        if len(parts) < 3:
            continue
        try:
            asn = parse_asn(parts[0])
        except ValueError:
            continue
        cls = parts[-1].strip()
        if cls:
            out[asn] = cls
    return out


class AsOrgTable(Mapping[int, AsOrg]):
    """ASN → AsOrg held compactly: a sorted ASN array, per ASN three indices into the
    distinct strings (-1: None), the strings kept as one text with end offsets. What the
    catalog loads: equal content to the dict from :func:`parse_as2org`, in a fraction of
    its memory and load time, and no large container for the garbage collector to walk.

    >>> t = AsOrgTable.from_mapping({15169: AsOrg("GOOGLE", "Google LLC", "US")})
    >>> t[15169], t.get(1), len(t), 15169 in t
    (AsOrg(as_name='GOOGLE', org_name='Google LLC', country='US'), None, 1, True)
    """

    __slots__ = ("_asns", "_ends", "_fields", "_text")

    def __init__(
        self,
        asns: array.array[int],
        fields: array.array[int],
        text: str,
        ends: array.array[int],
    ) -> None:
        if len(fields) != 3 * len(asns):
            raise ValueError("field array does not match the ASN array")
        if (ends[-1] if ends else 0) != len(text):
            raise ValueError("string offsets do not match the text")
        if fields and (min(fields) < -1 or max(fields) >= len(ends)):
            raise ValueError("string index out of range")
        self._asns, self._fields, self._text, self._ends = asns, fields, text, ends

    @classmethod
    def from_mapping(cls, table: Mapping[int, AsOrg]) -> AsOrgTable:
        index: dict[str, int] = {}
        fields = array.array("i")
        asns = sorted(table)
        for asn in asns:
            for value in table[asn]:
                fields.append(-1 if value is None else index.setdefault(value, len(index)))
        ends = array.array("I", itertools.accumulate(len(x) for x in index))
        return cls(array.array("I", asns), fields, "".join(index), ends)

    def arrays(self) -> tuple[array.array[int], array.array[int], list[str]]:
        """The sorted ASNs (``I``), per ASN three indices (name, organisation name,
        country; -1: None) into the distinct strings (``i``), and those strings."""
        starts = itertools.chain((0,), self._ends)
        strings = [self._text[a:b] for a, b in zip(starts, self._ends, strict=False)]
        return self._asns, self._fields, strings

    def _position(self, asn: object) -> int:
        if not isinstance(asn, int) or not 0 <= asn <= 0xFFFFFFFF:
            return -1
        i = bisect.bisect_left(self._asns, asn)
        return i if i < len(self._asns) and self._asns[i] == asn else -1

    def _string(self, k: int) -> str | None:
        if k < 0:
            return None
        return self._text[self._ends[k - 1] if k else 0 : self._ends[k]]

    def _at(self, i: int) -> AsOrg:
        f = self._fields
        return AsOrg(self._string(f[3 * i]), self._string(f[3 * i + 1]), self._string(f[3 * i + 2]))

    def __getitem__(self, asn: int) -> AsOrg:
        i = self._position(asn)
        if i < 0:
            raise KeyError(asn)
        return self._at(i)

    def get(self, asn: int, default: Any = None) -> Any:
        i = self._position(asn)
        return self._at(i) if i >= 0 else default

    def __contains__(self, asn: object) -> bool:
        return self._position(asn) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._asns)

    def __len__(self) -> int:
        return len(self._asns)

    def to_bytes(self) -> bytes:
        head = orjson.dumps({"n": len(self._asns), "strings": len(self._ends), "text": self._text})
        body = self._asns.tobytes() + self._fields.tobytes() + self._ends.tobytes()
        return len(head).to_bytes(8, "little") + head + body

    @classmethod
    def from_bytes(cls, data: bytes) -> AsOrgTable:
        """:meth:`to_bytes` read back; ValueError when the data is not one."""
        try:
            size = int.from_bytes(data[:8], "little")
            header = orjson.loads(data[8 : 8 + size])
            n, n_strings, text = int(header["n"]), int(header["strings"]), header["text"]
            if not isinstance(text, str):
                raise ValueError("bad text")
            asns, fields, ends = array.array("I"), array.array("i"), array.array("I")
            body = memoryview(data)[8 + size :]
            cut1 = n * asns.itemsize
            cut2 = cut1 + 3 * n * fields.itemsize
            if len(body) != cut2 + n_strings * ends.itemsize:
                raise ValueError("size mismatch")
            asns.frombytes(body[:cut1])
            fields.frombytes(body[cut1:cut2])
            ends.frombytes(body[cut2:])
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"not a compact as2org table: {exc}") from exc
        return cls(asns, fields, text, ends)


def as2org_to_bytes(table: Mapping[int, AsOrg]) -> bytes:
    """Compact form of a parsed as-org2info table (the catalog's cache)."""
    compact = table if isinstance(table, AsOrgTable) else AsOrgTable.from_mapping(table)
    return compact.to_bytes()


def as2org_from_bytes(data: bytes) -> AsOrgTable:
    """:func:`as2org_to_bytes` read back; ValueError when the data is not one."""
    return AsOrgTable.from_bytes(data)


def as2types_to_bytes(table: Mapping[int, str]) -> bytes:
    """Compact JSON form of a parsed as2types table (the catalog's cache)."""
    return orjson.dumps({"asn": list(table), "type": list(table.values())})


def as2types_from_bytes(data: bytes) -> dict[int, str]:
    """:func:`as2types_to_bytes` read back; ValueError when the data is not one."""
    try:
        obj = orjson.loads(data)
        names = {str(t): str(t) for t in set(obj["type"])}  # one object per class name
        return {int(a): names[t] for a, t in zip(obj["asn"], obj["type"], strict=True)}
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a compact as2types table: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Enrichment


@dataclass(frozen=True, slots=True)
class IpMetadata:
    """Metadata of one IP on one date. Empty (all None) when it cannot be determined.

    ``sources`` are the ids of the reference files consulted (routeviews, as2org,
    as2types, then the MMDB when its organisation was kept). ``status`` says why the
    metadata is what it is: ``ok`` (prefix matched), ``not_routed`` (no prefix covers
    the IP), ``special`` (private/reserved/multicast…), ``invalid`` (not an IP),
    ``no_table`` (no routeviews data for the IP's family on that date: IPv6 without
    an IPv6 table, or the date's routeviews file is missing/stale).
    """

    netblock: str | None = None
    asn: int | None = None
    as_name: str | None = None
    as_full_name: str | None = None
    as_class: str | None = None
    country: str | None = None
    organization: str | None = None
    sources: tuple[str, ...] = ()
    status: str = "ok"

    @property
    def is_empty(self) -> bool:
        return self.asn is None and self.netblock is None

    def as_columns(self, prefix: str) -> dict[str, Any]:
        """The row columns ``<prefix>_netblock`` … ``<prefix>_organization``.

        >>> IpMetadata(asn=1).as_columns("server")["server_asn"]
        1
        """
        return {
            f"{prefix}_netblock": self.netblock,
            f"{prefix}_asn": self.asn,
            f"{prefix}_as_name": self.as_name,
            f"{prefix}_as_full_name": self.as_full_name,
            f"{prefix}_as_class": self.as_class,
            f"{prefix}_country": self.country,
            f"{prefix}_organization": self.organization,
        }


class OrgSource(Protocol):
    """An optional per-IP organisation source (DB-IP ISP / MaxMind mmdb reader).

    ``lookup`` returns ``(asn, organization)`` or None; ``file_id`` names the database
    (e.g. ``dbip-isp-2025-02``). Implemented by ``services.common.mmdb.MmdbOrgSource``.
    """

    file_id: str

    def lookup(self, ip: str) -> tuple[int | None, str | None] | None: ...


class Enricher:
    """Looks IPs up in one date's reference data. ``lookup`` never raises.

    Build it from parsed tables and their file ids; any part may be None (then the
    fields it provides stay empty and its id is not listed in ``sources``).
    ``pfx2as`` may hold IPv4 and IPv6 prefixes; ``pfx2as6`` is an optional separate
    IPv6 table (CAIDA publishes rv6 files separately).
    """

    def __init__(
        self,
        *,
        pfx2as: PrefixTable | None,
        pfx2as_id: str | None = None,
        as2org: Mapping[int, AsOrg] | None = None,
        as2org_id: str | None = None,
        as2types: Mapping[int, str] | None = None,
        as2types_id: str | None = None,
        pfx2as6: PrefixTable | None = None,
        pfx2as6_id: str | None = None,
        org_source: OrgSource | None = None,
    ) -> None:
        self.pfx2as, self.pfx2as_id = pfx2as, pfx2as_id
        self.pfx2as6, self.pfx2as6_id = pfx2as6, pfx2as6_id
        self.as2org: Mapping[int, AsOrg] = as2org or {}
        self.as2org_id = as2org_id if as2org is not None else None
        self.as2types: Mapping[int, str] = as2types or {}
        self.as2types_id = as2types_id if as2types is not None else None
        self.org_source = org_source
        # Many addresses share an AS: its (AsOrg, class) is decoded once per Enricher.
        self._asn_memo: dict[int, tuple[AsOrg, str | None]] = {}
        self._sources_of: dict[str, tuple[str, ...]] = {}
        # lookup_fields: prefix index (-1: not routed) → the fields of its addresses.
        self._fields_of_prefix: dict[int, tuple[Any, ...]] = {}
        v4 = pfx2as if pfx2as is not None and pfx2as.has_ipv4 else None
        self._v4: tuple[PrefixTable, str] | None = (v4, pfx2as_id or "") if v4 else None
        if pfx2as6 is not None and pfx2as6.has_ipv6:
            self._v6: tuple[PrefixTable, str] | None = (pfx2as6, pfx2as6_id or "")
        elif pfx2as is not None and pfx2as.has_ipv6:
            self._v6 = (pfx2as, pfx2as_id or "")
        else:
            self._v6 = None

    @property
    def has_v4_table(self) -> bool:
        """Whether IPv4 addresses are looked up in a prefix table."""
        return self._v4 is not None

    def v4_table(self) -> tuple[PrefixTable, str]:
        """The IPv4 prefix table and its file id (see :attr:`has_v4_table`)."""
        if self._v4 is None:
            raise ValueError("no IPv4 prefix table")
        return self._v4

    def asn_info(self, asn: int) -> tuple[AsOrg, str | None]:
        """(AsOrg, class) of an ASN; empty parts when the snapshots lack it."""
        got = self._asn_memo.get(asn)
        if got is None:
            got = (self.as2org.get(asn) or _NO_ORG, self.as2types.get(asn))
            if len(self._asn_memo) >= ASN_MEMO_SIZE:
                self._asn_memo.clear()
            self._asn_memo[asn] = got
        return got

    def sources_of(self, table_id: str) -> tuple[str, ...]:
        """The ids of the files a routed address's metadata comes from (no org source)."""
        got = self._sources_of.get(table_id)
        if got is None:
            ids = [table_id]
            if self.as2org_id:
                ids.append(self.as2org_id)
            if self.as2types_id:
                ids.append(self.as2types_id)
            got = self._sources_of[table_id] = tuple(ids)
        return got

    def lookup_fields(self, ip: str) -> tuple[Any, ...]:
        """:meth:`lookup` as the plain tuple of :class:`IpMetadata`'s fields, in order.

        Cheaper for many addresses: a routed IPv4 address (the common case, when no
        organisation source is set) costs no object of its own, and the addresses of one
        prefix share one tuple (memoised per prefix). Every other address goes through
        :meth:`lookup`.

        >>> e = Enricher(pfx2as=parse_pfx2as(["8.8.8.0\\t24\\t15169"]), pfx2as_id="rv")
        >>> e.lookup_fields("8.8.8.8")
        ('8.8.8.0/24', 15169, None, None, None, None, None, ('rv',), 'ok')
        """
        if self._v4 is not None and self.org_source is None and type(ip) is str:
            text = ip.strip()
            if ":" not in text:
                try:
                    addr = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
                except (OSError, ValueError):
                    return _INVALID_FIELDS
                if not is_special_v4(addr):
                    table, table_id = self._v4
                    i = table.index_v4(addr)
                    got = self._fields_of_prefix.get(i)
                    if got is None:
                        got = self._prefix_fields(table, table_id, i)
                    return got
        return metadata_fields(self.lookup(ip))

    def _prefix_fields(self, table: PrefixTable, table_id: str, i: int) -> tuple[Any, ...]:
        """What :meth:`lookup` gives (as fields) for the addresses of IPv4 prefix ``i``
        (-1: none holds them), with no organisation source; memoised."""
        if i < 0:
            got: tuple[Any, ...] = (*(None,) * 7, (table_id,), "not_routed")
        else:
            asn = table.asn_at(i)
            org, cls = self.asn_info(asn)
            sources = self.sources_of(table_id)
            netblock = table.netblock_at(i)
            got = (netblock, asn, org.as_name, org.org_name, cls, org.country, None, sources, "ok")
        if len(self._fields_of_prefix) >= ASN_MEMO_SIZE:
            self._fields_of_prefix.clear()
        self._fields_of_prefix[i] = got
        return got

    def lookup(self, ip: str) -> IpMetadata:
        parsed = parse_ip(ip) if isinstance(ip, str) else None
        if parsed is None:
            return _INVALID
        family, addr = parsed
        if family == 4:
            if is_special_v4(addr):
                return _SPECIAL
            if self._v4 is None:
                return _NO_TABLE
            table, table_id = self._v4
            match = table.match_v4(addr)
        else:
            if is_special_v6(addr):
                return _SPECIAL
            if self._v6 is None:
                return _NO_TABLE
            table, table_id = self._v6
            match = table.match_v6(addr)
        if match is None:
            return IpMetadata(sources=(table_id,), status="not_routed")
        org, cls = self.asn_info(match.asn)
        sources = self.sources_of(table_id)
        organization = None
        if self.org_source is not None:
            organization = self._organization(ip, match.asn)
            if organization is not None:
                sources = (*sources, self.org_source.file_id)
        return IpMetadata(
            netblock=match.netblock,
            asn=match.asn,
            as_name=org.as_name,
            as_full_name=org.org_name,
            as_class=cls,
            country=org.country,
            organization=organization,
            sources=sources,
        )

    def _organization(self, ip: str, asn: int) -> str | None:
        # Kept only when the database's ASN agrees with CAIDA's: a single dated mmdb
        # snapshot is unreliable for old measurements (the seed's rule).
        assert self.org_source is not None
        try:
            hit = self.org_source.lookup(ip)
        except Exception:  # an optional source must never fail the lookup
            return None
        if not hit:
            return None
        db_asn, org = hit
        return org if db_asn == asn and org else None


_INVALID = IpMetadata(status="invalid")
_SPECIAL = IpMetadata(status="special")
_NO_TABLE = IpMetadata(status="no_table")


def metadata_fields(md: IpMetadata) -> tuple[Any, ...]:
    """The fields of ``md`` in order, as :meth:`Enricher.lookup_fields` gives them."""
    return (
        md.netblock,
        md.asn,
        md.as_name,
        md.as_full_name,
        md.as_class,
        md.country,
        md.organization,
        md.sources,
        md.status,
    )


_INVALID_FIELDS = metadata_fields(_INVALID)


# ---------------------------------------------------------------------------------------
# Dated reference files in storage (the layout written by services/routeviews)

KIND_ROUTEVIEWS = "routeviews"
KIND_ROUTEVIEWS6 = "routeviews6"
KIND_AS2ORG = "as2org"
KIND_AS2CLASS = "as2class"

# Folder under the catalog root for each kind (services/routeviews writes these).
KIND_FOLDERS = {
    KIND_ROUTEVIEWS: "routeviews",
    KIND_ROUTEVIEWS6: "routeviews6",
    KIND_AS2ORG: "as-organizations",
    KIND_AS2CLASS: "as-classifications",
}

FILE_PATTERNS = {
    KIND_ROUTEVIEWS: re.compile(
        r"(?P<id>routeviews-(?:rv2|oix)-(?P<date>\d{8})-(?P<time>\d{4}))\.pfx2as\.gz\Z"
    ),
    KIND_ROUTEVIEWS6: re.compile(
        r"(?P<id>routeviews-rv6-(?P<date>\d{8})-(?P<time>\d{4}))\.pfx2as\.gz\Z"
    ),
    KIND_AS2ORG: re.compile(r"(?P<id>(?P<date>\d{8})\.as-org2info)\.(?P<fmt>txt|jsonl)\.gz\Z"),
    KIND_AS2CLASS: re.compile(r"(?P<id>(?P<date>\d{8})\.as2types)\.txt\.gz\Z"),
}


@dataclass(frozen=True, slots=True)
class RefFile:
    """One dated reference file in storage."""

    kind: str
    file_id: str  # e.g. routeviews-rv2-20210530-1200, 20210401.as-org2info
    date: dt.date
    time: str  # HHMM for routeviews, "" otherwise
    rank: int  # preference between two files of one id (as2org: jsonl 1 > txt 0)
    url: str
    size: int = 0

    @property
    def sort_key(self) -> tuple[dt.date, str, int]:
        return (self.date, self.time, self.rank)


def ref_file_from_name(kind: str, url: str, size: int = 0) -> RefFile | None:
    """A RefFile for a stored object whose name matches the kind's pattern, else None."""
    m = FILE_PATTERNS[kind].match(st.basename(url))
    if m is None:
        return None
    try:
        date = dt.datetime.strptime(m["date"], "%Y%m%d").date()
    except ValueError:
        return None
    groups = m.groupdict()
    rank = 1 if groups.get("fmt") == "jsonl" else 0
    return RefFile(kind, m["id"], date, groups.get("time") or "", rank, url, size)


@dataclass(frozen=True, slots=True)
class Selection:
    """The reference files chosen for one measurement date, with the reasons."""

    date: dt.date
    routeviews: RefFile | None
    routeviews_reason: str | None  # None, "stale" (older files only) or "missing"
    as2org: RefFile | None
    as2class: RefFile | None
    routeviews6: RefFile | None = None

    @property
    def key(self) -> tuple[str | None, ...]:
        return tuple(
            f.file_id if f else None
            for f in (self.routeviews, self.as2org, self.as2class, self.routeviews6)
        )

    def age_days(self, which: str) -> int | None:
        f = getattr(self, which)
        return None if f is None else (self.date - f.date).days


T = TypeVar("T")


class _Lru:
    """A small thread-safe LRU keyed by file id (the loaded tables are large)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0

    def get(self, key: str, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                cached: T = self._items[key]
                return cached
            value = load()
            self.loads += 1
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value


def _gz_lines(data: bytes) -> Iterator[str]:
    text = gzip.decompress(data).decode("utf-8", "replace")
    return iter(text.splitlines())


# -- the parsed-table cache ------------------------------------------------------------

CACHE_ENV = "CP_IPMETA_CACHE"
CACHE_VERSION = 2
CACHE_SUFFIX = ".cpmeta"
CACHE_KEEP = 24  # cached tables kept per folder, least recently used removed first
_CACHE_MAGIC = b"CPMETA1\n"
#: Folder under the catalog root where ``services/routeviews`` publishes the parsed form
#: of each mirrored file (the cache entries' format and names), read before parsing.
COMPILED_DIR = "compiled"


def entry_name(file_id: str, codec: str, data: bytes) -> str:
    """The name of the parsed form of a reference file whose bytes are ``data``, in a
    cache folder and under :data:`COMPILED_DIR`: a changed file gets a new name.

    >>> entry_name("20210401.as2types", "as2types", b"x")[:60]
    '20210401.as2types.as2types.2d711642b726b04401627ca9fbac32f5.v2'
    """
    digest = hashlib.sha256(data).hexdigest()[:32]
    return f"{file_id}.{codec}.{digest}.v{CACHE_VERSION}{CACHE_SUFFIX}"


def entry_prefix(file_id: str, codec: str) -> str:
    """What every entry name of ``file_id`` parsed by ``codec`` starts with."""
    return f"{file_id}.{codec}."


def default_cache_dir() -> Path | None:
    """Where parsed tables are cached: ``$CP_IPMETA_CACHE`` (``off`` or empty: no cache),
    else ``$XDG_CACHE_HOME/cp-pipeline/ipmeta`` (``~/.cache/…`` without XDG_CACHE_HOME)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cp-pipeline" / "ipmeta"


def _seal(payload: bytes) -> bytes:
    return _CACHE_MAGIC + hashlib.sha256(payload).digest() + payload


def _unseal(blob: bytes) -> bytes:
    head = len(_CACHE_MAGIC)
    if blob[:head] != _CACHE_MAGIC:
        raise ValueError("not a cache file")
    payload = blob[head + 32 :]
    if hashlib.sha256(payload).digest() != blob[head : head + 32]:
        raise ValueError("checksum mismatch (damaged or truncated)")
    return payload


class _Codec(NamedTuple):
    name: str
    parse: Callable[[bytes], Any]  # the gzipped source file → table
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


#: A faster reader of a whole pfx2as text (gunzipped bytes) giving the same table, or
#: None where it does not apply; the launcher passes one (``pfx2as_arrays``).
TextReader = Callable[[bytes], "PrefixTable | None"]


def _pfx2as_codec(read_text: TextReader | None) -> _Codec:
    def parse(data: bytes) -> PrefixTable:
        text = gzip.decompress(data)
        table = read_text(text) if read_text is not None else None
        if table is None:
            table = parse_pfx2as(text.decode("utf-8", "replace").splitlines())
        return table

    return _Codec("pfx2as", parse, PrefixTable.to_bytes, PrefixTable.from_bytes)


_PFX2AS = _pfx2as_codec(None)
_AS2ORG = _Codec(
    "as2org",
    lambda d: AsOrgTable.from_mapping(parse_as2org(_gz_lines(d))),
    as2org_to_bytes,
    as2org_from_bytes,
)
_AS2TYPES = _Codec(
    "as2types", lambda d: parse_as2types(_gz_lines(d)), as2types_to_bytes, as2types_from_bytes
)


#: The codec each kind's files are loaded with (the routeviews6 files are pfx2as too).
KIND_CODECS = {
    KIND_ROUTEVIEWS: _PFX2AS,
    KIND_ROUTEVIEWS6: _PFX2AS,
    KIND_AS2ORG: _AS2ORG,
    KIND_AS2CLASS: _AS2TYPES,
}


def compiled_names(storage: st.Storage, root: str) -> set[str]:
    """The entry names under ``<root>/compiled/`` (empty when there is no such folder)."""
    try:
        return {st.basename(o.url) for o in storage.list(st.join(root, COMPILED_DIR))}
    except FileNotFoundError:
        return set()


def compile_reference(
    storage: st.Storage, root: str, ref: RefFile, present: Collection[str] = ()
) -> tuple[str, str]:
    """Publish the parsed form of the mirrored file ``ref`` as ``<root>/compiled/<name>``
    (:func:`entry_name`, the format of the catalog's cache), which every
    :class:`ReferenceCatalog` on ``root`` then reads instead of parsing the file.
    Returns ``("compiled" or "present", name)``; ``present``: names already there.
    Written atomically (``storage.write_bytes``), so a reader sees all of it or nothing.
    """
    codec = KIND_CODECS[ref.kind]
    data = storage.read_bytes(ref.url)
    name = entry_name(ref.file_id, codec.name, data)
    if name in present:
        return "present", name
    storage.write_bytes(st.join(root, COMPILED_DIR, name), _seal(codec.encode(codec.parse(data))))
    return "compiled", name


class ReferenceCatalog:
    """Lists the mirrored reference files under ``root`` and picks them by date.

    Layout (as written by ``python -m services.routeviews``; file names are matched
    anywhere below each folder, so a flat folder works too)::

        <root>/routeviews/YYYY/MM/routeviews-rv2-YYYYMMDD-HHMM.pfx2as.gz
        <root>/routeviews6/YYYY/MM/routeviews-rv6-YYYYMMDD-HHMM.pfx2as.gz   (optional)
        <root>/as-organizations/YYYYMMDD.as-org2info.{txt,jsonl}.gz
        <root>/as-classifications/YYYYMMDD.as2types.txt.gz
        <root>/compiled/<entry name>.cpmeta   (parsed forms, read instead of parsing)

    Choice for a measurement date D:

    * routeviews (and routeviews6): the newest file dated ≤ D and ≥ D −
      ``max_staleness_days``; on a tie the latest HHMM. None with reason ``stale``
      when only older files exist, ``missing`` when none is dated ≤ D.
    * as2org and as2class: the newest snapshot dated ≤ D; when there is none (D before
      the first snapshot), the earliest snapshot after D. Snapshots are quarterly or
      sparser and AS names change slowly, so a near snapshot beats no names at all.
      For two formats of one as2org date, JSONL is preferred.

    Loaded tables are cached, LRU by file id (``max_tables`` pfx2as tables of ~100 MiB
    each for a full IPv4 file, ``max_asinfo`` AS snapshots). The storage listing is taken
    on first use; call ``refresh()`` to see files mirrored since.
    """

    def __init__(
        self,
        root: str,
        *,
        max_staleness_days: int = 30,
        max_tables: int = 2,
        max_asinfo: int = 4,
        storage: st.Storage | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        read_pfx2as_text: TextReader | None = None,
    ) -> None:
        self.root = root
        # pfx2as files: parsed by ``read_pfx2as_text`` where it applies, else by line.
        self._pfx2as = _pfx2as_codec(read_pfx2as_text) if read_pfx2as_text else _PFX2AS
        self.max_staleness_days = max_staleness_days
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_hits = 0
        self.cache_writes = 0
        self.compiled_hits = 0  # tables read from <root>/compiled/ instead of parsed
        self._cache_warned = False
        self._storage = storage or st.storage_for(root)
        self._files: dict[str, list[RefFile]] | None = None
        self._tables = _Lru(max_tables)
        self._asinfo = _Lru(max_asinfo)
        self._lock = threading.RLock()

    # -- listing -------------------------------------------------------------------------

    def refresh(self) -> None:
        """(Re)list the storage location."""
        files: dict[str, list[RefFile]] = {}
        for kind, folder in KIND_FOLDERS.items():
            found: list[RefFile] = []
            try:
                for obj in self._storage.list(st.join(self.root, folder)):
                    ref = ref_file_from_name(kind, obj.url, obj.size)
                    if ref is not None:
                        found.append(ref)
            except FileNotFoundError:
                pass
            files[kind] = sorted(found, key=lambda f: f.sort_key)
        with self._lock:
            self._files = files

    def available(self, kind: str) -> list[RefFile]:
        """The files of one kind, oldest first (by date, HHMM, format preference)."""
        with self._lock:
            if self._files is None:
                self.refresh()
            assert self._files is not None
            return list(self._files.get(kind, ()))

    # -- choosing ------------------------------------------------------------------------

    def _routeviews(self, kind: str, date: dt.date) -> tuple[RefFile | None, str | None]:
        files = self.available(kind)
        at_or_before = [f for f in files if f.date <= date]
        if not at_or_before:
            return None, "missing"
        newest = at_or_before[-1]
        if (date - newest.date).days > self.max_staleness_days:
            return None, "stale"
        return newest, None

    def _snapshot(self, kind: str, date: dt.date) -> RefFile | None:
        files = self.available(kind)
        if not files:
            return None
        at_or_before = [f for f in files if f.date <= date]
        if at_or_before:
            return at_or_before[-1]
        first_date = files[0].date
        return [f for f in files if f.date == first_date][-1]

    def choose(self, date: dt.date) -> Selection:
        rv, reason = self._routeviews(KIND_ROUTEVIEWS, date)
        rv6, _ = self._routeviews(KIND_ROUTEVIEWS6, date)
        return Selection(
            date=date,
            routeviews=rv,
            routeviews_reason=reason,
            as2org=self._snapshot(KIND_AS2ORG, date),
            as2class=self._snapshot(KIND_AS2CLASS, date),
            routeviews6=rv6,
        )

    # -- loading -------------------------------------------------------------------------

    def _read(self, ref: RefFile) -> bytes:
        return self._storage.read_bytes(ref.url)

    def load_pfx2as(self, ref: RefFile) -> PrefixTable:
        table: PrefixTable = self._tables.get(ref.file_id, lambda: self._load(self._pfx2as, ref))
        return table

    def load_as2org(self, ref: RefFile) -> AsOrgTable:
        orgs: AsOrgTable = self._asinfo.get(ref.file_id, lambda: self._load(_AS2ORG, ref))
        return orgs

    def load_as2types(self, ref: RefFile) -> dict[int, str]:
        types: dict[int, str] = self._asinfo.get(ref.file_id, lambda: self._load(_AS2TYPES, ref))
        return types

    def _load(self, codec: _Codec, ref: RefFile) -> Any:
        """Parse a reference file, or read its parsed form from the cache folder.

        Cache entries are named by the SHA-256 of the source file's bytes, so a changed
        file is never served from an old entry. A damaged entry is logged and replaced;
        a cache folder that cannot be written is logged once and the run goes on.
        """
        data = self._read(ref)
        name = entry_name(ref.file_id, codec.name, data)
        if self.cache_dir is None:
            got = self._compiled(codec, name)
            return got[0] if got is not None else codec.parse(data)
        path = self.cache_dir / name
        value = self._cache_read(codec, path)
        if value is not None:
            return value
        # Worker processes start together: one parses while the others wait for its entry.
        with self._cache_lock():
            value = self._cache_read(codec, path, report=False)
            if value is not None:
                return value
            got = self._compiled(codec, name)
            if got is not None:
                value, blob = got
            else:
                value = codec.parse(data)
                blob = _seal(codec.encode(value))
            tmp = path.with_name(f"{name}.tmp-{os.getpid()}-{threading.get_ident()}")
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(blob)
                os.replace(tmp, path)
                self.cache_writes += 1
                self._prune()
            except OSError as exc:
                self._warn("ipmeta_cache_not_written", path, exc)
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return value

    def _compiled(self, codec: _Codec, name: str) -> tuple[Any, bytes] | None:
        """(table, sealed bytes) of the entry ``name`` that ``services/routeviews``
        published under ``<root>/compiled/``, or None: absent, unreadable or damaged (the
        last two logged; the file is then parsed here)."""
        url = st.join(self.root, COMPILED_DIR, name)
        try:
            blob = self._storage.read_bytes(url)
        except FileNotFoundError:
            return None
        except Exception as exc:  # storage trouble: parse the file instead
            self._warn("ipmeta_compiled_unreadable", url, exc, always=True)
            return None
        try:
            value = codec.decode(_unseal(blob))
        except ValueError as exc:
            self._warn("ipmeta_compiled_damaged", url, exc, always=True)
            return None
        self.compiled_hits += 1
        return value, blob

    def _cache_read(self, codec: _Codec, path: Path, report: bool = True) -> Any:
        """The decoded entry at ``path``, or None (absent, unreadable or damaged)."""
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no entry (or no folder) yet
            return None
        except OSError as exc:
            if report:
                self._warn("ipmeta_cache_unreadable", path, exc)
            return None
        try:
            value = codec.decode(_unseal(blob))
        except ValueError as exc:
            if report:
                self._warn("ipmeta_cache_damaged", path, exc, always=True)
            return None
        self.cache_hits += 1
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept by the pruning
        return value

    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        """An exclusive lock on the cache folder across processes (none if unavailable)."""
        assert self.cache_dir is not None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.cache_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _prune(self) -> None:
        """Keep the :data:`CACHE_KEEP` most recently used entries of the cache folder."""
        assert self.cache_dir is not None
        entries = []
        for p in self.cache_dir.glob(f"*{CACHE_SUFFIX}"):
            try:
                entries.append((p.stat().st_mtime, p))
            except OSError:
                continue
        entries.sort(reverse=True)
        for _, p in entries[CACHE_KEEP:]:
            with contextlib.suppress(OSError):
                p.unlink()

    def _warn(self, event: str, path: Path | str, exc: Exception, always: bool = False) -> None:
        if self._cache_warned and not always:
            return
        self._cache_warned = True
        from services.common.logsetup import get_logger

        get_logger("ipmeta").warning(event, path=str(path), error=f"{type(exc).__name__}: {exc}")

    def enricher_for(
        self, date: dt.date, org_source: OrgSource | None = None
    ) -> tuple[Enricher, Selection]:
        """An Enricher with the date's reference data, and the selection behind it."""
        sel = self.choose(date)
        rv = sel.routeviews
        rv6 = sel.routeviews6
        org, cls = sel.as2org, sel.as2class
        enricher = Enricher(
            pfx2as=self.load_pfx2as(rv) if rv else None,
            pfx2as_id=rv.file_id if rv else None,
            pfx2as6=self.load_pfx2as(rv6) if rv6 else None,
            pfx2as6_id=rv6.file_id if rv6 else None,
            as2org=self.load_as2org(org) if org else None,
            as2org_id=org.file_id if org else None,
            as2types=self.load_as2types(cls) if cls else None,
            as2types_id=cls.file_id if cls else None,
            org_source=org_source,
        )
        return enricher, sel

    @property
    def loads(self) -> int:
        """How many files were parsed so far (cache misses)."""
        return self._tables.loads + self._asinfo.loads


# ---------------------------------------------------------------------------------------
# Batch enrichment of distinct (date, ip) pairs


@dataclass
class EnrichmentStats:
    """Counts of one enrichment pass: lookups by status, and dates without routeviews."""

    by_status: Counter[str] = field(default_factory=Counter)
    dates_without_routeviews: dict[dt.date, str] = field(default_factory=dict)

    @property
    def lookups(self) -> int:
        return sum(self.by_status.values())

    @property
    def coverage(self) -> float:
        """Share of lookups that got a prefix match (1.0 when there were none)."""
        total = self.lookups
        return 1.0 if total == 0 else self.by_status["ok"] / total


def enrich_pairs(
    catalog: ReferenceCatalog,
    pairs: Iterable[tuple[dt.date, str]],
    org_source: OrgSource | None = None,
) -> tuple[dict[tuple[dt.date, str], IpMetadata], EnrichmentStats]:
    """Look each distinct (date, ip) up once, one date at a time.

    A date whose routeviews file is missing or stale does not fail: its IPs get empty
    metadata with status ``no_table`` and the date is listed in
    ``stats.dates_without_routeviews`` with the reason.
    """
    by_date: dict[dt.date, set[str]] = {}
    for date, ip in pairs:
        by_date.setdefault(date, set()).add(ip)
    out: dict[tuple[dt.date, str], IpMetadata] = {}
    stats = EnrichmentStats()
    for date in sorted(by_date):
        enricher, sel = catalog.enricher_for(date, org_source)
        if sel.routeviews is None:
            stats.dates_without_routeviews[date] = sel.routeviews_reason or "missing"
        for ip in by_date[date]:
            meta = enricher.lookup(ip)
            stats.by_status[meta.status] += 1
            out[(date, ip)] = meta
    return out, stats
