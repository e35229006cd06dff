"""Dated IP metadata for rows: server, resolver and answer IPs → AS, netblock, country.

Each worker keeps one :class:`RowEnricher`; every distinct (date, ip) is looked up once
per worker (memoised) with the reference files of that date chosen by
:class:`services.common.ipmeta.ReferenceCatalog` (routeviews at or before the date within
the staleness limit; nearest AS-organisation / AS-class snapshots). Missing or stale
reference data never fails a run: the row keeps empty metadata and the stats say why.

Example:
    >>> e = RowEnricher(None)
    >>> row = {"date": "2021-05-30", "server_ip": "1.1.1.1"}
    >>> e.enrich_hyperquack(row, {}); row["ip_metadata_sources"]
    []
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from typing import Any

from services.common.ipmeta import Enricher, IpMetadata, ReferenceCatalog
from services.common.mmdb import MmdbOrgSource

_EMPTY = IpMetadata(status="unconfigured")
MEMO_SIZE = 200_000


class RowEnricher:
    """Adds IP metadata columns to rows; a no-op (counted) when no location is configured."""

    def __init__(
        self, location: str | None, max_staleness_days: int = 30, org_mmdb: str | None = None
    ) -> None:
        self.location = location
        self.org_source = MmdbOrgSource(org_mmdb) if org_mmdb and location else None
        self.catalog = (
            ReferenceCatalog(location, max_staleness_days=max_staleness_days) if location else None
        )
        self._enrichers: dict[str, tuple[Enricher, Any]] = {}
        self._memo: OrderedDict[tuple[str, str], IpMetadata] = OrderedDict()
        self._server_columns: dict[
            tuple[Any, Any], tuple[dict[str, Any], tuple[str, ...], str]
        ] = {}
        self._lock = threading.Lock()
        self.stale_dates: dict[str, str] = {}

    def _enricher(self, date: str) -> Enricher | None:
        assert self.catalog is not None
        got = self._enrichers.get(date)
        if got is None:
            enricher, selection = self.catalog.enricher_for(
                dt.date.fromisoformat(date), org_source=self.org_source
            )
            if selection.routeviews is None:
                self.stale_dates[date] = selection.routeviews_reason or "missing"
            if len(self._enrichers) > 8:
                self._enrichers.pop(next(iter(self._enrichers)))
            got = self._enrichers[date] = (enricher, selection)
        return got[0]

    def lookup(self, date: str | None, ip: str | None) -> IpMetadata:
        if self.catalog is None or not date or not ip:
            return _EMPTY
        key = (date, ip)
        with self._lock:
            md = self._memo.get(key)
            if md is None:
                enricher = self._enricher(date)
                md = enricher.lookup(ip) if enricher is not None else _EMPTY
                self._memo[key] = md
                if len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
            return md

    @staticmethod
    def _count(stats: dict[str, int], md: IpMetadata, what: str) -> None:
        name = f"ip_metadata.{what}.{md.status}"
        stats[name] = stats.get(name, 0) + 1

    def enrich_hyperquack(self, row: dict[str, Any], stats: dict[str, int]) -> None:
        date, ip = row.get("date"), row.get("server_ip")
        # Rows of one server and day share everything added here: the columns, sources and
        # counter name are built once per (date, ip), not once per row.
        hit = self._server_columns.get((date, ip))
        if hit is None:
            md = self.lookup(date, ip)
            hit = (md.as_columns("server"), md.sources, f"ip_metadata.server.{md.status}")
            with self._lock:
                if len(self._server_columns) >= MEMO_SIZE:
                    self._server_columns.clear()
                self._server_columns[(date, ip)] = hit
        columns, sources, counter = hit
        stats[counter] = stats.get(counter, 0) + 1
        row.update(columns)
        row["ip_metadata_sources"] = list(sources)

    def enrich_hyperquack_columns(
        self, columns: dict[str, list[Any]], n_rows: int, stats: dict[str, int]
    ) -> None:
        """:meth:`enrich_hyperquack` for a batch held as columns (``date``, ``server_ip``
        → the server metadata columns and ``ip_metadata_sources``, replaced in place).

        Also counts ``rows_with_asn`` and ``rows_with_country`` into ``stats``.
        """
        filled: dict[str, list[Any]] = {}
        dates, ips = columns["date"], columns["server_ip"]
        for i in range(n_rows):
            row: dict[str, Any] = {"date": dates[i], "server_ip": ips[i]}
            self.enrich_hyperquack(row, stats)
            for name, value in row.items():
                if name not in ("date", "server_ip"):
                    filled.setdefault(name, [None] * n_rows)[i] = value
            if row.get("server_asn") is not None:
                stats["rows_with_asn"] = stats.get("rows_with_asn", 0) + 1
            if row.get("server_country") is not None:
                stats["rows_with_country"] = stats.get("rows_with_country", 0) + 1
        columns.update(filled)

    def enrich_satellite(self, row: dict[str, Any], stats: dict[str, int]) -> None:
        """Resolver and answers; non-empty CAIDA values override tag values (as the seed)."""
        date = row.get("date")
        md = self.lookup(date, row.get("resolver_ip"))
        self._count(stats, md, "resolver")
        for k, v in md.as_columns("resolver").items():
            if v is not None:
                row[k] = v
        sources = set(md.sources)
        for answer in row.get("answers") or ():
            amd = self.lookup(date, answer.get("ip"))
            self._count(stats, amd, "answer")
            if amd.asn is not None:
                answer["asn"] = amd.asn
            if amd.as_name is not None:
                answer["as_name"] = amd.as_name
            if amd.organization is not None:
                answer["ip_organization"] = amd.organization
            sources.update(amd.sources)
        row["ip_metadata_sources"] = sorted(sources)
