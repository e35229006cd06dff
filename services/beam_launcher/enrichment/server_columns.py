"""Server IP metadata for a whole batch at once: numpy over the prefix table, Arrow out.

:class:`ServerTables` holds one :class:`~services.common.ipmeta.Enricher`'s IPv4 prefix
table and AS tables as arrays; :meth:`ServerTables.lookup` takes a batch's distinct
server IPs and gives the server metadata columns for them as Arrow arrays, the same
values :meth:`Enricher.lookup_fields` gives one by one. Routed and unrouted IPv4
addresses (nearly every server) cost a few numpy operations per batch: a binary search
of all addresses, a walk up the enclosing prefixes, a search of the AS tables, the
netblock text built by Arrow. Every other value (special ranges, IPv6, not an address)
goes through ``lookup_fields``.

Why: looking servers up one by one, with a memo per server, cost ~25 us per distinct
server inside a worker (the memo's dicts and tuples are scattered over a large heap: a
cache miss per access), 4.5 CPU-s of the 1M-line bench scan's 166,000 distinct
servers; whole batches cost ~1 us per distinct server (see the launcher README).

Example:
    >>> from services.common.ipmeta import AsOrg, Enricher, parse_pfx2as
    >>> e = Enricher(pfx2as=parse_pfx2as(["8.8.8.0\\t24\\t15169"]), pfx2as_id="rv",
    ...              as2org={15169: AsOrg("GOOGLE", "Google LLC", "US")}, as2org_id="org")
    >>> out = ServerTables.of(e).lookup(["8.8.8.8", "9.9.9.9", "10.0.0.1"], e.lookup_fields)
    >>> out.arrays["server_netblock"].to_pylist(), out.statuses.tolist()
    (['8.8.8.0/24', None, None], ['ok', 'not_routed', 'special'])
    >>> out.arrays["ip_metadata_sources"].to_pylist()
    [['rv', 'org'], ['rv'], []]
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.beam_launcher import native
from services.beam_launcher.warehouse.rows import HYPERQUACK_SCAN
from services.common.ipmeta import (
    V4_SPECIAL_FIRST_OCTETS,
    AsOrg,
    AsOrgTable,
    Enricher,
    IpMetadata,
    is_special_v4,
)

#: The server metadata columns, in the order of ``IpMetadata.as_columns("server")``.
SERVER_COLUMNS: tuple[str, ...] = tuple(IpMetadata().as_columns("server"))
#: Arrow types of the columns enrichment fills.
ARROW_TYPES: dict[str, pa.DataType] = {
    name: HYPERQUACK_SCAN.arrow_schema().field(name).type
    for name in (*SERVER_COLUMNS, "ip_metadata_sources")
}
_SPECIAL_FIRST = np.zeros(256, dtype=bool)  # first octets that may be special
_SPECIAL_FIRST[sorted(V4_SPECIAL_FIRST_OCTETS)] = True
_NOT_V4 = -1  # not an IPv4 address string: looked up one by one


@dataclass
class Statuses:
    """``IpMetadata.status`` per server: ``names[codes[k]]`` is server ``k``'s."""

    names: tuple[str, ...]
    codes: np.ndarray

    def tolist(self) -> list[str]:
        return [self.names[c] for c in self.codes.tolist()]

    def counts(self, weights: np.ndarray) -> dict[str, int]:
        """The sum of ``weights`` (one per server) per status, statuses of no server
        left out."""
        sums = np.bincount(self.codes, weights=weights, minlength=len(self.names))
        present = np.bincount(self.codes, minlength=len(self.names))
        return {n: int(w) for n, w, p in zip(self.names, sums.tolist(), present, strict=True) if p}


@dataclass
class Distinct:
    """The metadata of a batch's distinct servers, in the order given."""

    arrays: dict[str, pa.Array]  # SERVER_COLUMNS and ip_metadata_sources
    statuses: Statuses  # IpMetadata.status per server
    has_asn: np.ndarray  # bool per server
    has_country: np.ndarray


