"""What the run's two target adapters share: the ledger, the schema record and the
rebuild beside (``--full``: build ``<table>__v<N>``, then switch).

:class:`WarehouseTarget` passes these calls on to its ``warehouse`` (the local DuckDB
warehouse or BigQuery) and keeps the versions this run builds in ``builds``, which the
adapter hands to its commits. How a version becomes live (``finish_rebuild``) differs per
backend and stays in each adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # local.py imports this module; at run time the names are not needed
    from services.beam_launcher.warehouse.local import LedgerEntry, TableVersion
    from services.beam_launcher.warehouse.schema_versions import SchemaCheck, SchemaRecord


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
