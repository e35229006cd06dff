"""Dated IP metadata for rows: server, resolver and answer IPs → AS, netblock, country.

Each worker keeps one :class:`RowEnricher`; every distinct (date, ip) is looked up once
per worker (memoised) with the reference files of that date chosen by
:class:`services.common.ipmeta.ReferenceCatalog` (routeviews at or before the date within
the staleness limit; nearest AS-organisation / AS-class snapshots). Parsed tables are
cached in :func:`services.common.ipmeta.default_cache_dir` (``$CP_IPMETA_CACHE``), so
each worker process after the first on a machine loads them in a fraction of a second.
Missing or stale reference data never fails a run: the row keeps empty metadata and the
stats say why.

Example:
    >>> e = RowEnricher(None)
    >>> row = {"date": "2021-05-30", "server_ip": "1.1.1.1"}
    >>> e.enrich_hyperquack(row, {}); row["ip_metadata_sources"]
    []
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from services.beam_launcher.enrichment.pfx2as_arrays import parse_pfx2as_text
from services.beam_launcher.enrichment.server_columns import (
    ARROW_TYPES,
    SERVER_COLUMNS,
    ServerTables,
    native_addresses,
)
from services.common.ipmeta import (
    Enricher,
    IpMetadata,
    ReferenceCatalog,
    default_cache_dir,
    metadata_fields,
)
from services.common.mmdb import MmdbOrgSource

_EMPTY = IpMetadata(status="unconfigured")
_EMPTY_FIELDS = metadata_fields(_EMPTY)
#: status → its counter name (``ip_metadata.server.<status>``), one string each.
_COUNTERS: dict[str, str] = {}
MEMO_SIZE = 200_000


class _ServerHit(NamedTuple):
    """What one (date, server_ip) adds to its rows: the SERVER_COLUMNS values first.

    One flat tuple per server (it lives in the memo): every object that survives a
    batch counts towards the garbage collector's next full pass.
    """

    netblock: str | None
    asn: int | None
    as_name: str | None
    as_full_name: str | None
    as_class: str | None
    country: str | None
    organization: str | None
    sources: tuple[str, ...]
    counter: str  # ip_metadata.server.<status>
    has_asn: bool
    has_country: bool

    @property
    def values(self) -> tuple[Any, ...]:
        return self[: len(SERVER_COLUMNS)]


class RowEnricher:
    """Adds IP metadata columns to rows; a no-op (counted) when no location is configured."""

    def __init__(
        self, location: str | None, max_staleness_days: int = 30, org_mmdb: str | None = None
    ) -> None:
        self.location = location
        self.org_source = MmdbOrgSource(org_mmdb) if org_mmdb and location else None
        self.catalog = (
            ReferenceCatalog(
                location,
                max_staleness_days=max_staleness_days,
                cache_dir=default_cache_dir(),
                read_pfx2as_text=parse_pfx2as_text,
            )
            if location
            else None
        )
        self._enrichers: dict[str, tuple[Enricher, Any]] = {}
        self._memo: OrderedDict[tuple[str, str], IpMetadata] = OrderedDict()
        # The reference files of a date (Selection.key): dates that share them share
        # their lookups (a scan spans days; routeviews is chosen per date).
        self._date_files: dict[str, tuple[str | None, ...]] = {}
        # reference files → server IP → hit (no key tuple per server), and the distinct
        # sources.
        self._server_columns: dict[Any, dict[Any, _ServerHit]] = {}
        self._server_count = 0
        self._sources: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self.stale_dates: dict[str, str] = {}
        # Whole-batch lookups (arrow=True): reference files → their tables (or None).
        self._tables: dict[Any, ServerTables | None] = {}

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

    def _files_of(self, date: Any) -> Any:
        """What the server hits of ``date`` are memoised under: its reference files (so
        the days of one scan that select the same files look each server up once), or
        ``date`` itself when nothing is looked up (no catalog, no date)."""
        if self.catalog is None or not date:
            return date
        files = self._date_files.get(date)
        if files is None:
            with self._lock:
                self._enricher(date)
                files = self._enrichers[date][1].key  # just chosen: still there
                if len(self._date_files) >= 4096:
                    self._date_files.clear()
                self._date_files[date] = files
        return files

    def prepare(self, dates: Iterable[str]) -> None:
        """Load the reference tables of ``dates`` and their whole-batch lookup tables now
        rather than at the first row: for a process that forks its workers afterwards,
        so they share what was loaded once instead of each loading it."""
        if self.catalog is None:
            return
        for day in sorted(set(dates)):
            self._server_tables(day)

    def lookup(self, date: str | None, ip: str | None, memo: bool = True) -> IpMetadata:
        """The metadata of ``ip`` on ``date``; memoised unless ``memo`` is False (the
        Hyperquack path keeps its own smaller memo of what rows need)."""
        if self.catalog is None or not date or not ip:
            return _EMPTY
        key = (date, ip)
        with self._lock:
            md = self._memo.get(key) if memo else None
            if md is None:
                enricher = self._enricher(date)
                md = enricher.lookup(ip) if enricher is not None else _EMPTY
                if memo:
                    self._memo[key] = md
                    if len(self._memo) > MEMO_SIZE:
                        self._memo.popitem(last=False)
            return md

    @staticmethod
    def _count(stats: dict[str, int], md: IpMetadata, what: str) -> None:
        name = f"ip_metadata.{what}.{md.status}"
        stats[name] = stats.get(name, 0) + 1

    def _server_hit(self, date: Any, ip: Any) -> _ServerHit:
        """The server columns of one (date, ip), built once per reference files and ip."""
        files = self._files_of(date)
        by_ip = self._server_columns.get(files)
        hit = by_ip.get(ip) if by_ip is not None else None
        return hit if hit is not None else self._new_server_hit(date, files, ip)

    def _new_server_hit(self, date: Any, files: Any, ip: Any) -> _ServerHit:
        """Look (date, ip) up and memoise its hit under ``files``."""
        return self._new_server_hits(date, files, [ip])[0]

    def _new_server_hits(self, date: Any, files: Any, ips: list[Any]) -> list[_ServerHit]:
        """Look the ``ips`` of ``date`` up (:meth:`Enricher.lookup_fields`: no object per
        address) and memoise their hits under ``files``."""
        with self._lock:
            enricher = None
            if self.catalog is not None and date:
                enricher = self._enricher(date)
            lookup = enricher.lookup_fields if enricher is not None else None
            if self._server_count + len(ips) > MEMO_SIZE:
                self._server_columns.clear()
                self._sources.clear()
                self._server_count = 0
            by_ip = self._server_columns.setdefault(files, {})
            sources_of = self._sources
            make = _ServerHit._make
            hits = []
            for ip in ips:
                fields = lookup(ip) if lookup is not None and ip else _EMPTY_FIELDS
                sources = sources_of.get(fields[7])
                if sources is None:
                    sources = sources_of[fields[7]] = fields[7]
                counter = _COUNTERS.get(fields[8])
                if counter is None:
                    counter = _COUNTERS[fields[8]] = f"ip_metadata.server.{fields[8]}"
                hit = by_ip[ip] = make(
                    (*fields[:7], sources, counter, fields[1] is not None, fields[5] is not None)
                )
                hits.append(hit)
            self._server_count += len(ips)
        return hits

    def enrich_hyperquack(self, row: dict[str, Any], stats: dict[str, int]) -> None:
        # Rows of one server and day share everything added here: the columns, sources and
        # counter name are built once per (date, ip), not once per row.
        hit = self._server_hit(row.get("date"), row.get("server_ip"))
        stats[hit.counter] = stats.get(hit.counter, 0) + 1
        row.update(zip(SERVER_COLUMNS, hit.values, strict=True))
        row["ip_metadata_sources"] = list(hit.sources)

    def enrich_hyperquack_columns(
        self,
        columns: dict[str, Any],
        n_rows: int,
        stats: dict[str, int],
        arrow: bool = False,
    ) -> None:
        """:meth:`enrich_hyperquack` for a batch held as columns (``date``, ``server_ip``
        → the server metadata columns and ``ip_metadata_sources``, replaced in place).

        With ``arrow``, a batch of several servers gets its columns as Arrow arrays (the
        distinct results converted once, then ``take`` by the row index), which
        ``TableSpec.columns_to_arrow`` uses as they are: the same table as from the
        lists, without a Python value per row and column.

        Each distinct (date, server_ip) of the batch is looked up once; the columns are
        then built per row from an index into the distinct results. Also counts
        ``rows_with_asn`` and ``rows_with_country`` into ``stats``; values and counts
        equal those of :meth:`enrich_hyperquack` called row by row.

        The rows of a batch with equal sources share one ``ip_metadata_sources`` list,
        made for this batch (never a list a memo keeps or another batch got; a batch
        holds a handful of distinct values). A list per row made a third of this
        method's cost, and a list per server most of the rest, through allocation and
        the garbage collector walking the new columns. Consumers must not mutate the
        values; the only one, ``TableSpec.columns_to_arrow``, only reads them
        (``tests/test_enrich_columns.py`` checks that it leaves them unchanged).
        """
        if self.catalog is None:  # nothing configured: every row gets the same empty result
            if len(columns["date"]) != n_rows or len(columns["server_ip"]) != n_rows:
                raise ValueError(f"batch columns are not {n_rows} rows long")
            hits, index = [self._server_hit(None, None)], list[int]()
            if n_rows:
                stats[hits[0].counter] = stats.get(hits[0].counter, 0) + n_rows
        elif arrow and self._enrich_whole_batch(columns, n_rows, stats):
            return
        else:
            hits, index = self._batch_hits(columns, n_rows, stats)
        if len(hits) == 1:  # one server (or no metadata at all): constant columns
            (hit,) = hits
            for name, value in zip(SERVER_COLUMNS, hit.values, strict=True):
                columns[name] = [value] * n_rows
            columns["ip_metadata_sources"] = [list(hit.sources)] * n_rows
            return
        # One pass over the distinct results (scattered in memory), then per column a
        # C-level map over the row index.
        per_column = list(zip(*hits, strict=True))[: len(SERVER_COLUMNS)]
        if not per_column:  # an empty batch
            per_column = [()] * len(SERVER_COLUMNS)
        if arrow:
            rows = pa.array(index, pa.int32())
            for name, distinct in zip(SERVER_COLUMNS, per_column, strict=True):
                columns[name] = pa.array(distinct, ARROW_TYPES[name]).take(rows)
            columns["ip_metadata_sources"] = pa.array(
                [hit.sources for hit in hits], ARROW_TYPES["ip_metadata_sources"]
            ).take(rows)
            return
        for name, distinct in zip(SERVER_COLUMNS, per_column, strict=True):
            columns[name] = list(map(distinct.__getitem__, index))
        shared = {value: list(value) for value in {hit.sources for hit in hits}}
        sources = [shared[hit.sources] for hit in hits]
        columns["ip_metadata_sources"] = list(map(sources.__getitem__, index))

    def _enrich_whole_batch(
        self, columns: dict[str, Any], n_rows: int, stats: dict[str, int]
    ) -> bool:
        """The Arrow columns of a batch of one day and several servers from whole-batch
        lookups (:mod:`.server_columns`); False (nothing done) for any other batch, or
        when the day's reference files have no IPv4 table or an organisation source.
        The same columns and stats as the per-server path."""
        dates, ips = columns["date"], columns["server_ip"]
        if type(dates) is not list or not n_rows or len(dates) != n_rows or len(ips) != n_rows:
            return False
        day = dates[0]
        if not day or not isinstance(day, str) or dates.count(day) != n_rows:
            return False
        # Distinct servers and each row's index into them: by address when every row's
        # server is an IPv4 address read in C (with np.unique ~80 us for 1,500 rows, where
        # the dicts of strings below and the Python reader took ~250 us), else by string.
        addrs = native_addresses(ips) if type(ips) is list else None
        distinct: np.ndarray | None
        if addrs is not None and addrs.min() >= 0:
            distinct, first, rows = np.unique(addrs, return_index=True, return_inverse=True)
        else:
            slot = {ip: k for k, ip in enumerate(dict.fromkeys(ips))}
            rows = np.fromiter(map(slot.__getitem__, ips), dtype=np.int64, count=n_rows)
            first = np.empty(len(slot), dtype=np.int64)  # each server's first row
            first[rows[::-1]] = np.arange(n_rows - 1, -1, -1)
            distinct = addrs[first] if addrs is not None else None
        servers = [ips[k] for k in first.tolist()]
        if len(servers) == 1:
            return False
        tables = self._server_tables(day)
        if tables is None:
            return False
        enricher = tables.enricher

        def one_by_one(ip: Any) -> tuple[Any, ...]:
            if not ip:
                return _EMPTY_FIELDS
            with self._lock:
                return enricher.lookup_fields(ip)

        out = tables.lookup(servers, one_by_one, rows, distinct)
        columns.update(out.arrays)
        per_server = np.bincount(rows, minlength=len(servers))
        for status, count in out.statuses.counts(per_server).items():
            name = _COUNTERS.get(status) or _COUNTERS.setdefault(
                status, f"ip_metadata.server.{status}"
            )
            stats[name] = stats.get(name, 0) + count
        for flag, has in (("rows_with_asn", out.has_asn), ("rows_with_country", out.has_country)):
            count = int(per_server[has].sum())
            if count:
                stats[flag] = stats.get(flag, 0) + count
        return True

    def _server_tables(self, day: str) -> ServerTables | None:
        """The whole-batch lookup tables of ``day``'s reference files (built once per
        files per worker), or None."""
        files = self._files_of(day)
        if files in self._tables:
            return self._tables[files]
        with self._lock:
            enricher = self._enricher(day)
        tables = ServerTables.of(enricher)
        if len(self._tables) >= 4:
            self._tables.pop(next(iter(self._tables)))
        self._tables[files] = tables
        return tables

    def _batch_hits(
        self, columns: dict[str, list[Any]], n_rows: int, stats: dict[str, int]
    ) -> tuple[list[_ServerHit], list[int]]:
        """The distinct (date, server_ip) results of a batch and each row's index into
        them; counts the stats."""
        dates, ips = columns["date"], columns["server_ip"]
        if len(dates) != n_rows or len(ips) != n_rows:
            raise ValueError(
                f"batch has {len(dates)} dates and {len(ips)} server IPs, n_rows={n_rows}"
            )
        one_day = set(dates)
        if len(one_day) == 1:  # the usual batch: key by IP alone (no tuple per row)
            (day,) = one_day
            keys: list[Any] = ips
            slot = {k: i for i, k in enumerate(dict.fromkeys(ips))}
            files = self._files_of(day)
            known = self._server_columns.get(files) or {}
            new = [ip for ip in slot if ip not in known]
            fresh = dict(zip(new, self._new_server_hits(day, files, new), strict=True))
            hits = [known.get(ip) or fresh[ip] for ip in slot]
        else:
            keys = list(zip(dates, ips, strict=True))
            slot = {k: i for i, k in enumerate(dict.fromkeys(keys))}
            hits = [self._server_hit(d, ip) for d, ip in slot]
        index = list(map(slot.__getitem__, keys))
        for j, count in Counter(index).items():
            hit = hits[j]
            stats[hit.counter] = stats.get(hit.counter, 0) + count
            if hit.has_asn:
                stats["rows_with_asn"] = stats.get("rows_with_asn", 0) + count
            if hit.has_country:
                stats["rows_with_country"] = stats.get("rows_with_country", 0) + count
        return hits, index

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