class ServerTables:
    """An Enricher's IPv4 prefixes and AS tables as arrays (see the module docstring)."""

    def __init__(self, enricher: Enricher) -> None:
        table, table_id = enricher.v4_table()
        starts, lengths, asns, parents = table.arrays_v4()
        self.enricher = enricher
        self.starts = np.frombuffer(starts, dtype=np.uint32).astype(np.int64)
        self.shifts = 32 - np.frombuffer(lengths, dtype=np.uint8).astype(np.int64)
        # Per /16: the index of its first prefix start (a binary search's bounds).
        self.first16 = np.searchsorted(self.starts, np.arange(65537, dtype=np.int64) << 16)
        self.lengths = np.frombuffer(lengths, dtype=np.uint8)
        self.asns = np.frombuffer(asns, dtype=np.uint32)
        self.parents = np.frombuffer(parents, dtype=np.int32)
        self.as_keys, self.as_values = _as_columns(enricher.as2org, enricher.as2types)
        self.as_country_known = np.asarray(
            self.as_values["server_country"].is_valid().to_numpy(zero_copy_only=False), dtype=bool
        )
        self.routed_sources = enricher.sources_of(table_id)
        self.unrouted_sources = (table_id,)
        # ip_metadata_sources of a routed (0) and an unrouted (1) server.
        self.source_pair = pa.array(
            [list(self.routed_sources), list(self.unrouted_sources)],
            ARROW_TYPES["ip_metadata_sources"],
        )
        self.netblocks = _netblocks(self.starts, self.lengths)
        self._routed_sources_rows = self.source_pair.slice(0, 0)

    @classmethod
    def of(cls, enricher: Enricher | None) -> ServerTables | None:
        """The tables of ``enricher``, or None when it has no IPv4 prefix table or an
        organisation source (then its lookups go one by one)."""
        if enricher is None or enricher.org_source is not None or not enricher.has_v4_table:
            return None
        return cls(enricher)

    def lookup(
        self,
        ips: list[Any],
        one_by_one: Callable[[Any], tuple[Any, ...]],
        rows: np.ndarray | None = None,
        addrs: np.ndarray | None = None,
    ) -> Distinct:
        """The metadata of each of ``ips`` (distinct values of a batch's server column);
        ``one_by_one`` gives the fields (as ``Enricher.lookup_fields``) of any value that
        is not an IPv4 address outside the special ranges. With ``rows`` (an index into
        ``ips`` per row), the arrays are the rows' columns (``statuses`` and the flags
        stay per server): the same as the servers' arrays taken by ``rows``, built with
        one ``take`` per column instead of two. ``addrs``: the ``ips`` as
        :func:`_addresses` gives them, when the caller has them already."""
        if addrs is None:
            addrs = _addresses(ips)
        fast = addrs >= 0
        maybe_special = fast & _SPECIAL_FIRST[(addrs >> 24) & 255]
        for k in np.flatnonzero(maybe_special):
            fast[k] = not is_special_v4(int(addrs[k]))
        at = np.flatnonzero(fast)
        prefix = self._longest_prefix(addrs[at])
        routed = prefix >= 0
        slow = np.flatnonzero(~fast)
        slow_fields = [one_by_one(ips[k]) for k in slow]
        asn = self.asns[np.maximum(prefix, 0)].astype(np.int64)
        as_pos = self._as_positions(asn, routed)
        has_country = np.zeros(len(ips), dtype=bool)
        if len(self.as_keys):
            has_country[at] = self.as_country_known[np.maximum(as_pos, 0)] & (as_pos >= 0)
        has_asn = np.zeros(len(ips), dtype=bool)
        has_asn[at] = routed
        names = {"ok": 0, "not_routed": 1}
        codes = np.zeros(len(ips), dtype=np.int64)
        codes[at[~routed]] = 1
        for k, f in zip(slow, slow_fields, strict=True):
            codes[k] = names.setdefault(f[8], len(names))
            has_asn[k] = f[1] is not None
            has_country[k] = f[5] is not None
        statuses = Statuses(tuple(names), codes)

        if not len(slow) and rows is not None:  # the usual batch: straight to the rows
            arrays = self._fast_arrays(prefix, routed, asn, as_pos, rows)
            return Distinct(arrays, statuses, has_asn, has_country)
        arrays = self._fast_arrays(prefix, routed, asn, as_pos, None)
        # Sources: one list per kind, taken per server.
        kind_of = {self.routed_sources: 0, self.unrouted_sources: 1}
        codes = np.where(routed, 0, 1).astype(np.int32)
        slow_codes = [kind_of.setdefault(f[7], len(kind_of)) for f in slow_fields]
        if len(slow):  # merge the one-by-one results in their places
            order = np.empty(len(ips), dtype=np.int64)
            order[at] = np.arange(len(at))
            order[slow] = len(at) + np.arange(len(slow))
            take = pa.array(order)
            for j, name in enumerate(SERVER_COLUMNS):
                rest = pa.array([f[j] for f in slow_fields], ARROW_TYPES[name])
                arrays[name] = pa.concat_arrays([arrays[name], rest]).take(take)
            codes = np.concatenate([codes, np.array(slow_codes, dtype=np.int32)])[order]
        sources = pa.array([list(k) for k in kind_of], ARROW_TYPES["ip_metadata_sources"])
        arrays["ip_metadata_sources"] = sources.take(pa.array(codes))
        if rows is not None:
            by_row = pa.array(rows)
            arrays = {name: values.take(by_row) for name, values in arrays.items()}
        return Distinct(arrays, statuses, has_asn, has_country)

    def _longest_prefix(self, addrs: np.ndarray) -> np.ndarray:
        """Index of the longest prefix holding each address, or -1 (as ``index_v4``).

        The last prefix starting at or before the address, by a binary search inside
        the address's /16 (the bucket table narrows ~20 probes scattered over the whole
        array to a few in one small region), then up the enclosing prefixes. In C when
        the native module is built (``_hqfast.longest_prefix_v4``, the same steps per
        address: 1,550 addresses in ~20 us against ~110 us for these array passes)."""
        module = _native_module()
        if module is not None:
            found = module.longest_prefix_v4(
                np.ascontiguousarray(addrs, dtype=np.int64),
                self.starts,
                self.first16,
                self.shifts,
                self.parents,
            )
            return np.frombuffer(found, dtype=np.int64)
        return self._longest_prefix_numpy(addrs)

    def _longest_prefix_numpy(self, addrs: np.ndarray) -> np.ndarray:
        """:meth:`_longest_prefix` without the native module."""
        top = addrs >> 16
        lo = self.first16[top]
        hi = self.first16[top + 1]
        while True:
            open_ = lo < hi
            if not open_.any():
                break
            mid = (lo + hi) >> 1
            right = open_ & (self.starts[np.minimum(mid, len(self.starts) - 1)] <= addrs)
            left = open_ & ~right
            lo = np.where(right, mid + 1, lo)
            hi = np.where(left, mid, hi)
        at = lo - 1
        while True:
            j = np.maximum(at, 0)
            shift = self.shifts[j]
            miss = (at >= 0) & ((addrs >> shift) != (self.starts[j] >> shift))
            if not miss.any():
                return at
            at = np.where(miss, self.parents[j], at)

    def _as_positions(self, asn: np.ndarray, routed: np.ndarray) -> np.ndarray:
        """Each routed ASN's position in the AS columns, or -1 (unknown, not routed)."""
        pos = np.searchsorted(self.as_keys, asn)
        found = routed & (pos < len(self.as_keys))
        found[found] = self.as_keys[pos[found]] == asn[found]
        return np.where(found, pos, -1)

    def _fast_arrays(
        self,
        prefix: np.ndarray,
        routed: np.ndarray,
        asn: np.ndarray,
        as_pos: np.ndarray,
        rows: np.ndarray | None,
    ) -> dict[str, pa.Array]:
        """The columns of routed (prefix >= 0) and unrouted IPv4 servers: one value per
        server, or with ``rows`` one per row (then with ``ip_metadata_sources``)."""
        if rows is not None:
            prefix, routed, asn, as_pos = prefix[rows], routed[rows], asn[rows], as_pos[rows]
        n = len(routed)
        unrouted = ~routed
        arrays: dict[str, pa.Array] = {
            "server_netblock": self.netblocks.take(
                pa.array(np.maximum(prefix, 0), pa.int64(), mask=unrouted)
            ),
            "server_asn": pa.array(asn, pa.int64(), mask=unrouted),
        }
        take = pa.array(np.maximum(as_pos, 0), pa.int64(), mask=as_pos < 0)
        for name, values in self.as_values.items():
            arrays[name] = values.take(take) if len(values) else pa.nulls(n, pa.string())
        arrays["server_organization"] = pa.nulls(n, pa.string())
        out = {name: arrays[name] for name in SERVER_COLUMNS}
        if rows is not None:
            out["ip_metadata_sources"] = (
                self._routed_rows(n)
                if not unrouted.any()
                else self.source_pair.take(pa.array(unrouted.view(np.int8)))
            )
        return out

    def _routed_rows(self, n: int) -> pa.Array:
        """``n`` rows of the routed sources: a slice of one array kept for all batches
        (a list ``take`` per batch of 1,500 rows cost ~60 us)."""
        if len(self._routed_sources_rows) < n:
            size = max(n, 2 * len(self._routed_sources_rows))
            self._routed_sources_rows = self.source_pair.take(pa.array(np.zeros(size, np.int8)))
        return self._routed_sources_rows.slice(0, n)


