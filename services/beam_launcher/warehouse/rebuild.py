"""What the run's two target adapters share: the ledger, the schema record and the
rebuild beside (``--full``: build ``<table>__v<N>``, then switch).

:class:`WarehouseTarget` passes these calls on to its ``warehouse`` (the local DuckDB
warehouse or BigQuery) and keeps the versions this run builds in ``builds``, which the
adapter hands to its commits. How a version becomes live (``finish_rebuild``) differs per
backend and stays in each adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import orjson

from services.beam_launcher.warehouse.schema_versions import (
    BUILDING,
    LIVE,
    next_version_id,
    version_name,
)

if TYPE_CHECKING:  # local.py imports this module; at run time the name is not needed
    from services.beam_launcher.warehouse.local import LedgerEntry
    from services.beam_launcher.warehouse.schema_versions import SchemaCheck, SchemaRecord


@dataclass(frozen=True)
class TableVersion:
    """One row of ``table_versions``: a version of a scan table and where its rows are
    (``folder``: local, its Parquet folder; BigQuery, its table)."""

    table: str
    version_id: str
    folder: str
    schema_version: int
    schema_hash: str
    columns: list[dict[str, Any]]
    state: str

    @property
    def name(self) -> str:
        """Its view or table name, e.g. ``http_scan__v2``."""
        return version_name(self.table, self.version_id)

    def listing(self, **more: Any) -> dict[str, Any]:
        """Its entry in ``--table-versions``: what it is, then the backend's ``more``."""
        return {
            "table": self.table,
            "version": self.version_id,
            "name": self.name,
            "state": self.state,
            "schema_version": self.schema_version,
            **more,
        }


class SwitchRefused(RuntimeError):
    """A table version cannot become live (unknown, or its rows differ from its ledger)."""


def building_version(code: SchemaRecord, taken: Iterable[str]) -> TableVersion:
    """A new ``building`` version of the table ``code`` records (its columns), with an id
    not in ``taken``."""
    vid = next_version_id(code.version, taken)
    name = version_name(code.table, vid)
    return TableVersion(code.table, vid, name, code.version, code.hash, code.columns, BUILDING)


def count_problems(
    found: Mapping[str, int], ledger: Iterable[tuple[str | None, int | None]], where: str
) -> list[str]:
    """Where a version's rows (``found``: date -> rows, ``where`` they are) disagree with
    its ledger's ``(rows_by_date JSON, rows_written)`` rows: per date when every ledger
    row has its rows by date (a version that was live has none), else in total. Empty:
    they agree.

    >>> count_problems({"2021-05-30": 3}, [('{"2021-05-30": 2}', 2)], "in t")
    ['2021-05-30: 3 rows in t, 2 in its ledger']
    >>> count_problems({"2021-05-30": 3}, [(None, 3)], "in t")
    []
    """
    rows = list(ledger)
    if rows and all(by_date is not None for by_date, _ in rows):
        want: dict[str, int] = {}
        for by_date, _ in rows:
            for day, n in orjson.loads(by_date or "{}").items():
                want[day] = want.get(day, 0) + int(n)
        return [
            f"{day}: {found.get(day, 0)} rows {where}, {want.get(day, 0)} in its ledger"
            for day in sorted(set(want) | set(found))
            if found.get(day, 0) != want.get(day, 0)
        ]
    total = sum(int(n or 0) for _, n in rows)
    if total != sum(found.values()):
        return [f"{sum(found.values())} rows {where}, {total} in its ledger"]
    return []


def find_version(
    versions: Iterable[TableVersion], table: str, version_id: str
) -> tuple[TableVersion, str | None]:
    """The version ``version_id`` of ``table`` and the name of the table's live version
    (None: none); :class:`SwitchRefused`, naming the versions it has, when it has no such
    version."""
    mine = [v for v in versions if v.table == table]
    target = next((v for v in mine if v.version_id == version_id), None)
    if target is None:
        have = ", ".join(f"{v.version_id} ({v.state})" for v in mine) or "none"
        raise SwitchRefused(f"{table} has no version {version_id}; it has {have}")
    return target, next((v.name for v in mine if v.state == LIVE), None)


class Warehouse(Protocol):
    """The calls a warehouse answers for :class:`WarehouseTarget`."""

    def ensure_tables(self) -> None: ...

    def schema_records(self) -> dict[str, SchemaRecord]: ...

    def apply_schema(
        self, check: SchemaCheck, pipeline_version: str, rebuilt: Iterable[str] = ()
    ) -> list[str]: ...

    def ledger(self, keys: Iterable[str] | None = None) -> dict[str, LedgerEntry]: ...

    def ledger_rows(self, scan_types: Iterable[str]) -> list[tuple[str, str, int, int]]: ...

    def start_rebuild(
        self, tables: Iterable[str], pipeline_version: str
    ) -> dict[str, TableVersion]: ...

    def building(self) -> dict[str, TableVersion]: ...

    def version_ledger(self, builds: Mapping[str, TableVersion]) -> dict[str, LedgerEntry]: ...


W = TypeVar("W", bound=Warehouse)


class WarehouseTarget(Generic[W]):
    """Base of the run's target adapters over a warehouse ``W``.

    A subclass sets ``warehouse`` and starts ``builds`` empty in its ``__init__``.
    """

    warehouse: W
    builds: dict[str, TableVersion]  # this run's rebuild beside (--full)

    def ensure_tables(self) -> None:
        self.warehouse.ensure_tables()

    def schema_records(self) -> dict[str, SchemaRecord]:
        return self.warehouse.schema_records()

    def apply_schema(
        self, check: SchemaCheck, pipeline_version: str, rebuilt: Iterable[str] = ()
    ) -> list[str]:
        return self.warehouse.apply_schema(check, pipeline_version, rebuilt)

    def ledger(self, keys: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        return self.warehouse.ledger(keys)

    def ledger_rows(self, scan_types: Iterable[str]) -> list[tuple[str, str, int, int]]:
        return self.warehouse.ledger_rows(scan_types)

    def start_rebuild(
        self, tables: Iterable[str], pipeline_version: str
    ) -> dict[str, TableVersion]:
        """Register (or resume) a version of each of ``tables``; this run commits into them."""
        self.builds = self.warehouse.start_rebuild(tables, pipeline_version)
        return self.builds

    def building(self) -> dict[str, TableVersion]:
        return self.warehouse.building()

    def version_ledger(self, keys: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        """The building versions' ledger (of this run's rebuild), only ``keys`` if given."""
        found = self.warehouse.version_ledger(self.builds)
        return found if keys is None else {k: found[k] for k in keys if k in found}
