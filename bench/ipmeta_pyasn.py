"""The pyasn alternative to ``services.common.ipmeta.PrefixTable``, kept to measure it.

Issue 16 asked to do the longest-prefix match with pyasn (its radix tree in C) instead
of our pure-Python flat arrays. Measured (``bench/bench_ipmeta.py``, figures in
``services/common/ipmeta.py``'s docstring), pyasn behind our API was no faster per
lookup and held about four times the memory, so the pipeline keeps its own table; this
module keeps the pyasn version runnable so that the decision can be measured again
(``bench_ipmeta.py`` prints both) and so that ``tests/test_ipmeta_pyasn.py`` can check
our table against an independent implementation.

It has the API ``Enricher`` and ``ReferenceCatalog`` use (``match_v4``, ``match_v6``,
``lookup``, ``has_ipv4``, ``to_bytes``/``from_bytes`` …). pyasn (a ``dev`` dependency,
built from its source package: no wheel) loads its own ipasn text format,
``prefix/length<TAB>asn``; the CAIDA lines are read and validated by our parser's
``read_pfx2as``, deduplicated as our table does (first line wins, host bits ignored)
and converted to it. pyasn's loader reads the
ASN with ``atol`` and refuses ASN 0 and /0: it is given plain first ASNs only, and ASN 0
or /0 prefixes go in by ``Radix.add``. The raw origin field (MOAS ``_``, AS sets ``,``)
is kept beside the tree by netblock, as ``PrefixMatch.origin``.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from services.common.ipmeta import PrefixMatch, parse_ip, parse_origin, read_pfx2as

with warnings.catch_warnings():
    # pyasn 1.6.2's __init__ has a regex with an invalid escape: a DeprecationWarning when
    # Python compiles it (first import), about code we never call.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyasn.pyasn_radix import Radix  # pyasn's radix tree (C)


class PyasnPrefixTable:
    """Longest-prefix match over IPv4 and IPv6 prefixes, on pyasn's radix tree (C).

    While building, one set per prefix length of ``address >> (width - length)`` (the
    network bits only, so host bits set in an input prefix are ignored) finds repeated
    prefixes: a prefix given twice keeps its first line (CAIDA files have none), and the
    kept prefixes are collected as lines of pyasn's ipasn format (``prefix/length<TAB>
    asn``). ``freeze`` loads them into the tree with pyasn's C loader and drops the
    building state; a prefix added after that goes into the tree one by one. pyasn's
    loader refuses ASN 0 and /0, so those (never in CAIDA's files) go in one by one too.
    """

    __slots__ = (
        "_extra",
        "_frozen",
        "_lengths",
        "_lines",
        "_radix",
        "_raw",
        "_search",
        "_v4",
        "_v6",
        "bad_lines",
        "count",
    )

    def __init__(self) -> None:
        # While building: length → network bits of the prefixes seen (first line wins).
        self._v4: dict[int, set[int]] = {}
        self._v6: dict[int, set[int]] = {}
        self._lines: list[str] = []  # ipasn lines for pyasn's loader
        self._extra: list[tuple[str, int, int]] = []  # (address, length, asn) it refuses
        self._frozen = False
        self._radix = Radix()
        self._search = self._radix.search_best
        # Raw origin strings by netblock, only where they differ from str(asn) (MOAS and
        # AS sets: <1 % of prefixes).
        self._raw: dict[str, str] = {}
        self._lengths: dict[int, set[int]] = {4: set(), 6: set()}
        self.count = 0
        self.bad_lines = 0

    # -- building ------------------------------------------------------------------------

    def add(self, prefix: str, length: int, origin: str) -> None:
        """Add one prefix; ValueError on a malformed prefix, length or origin."""
        asn, _ = parse_origin(origin)
        if ":" in prefix:
            family, af, width, by_len = 6, socket.AF_INET6, 128, self._v6
        else:
            family, af, width, by_len = 4, socket.AF_INET, 32, self._v4
        addr = int.from_bytes(socket.inet_pton(af, prefix), "big")
        if not 0 <= length <= width:
            raise ValueError(f"prefix length out of range: {length}")
        shift = width - length
        net = socket.inet_ntop(af, (addr >> shift << shift).to_bytes(width // 8, "big"))
        if self._frozen:
            if self._radix.search_exact(net, length) is not None:
                return
            self._radix.add(net, length).asn = asn
        else:
            seen = by_len.get(length)
            if seen is None:
                seen = by_len[length] = set()
            key = addr >> shift
            if key in seen:
                return
            seen.add(key)
            self._stage(net, length, asn)
        if origin != str(asn):
            self._raw[f"{net}/{length}"] = origin
        self._lengths[family].add(length)
        self.count += 1

    def _stage(self, net: str, length: int, asn: int) -> None:
        if asn and length:
            self._lines.append(f"{net}/{length}\t{asn}\n")
        else:
            self._extra.append((net, length, asn))

    def freeze(self) -> PyasnPrefixTable:
        """Load the collected prefixes into the tree. Called by ``parse_pfx2as``;
        idempotent; later ``add`` calls go straight into the tree."""
        if not self._frozen:
            self._load("".join(self._lines), self._extra)
            self._lines, self._extra = [], []
            self._v4, self._v6 = {}, {}
            self._frozen = True
        return self

    def _load(self, text: str, extra: Iterable[tuple[str, int, int]]) -> int:
        """Load ipasn text (into the empty tree) and the prefixes pyasn's loader refuses;
        the number of text records loaded."""
        records = int(self._radix.load_ipasndb("", text)) if text else 0
        for net, length, asn in extra:
            self._radix.add(net, length).asn = asn
        return records

    # -- queries -------------------------------------------------------------------------

    @property
    def has_ipv4(self) -> bool:
        return bool(self._lengths[4])

    @property
    def has_ipv6(self) -> bool:
        return bool(self._lengths[6])

    def lengths(self, family: int = 4) -> tuple[int, ...]:
        """The prefix lengths present, longest first."""
        return tuple(sorted(self._lengths[family], reverse=True))

    def _match(self, address: str) -> PrefixMatch | None:
        node = self._search(address)
        if node is None:
            return None
        net: str = node.prefix
        asn: int = node.asn
        raw = self._raw.get(net) if self._raw else None
        return PrefixMatch(net, asn, raw or str(asn))

    def match_v4(self, addr: int) -> PrefixMatch | None:
        """Longest match for an IPv4 address given as a 32-bit int."""
        return self._match(socket.inet_ntoa(addr.to_bytes(4, "big")))

    def match_v6(self, addr: int) -> PrefixMatch | None:
        """Longest match for an IPv6 address given as a 128-bit int."""
        return self._match(socket.inet_ntop(socket.AF_INET6, addr.to_bytes(16, "big")))

    def lookup(self, ip: str) -> PrefixMatch | None:
        """Longest match for an address string; None when unmatched or not an address."""
        parsed = parse_ip(ip)
        if parsed is None:
            return None
        family, addr = parsed
        return self.match_v4(addr) if family == 4 else self.match_v6(addr)

    def entries(self) -> Iterator[PrefixMatch]:
        """Every prefix with its ASN and raw origin, in the tree's order."""
        self.freeze()
        raw = self._raw
        for node in self._radix:
            net, asn = node.prefix, node.asn
            yield PrefixMatch(net, asn, raw.get(net) or str(asn))

    def __len__(self) -> int:
        return self.count

    def __reduce__(self) -> tuple[Callable[[bytes], PyasnPrefixTable], tuple[bytes]]:
        return PyasnPrefixTable.from_bytes, (self.to_bytes(),)

    # -- compact form (the catalog's cache) ----------------------------------------------

    def to_bytes(self) -> bytes:
        """A JSON header, then the prefixes as pyasn's ipasn text (what its C loader
        reads back in :meth:`from_bytes`)."""
        lines: list[str] = []
        extra: list[list[Any]] = []
        for node in self.freeze()._radix:
            net, asn = node.prefix, node.asn
            address, _, length = net.partition("/")
            if asn and length != "0":
                lines.append(f"{net}\t{asn}\n")
            else:
                extra.append([address, int(length), asn])
        text = "".join(lines).encode("ascii")
        header = {
            "count": self.count,
            "bad_lines": self.bad_lines,
            "records": len(lines),
            "size": len(text),
            "extra": extra,
            "lengths4": sorted(self._lengths[4]),
            "lengths6": sorted(self._lengths[6]),
            "raw": self._raw,
        }
        head = orjson.dumps(header)
        return len(head).to_bytes(8, "little") + head + text

    @classmethod
    def from_bytes(cls, data: bytes) -> PyasnPrefixTable:
        """A frozen table from :meth:`to_bytes`; ValueError when the data is not one."""
        try:
            size = int.from_bytes(data[:8], "little")
            header = orjson.loads(data[8 : 8 + size])
            body = data[8 + size :]
            if len(body) != int(header["size"]):
                raise ValueError("truncated or trailing bytes")
            table = cls()
            table._frozen = True
            extra = [(str(a), int(n), int(asn)) for a, n, asn in header["extra"]]
            records = table._load(body.decode("ascii"), extra)
            if records != int(header["records"]):
                raise ValueError("record count mismatch")
            table._raw = {str(k): str(v) for k, v in header["raw"].items()}
            table._lengths = {4: set(header["lengths4"]), 6: set(header["lengths6"])}
            table.count = int(header["count"])
            table.bad_lines = int(header["bad_lines"])
        except (KeyError, TypeError, AttributeError, RuntimeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a compact prefix table: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a compact prefix table: {exc}") from exc
        return table


def parse_pfx2as_pyasn(lines: Iterable[str | bytes]) -> PyasnPrefixTable:
    """Build a table from pfx2as lines (IPv4 and/or IPv6; blank and ``#`` lines skipped).

    The lines are read by our own parser's :func:`services.common.ipmeta.read_pfx2as`
    (malformed lines counted in ``table.bad_lines``); the common plain IPv4 line is
    staged for pyasn's loader here, every other one goes through
    :meth:`PyasnPrefixTable.add`, so both give the same table.
    """
    table = PyasnPrefixTable()
    v4 = table._v4
    out = table._lines
    stage = table._stage
    raw = table._raw
    lengths4 = table._lengths[4]
    ntoa = socket.inet_ntoa
    count = 0

    def add_plain4(prefix: str, addr: int, length: int, asn: int, origin: str) -> None:
        nonlocal count
        shift = 32 - length
        key = addr >> shift
        seen = v4.get(length)
        if seen is None:
            seen = v4[length] = set()
            lengths4.add(length)
        if key in seen:
            return
        seen.add(key)
        if key << shift != addr or (len(origin) > 1 and origin[0] == "0"):
            # host bits set, or "015169" (kept as the raw field): the general form
            net = ntoa((key << shift).to_bytes(4, "big"))
            stage(net, length, asn)
            if origin != str(asn):
                raw[f"{net}/{length}"] = origin
        elif asn and length:
            out.append(f"{prefix}/{length}\t{origin}\n")
        else:
            stage(prefix, length, asn)
        count += 1

    table.bad_lines += read_pfx2as(lines, add_plain4, table.add)
    table.count += count
    return table.freeze()