def _netblocks(starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Every prefix's text (``"8.8.8.0/24"``), built once per table from the texts of
    all 65,536 ``"a.b"`` halves: for 1M prefixes 0.06 CPU-s and 18.5 MB (0.14 with a cast
    per octet), against ~200 us per batch of 500 lines when each batch built the texts
    of its servers.

    >>> _netblocks(np.array([0x08080800, 0x0A000000]), np.array([24, 8])).to_pylist()
    ['8.8.8.0/24', '10.0.0.0/8']
    """
    halves, numbers = _texts()
    high = halves.take(pa.array((starts >> 16).astype(np.int32)))
    low = halves.take(pa.array((starts & 0xFFFF).astype(np.int32)))
    length = numbers.take(pa.array(np.asarray(lengths, dtype=np.int32)))
    address = pc.binary_join_element_wise(high, low, ".")
    return pc.binary_join_element_wise(address, length, "/")


@functools.cache
def _texts() -> tuple[pa.Array, pa.Array]:
    """``"a.b"`` for a, b in 0..255 at index ``a * 256 + b``; ``"n"`` at index n."""
    numbers = [str(n) for n in range(256)]
    return pa.array([f"{a}.{b}" for a in numbers for b in numbers]), pa.array(numbers)


def _as_columns(
    orgs: Mapping[int, AsOrg], classes: Mapping[int, str]
) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Every ASN either AS table knows (sorted), and its attributes as Arrow columns.

    An :class:`AsOrgTable` (what the catalog loads) is read as the arrays it is
    (0.02 instead of 0.5 CPU-s for 70,000 ASes)."""
    class_keys = np.array(sorted(classes), dtype=np.int64)
    class_values = pa.array([classes[asn] for asn in class_keys.tolist()], pa.string())
    if isinstance(orgs, AsOrgTable):
        asns, fields, strings = orgs.arrays()
        org_keys = np.frombuffer(asns, dtype=np.uint32).astype(np.int64)
        index = np.frombuffer(fields, dtype=np.int32).reshape(-1, 3)
        text = pa.array(strings, pa.string())
        org_columns = [
            text.take(pa.array(index[:, k], pa.int32(), mask=index[:, k] < 0)) for k in range(3)
        ]
    else:
        org_keys = np.array(sorted(orgs), dtype=np.int64)
        infos = [orgs[asn] for asn in org_keys.tolist()]
        org_columns = [pa.array([org[k] for org in infos], pa.string()) for k in range(3)]
    keys = np.union1d(org_keys, class_keys)
    columns: dict[str, pa.Array] = {}
    for name, own_keys, values in (
        ("server_as_name", org_keys, org_columns[0]),
        ("server_as_full_name", org_keys, org_columns[1]),
        ("server_country", org_keys, org_columns[2]),
        ("server_as_class", class_keys, class_values),
    ):
        pos = np.searchsorted(own_keys, keys)
        ok = pos < len(own_keys)
        ok[ok] = own_keys[pos[ok]] == keys[ok]
        take = pa.array(np.where(ok, pos, 0), pa.int64(), mask=~ok)
        columns[name] = values.take(take) if len(values) else pa.nulls(len(keys), pa.string())
    return keys, columns


def _addresses(ips: list[Any]) -> np.ndarray:
    """Each value's IPv4 address as an int, or -1 (:func:`_address`). In C when the
    native module is built (``_hqfast.ipv4_values``: 1,550 addresses in ~45 us), else a
    loop in Python (500 in 158 us; one Arrow column, a regular expression, a split and a
    cast, took 302 us)."""
    got = native_addresses(ips)
    if got is not None:
        return got
    return np.array([_address(ip) for ip in ips], dtype=np.int64)


def _native_module() -> Any:
    """The native helpers (``_hqfast``), or None when not built or turned off
    (``CP_NATIVE_PARSER=0``)."""
    return native.load("_hqfast") if native.enabled() else None


def native_addresses(ips: list[Any]) -> np.ndarray | None:
    """:func:`_addresses` by the C helper, or None when it is not built or turned off
    (``CP_NATIVE_PARSER=0``). Its -2 (a non-ASCII string) is decided by :func:`_address`.

    >>> got = native_addresses(["8.8.8.8", " 1.2.3.4 ", "::1", None])
    >>> got is None or got.tolist() == [134744072, 16909060, -1, -1]
    True
    """
    module = _native_module()
    if module is None:
        return None
    out = np.frombuffer(module.ipv4_values(ips), dtype=np.int64)
    undecided = np.flatnonzero(out == -2)
    if len(undecided):
        out = out.copy()
        for k in undecided.tolist():
            out[k] = _address(ips[k])
    return out


def _address(ip: Any) -> int:
    """The IPv4 address of ``ip`` as an int, or -1 (anything else: looked up one by one,
    including strings ``inet_pton`` refuses, which ``lookup_fields`` calls invalid)."""
    if type(ip) is not str or ":" in ip:
        return _NOT_V4
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip.strip()), "big")
    except (OSError, ValueError):
        return _NOT_V4


__all__ = [
    "ARROW_TYPES",
    "SERVER_COLUMNS",
    "Distinct",
    "ServerTables",
    "Statuses",
    "native_addresses",
]
